// Row kernels shared by the CPU implementations of sv_conv and reblur.
//
// Both ops are "one small weight plane per offset d": sv_conv reads plane t(d) of its kernels, reblur
// reads plane o(d) of its per-pixel radial kernel (the orbit of d). The three loops below take the
// plane index as a function of the offset, work one output row at a time and keep the innermost loop
// over x on contiguous memory, so the compiler vectorizes it. The image is read through a row buffer
// that already holds the padding (R values on each side), so the inner loops have no branches.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/pixel_math.h"

namespace jdrl {
namespace cpu {

// dst[0 .. width + 2R) = row `source_y` of `plane`, extended by R on each side per the padding.
template <typename scalar_t>
void extended_row(const scalar_t* plane, int64_t height, int64_t width, int64_t source_y, int radius, bool replicate,
                  scalar_t* dst) {
  if (!replicate && (source_y < 0 || source_y >= height)) {
    std::fill(dst, dst + width + 2 * radius, scalar_t(0));
    return;
  }
  const scalar_t* row = plane + clamp_index(source_y, height) * width;
  const scalar_t left = replicate ? row[0] : scalar_t(0);
  const scalar_t right = replicate ? row[width - 1] : scalar_t(0);
  std::fill(dst, dst + radius, left);
  std::copy(row, row + width, dst + radius);
  std::fill(dst + radius + width, dst + width + 2 * radius, right);
}

// out[c, y, :] = sum_d planes[index(d)][y, :] * Ie[c, y + dy, : + dx]
// `image` and `out` point at one batch item (C, H, W); `planes` at row y of plane 0.
template <typename scalar_t, typename plane_t, typename IndexFn>
void apply_planes_row(const scalar_t* image, scalar_t* out, int64_t channels, int64_t height, int64_t width,
                      int64_t y, int radius, bool replicate, const plane_t* planes, int64_t plane_stride,
                      IndexFn plane_index, std::vector<scalar_t>& row_buffer, std::vector<plane_t>& accumulator) {
  row_buffer.resize(width + 2 * radius);
  accumulator.resize(width);
  for (int64_t c = 0; c < channels; ++c) {
    plane_t* __restrict__ acc = accumulator.data();
    std::fill(acc, acc + width, plane_t(0));
    for (int dy = -radius; dy <= radius; ++dy) {
      extended_row(image + c * height * width, height, width, y + dy, radius, replicate, row_buffer.data());
      for (int dx = -radius; dx <= radius; ++dx) {
        const plane_t* __restrict__ weight = planes + plane_index(dy, dx) * plane_stride;
        const scalar_t* __restrict__ source = row_buffer.data() + radius + dx;
        for (int64_t x = 0; x < width; ++x) acc[x] += weight[x] * static_cast<plane_t>(source[x]);
      }
    }
    scalar_t* out_row = out + (c * height + y) * width;
    for (int64_t x = 0; x < width; ++x) out_row[x] = static_cast<scalar_t>(acc[x]);
  }
}

// grad_planes[index(d)][y, :] += sum_c grad_out[c, y, :] * Ie[c, y + dy, : + dx]
// (the gradient with respect to the weight planes; for reblur several offsets share one plane).
template <typename scalar_t, typename plane_t, typename IndexFn>
void correlate_planes_row(const scalar_t* image, const scalar_t* grad_out, int64_t channels, int64_t height,
                          int64_t width, int64_t y, int radius, bool replicate, plane_t* grad_planes,
                          int64_t plane_stride, IndexFn plane_index, std::vector<scalar_t>& row_buffer) {
  row_buffer.resize(width + 2 * radius);
  for (int dy = -radius; dy <= radius; ++dy) {
    for (int64_t c = 0; c < channels; ++c) {
      extended_row(image + c * height * width, height, width, y + dy, radius, replicate, row_buffer.data());
      const scalar_t* __restrict__ grad_row = grad_out + (c * height + y) * width;
      for (int dx = -radius; dx <= radius; ++dx) {
        plane_t* __restrict__ target = grad_planes + plane_index(dy, dx) * plane_stride;
        const scalar_t* __restrict__ source = row_buffer.data() + radius + dx;
        for (int64_t x = 0; x < width; ++x) target[x] += static_cast<plane_t>(grad_row[x] * source[x]);
      }
    }
  }
}

// grad_image[c, qy, :] for the transposed convolution, as a gather (no atomics, rows independent):
// every extended position e = p + d that the padding folds onto row qy collects
// grad_out[c, p] * planes[index(d)][p] from its neighbours p, then the extended columns are folded
// onto the real ones. `planes` points at plane 0, pixel (0, 0), of this batch item.
template <typename scalar_t, typename plane_t, typename IndexFn>
void transposed_row(const scalar_t* grad_out, scalar_t* grad_image, int64_t channels, int64_t height, int64_t width,
                    int64_t qy, int radius, bool replicate, const plane_t* planes, int64_t plane_stride,
                    IndexFn plane_index, std::vector<plane_t>& extended_accumulator) {
  const int64_t extended_width = width + 2 * radius;
  extended_accumulator.resize(extended_width);
  int first_row, last_row;
  folded_range(static_cast<int>(qy), static_cast<int>(height), radius, replicate, &first_row, &last_row);
  for (int64_t c = 0; c < channels; ++c) {
    plane_t* __restrict__ acc = extended_accumulator.data();
    std::fill(acc, acc + extended_width, plane_t(0));
    for (int ey = first_row; ey <= last_row; ++ey) {
      for (int dy = -radius; dy <= radius; ++dy) {
        const int64_t py = ey - dy;
        if (py < 0 || py >= height) continue;
        const scalar_t* __restrict__ grad_row = grad_out + (c * height + py) * width;
        for (int dx = -radius; dx <= radius; ++dx) {
          const plane_t* __restrict__ weight = planes + plane_index(dy, dx) * plane_stride + py * width;
          plane_t* __restrict__ target = acc + radius + dx;  // extended column of pixel px is px + dx + R
          for (int64_t px = 0; px < width; ++px) target[px] += static_cast<plane_t>(grad_row[px]) * weight[px];
        }
      }
    }
    scalar_t* out_row = grad_image + (c * height + qy) * width;
    for (int64_t qx = 0; qx < width; ++qx) {
      int first_col, last_col;
      folded_range(static_cast<int>(qx), static_cast<int>(width), radius, replicate, &first_col, &last_col);
      plane_t sum = 0;
      for (int ex = first_col; ex <= last_col; ++ex) sum += acc[ex + radius];
      out_row[qx] = static_cast<scalar_t>(sum);
    }
  }
}

}  // namespace cpu
}  // namespace jdrl
