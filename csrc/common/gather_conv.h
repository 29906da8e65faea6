// Per-pixel gather loops of the CUDA kernels of sv_conv and reblur.
//
// The CPU kernels (common/cpu_conv.h) work a row at a time; a GPU thread owns one output pixel
// instead, so the loops are reorganised around it: the forward pass and the weight gradients
// gather the extended image around the pixel, and the image gradient gathers, for the pixel q it
// writes, every neighbour p that read q (no atomics, so the result is deterministic). The loops are
// JDRL_HD functions like those of pixel_math.h, so that they also compile for the host: a plain
// C++ loop over the pixels then runs exactly the arithmetic of the CUDA kernels, which is how they
// were checked on a machine without a GPU.
//
// Channels are processed kChannelChunk at a time with the partial sums in registers (the chunk
// index is a compile-time constant in every loop, so the arrays stay in registers), which reads
// each weight once for an RGB image instead of once per channel.
#pragma once

#include <cstdint>

#include "common/pixel_math.h"

namespace jdrl {
namespace gather {

constexpr int kChannelChunk = 4;

// Plane of sv_conv's kernels read at offset d: t = (dy + R) * K + (dx + R).
struct TapIndex {
  int radius;
  JDRL_HD int operator()(int dy, int dx) const { return (dy + radius) * (2 * radius + 1) + (dx + radius); }
};

// Plane of reblur's radial kernel read at offset d: the orbit of d.
struct OrbitIndex {
  JDRL_HD int operator()(int dy, int dx) const { return orbit_of_offset(dy, dx); }
};

// Index of the extended image Ie at (y, x) in a (H, W) plane, or -1 where zero padding reads 0.
JDRL_HD int64_t extended_offset(int64_t y, int64_t x, int64_t height, int64_t width, bool replicate) {
  if (replicate) return clamp_index(y, height) * width + clamp_index(x, width);
  return (y < 0 || y >= height || x < 0 || x >= width) ? int64_t(-1) : y * width + x;
}

// Ie at a precomputed extended offset. A padded zero is still multiplied in (not skipped), as the
// CPU kernels and the reference do, so a NaN or infinite weight propagates the same way.
template <typename scalar_t, typename acc_t>
JDRL_HD acc_t extended_value(const scalar_t* plane_data, int64_t offset) {
  return offset < 0 ? acc_t(0) : static_cast<acc_t>(plane_data[offset]);
}

JDRL_HD int chunk_size(int64_t channels, int64_t first) {
  return channels - first < kChannelChunk ? static_cast<int>(channels - first) : kChannelChunk;
}

// sv_conv forward at pixel p = (y, x): out[c, p] = sum_d planes[index(d)][p] * Ie[c, p + d].
// `image` and `out` point at one batch item (C, H, W); `planes` at plane 0 of that item, pixel p.
template <typename scalar_t, typename plane_t, typename acc_t, typename IndexFn>
JDRL_HD void apply_planes_pixel(const scalar_t* image, const plane_t* planes, scalar_t* out, int64_t channels,
                                int64_t height, int64_t width, int64_t y, int64_t x, int radius, bool replicate,
                                IndexFn plane_index) {
  const int64_t plane = height * width;
  for (int64_t first = 0; first < channels; first += kChannelChunk) {
    const int count = chunk_size(channels, first);
    const scalar_t* source = image + first * plane;
    acc_t acc[kChannelChunk];
    JDRL_UNROLL
    for (int j = 0; j < kChannelChunk; ++j) acc[j] = acc_t(0);
    for (int dy = -radius; dy <= radius; ++dy) {
      for (int dx = -radius; dx <= radius; ++dx) {
        const acc_t weight = static_cast<acc_t>(planes[plane_index(dy, dx) * plane]);
        const int64_t offset = extended_offset(y + dy, x + dx, height, width, replicate);
        JDRL_UNROLL
        for (int j = 0; j < kChannelChunk; ++j) {
          if (j < count) acc[j] += weight * extended_value<scalar_t, acc_t>(source + j * plane, offset);
        }
      }
    }
    const int64_t pixel = y * width + x;
    JDRL_UNROLL
    for (int j = 0; j < kChannelChunk; ++j) {
      if (j < count) out[(first + j) * plane + pixel] = static_cast<scalar_t>(acc[j]);
    }
  }
}

// sv_conv's kernel gradient at pixel p: grad_planes[index(d)][p] = sum_c grad_out[c, p] * Ie[c, p + d].
// Every offset has a plane of its own, so each is written once. `grad_planes` points at plane 0, pixel p.
template <typename scalar_t, typename acc_t, typename IndexFn>
JDRL_HD void correlate_planes_pixel(const scalar_t* image, const scalar_t* grad_out, scalar_t* grad_planes,
                                    int64_t channels, int64_t height, int64_t width, int64_t y, int64_t x, int radius,
                                    bool replicate, IndexFn plane_index) {
  const int64_t plane = height * width;
  const int64_t pixel = y * width + x;
  const int cached = chunk_size(channels, 0);
  acc_t grad[kChannelChunk];  // the first channels' gradient, read once for all the offsets
  JDRL_UNROLL
  for (int j = 0; j < kChannelChunk; ++j) {
    grad[j] = j < cached ? static_cast<acc_t>(grad_out[j * plane + pixel]) : acc_t(0);
  }
  for (int dy = -radius; dy <= radius; ++dy) {
    for (int dx = -radius; dx <= radius; ++dx) {
      const int64_t offset = extended_offset(y + dy, x + dx, height, width, replicate);
      acc_t total = 0;
      JDRL_UNROLL
      for (int j = 0; j < kChannelChunk; ++j) {
        if (j < cached) total += grad[j] * extended_value<scalar_t, acc_t>(image + j * plane, offset);
      }
      for (int64_t c = kChannelChunk; c < channels; ++c) {
        total += static_cast<acc_t>(grad_out[c * plane + pixel]) *
                 extended_value<scalar_t, acc_t>(image + c * plane, offset);
      }
      grad_planes[plane_index(dy, dx) * plane] = static_cast<scalar_t>(total);
    }
  }
}

// The image gradient at pixel q = (qy, qx), as a gather: every extended position e that the padding
// folds onto q (folded_range) receives grad_out[c, p] * planes[index(d)][p] from each pixel p = e - d
// that read it. `planes` points at plane 0, pixel (0, 0), of the batch item (the weights of the
// neighbours are read); `grad_out` and `grad_image` at the batch item.
template <typename scalar_t, typename plane_t, typename acc_t, typename IndexFn>
JDRL_HD void transposed_planes_pixel(const scalar_t* grad_out, const plane_t* planes, scalar_t* grad_image,
                                     int64_t channels, int64_t height, int64_t width, int64_t qy, int64_t qx,
                                     int radius, bool replicate, IndexFn plane_index) {
  const int64_t plane = height * width;
  int first_row, last_row, first_col, last_col;
  folded_range(static_cast<int>(qy), static_cast<int>(height), radius, replicate, &first_row, &last_row);
  folded_range(static_cast<int>(qx), static_cast<int>(width), radius, replicate, &first_col, &last_col);
  for (int64_t first = 0; first < channels; first += kChannelChunk) {
    const int count = chunk_size(channels, first);
    const scalar_t* source = grad_out + first * plane;
    acc_t acc[kChannelChunk];
    JDRL_UNROLL
    for (int j = 0; j < kChannelChunk; ++j) acc[j] = acc_t(0);
    for (int ey = first_row; ey <= last_row; ++ey) {
      for (int dy = -radius; dy <= radius; ++dy) {
        const int64_t py = ey - dy;
        if (py < 0 || py >= height) continue;
        for (int ex = first_col; ex <= last_col; ++ex) {
          for (int dx = -radius; dx <= radius; ++dx) {
            const int64_t px = ex - dx;
            if (px < 0 || px >= width) continue;
            const int64_t neighbour = py * width + px;
            const acc_t weight = static_cast<acc_t>(planes[plane_index(dy, dx) * plane + neighbour]);
            JDRL_UNROLL
            for (int j = 0; j < kChannelChunk; ++j) {
              if (j < count) acc[j] += weight * static_cast<acc_t>(source[j * plane + neighbour]);
            }
          }
        }
      }
    }
    const int64_t pixel = qy * width + qx;
    JDRL_UNROLL
    for (int j = 0; j < kChannelChunk; ++j) {
      if (j < count) grad_image[(first + j) * plane + pixel] = static_cast<scalar_t>(acc[j]);
    }
  }
}

// reblur forward at pixel p, given its radial kernel: out[c, p] = sum_o Wt(o) * S_o[c, p], with S_o
// the sum of Ie over the offsets of orbit o. Summing an orbit before weighting it reads each of the
// m(m+1)/2 weights once. Wt(o) is orbit_weights[o * orbit_stride].
template <typename scalar_t, typename acc_t>
JDRL_HD void apply_orbits_pixel(const scalar_t* image, const acc_t* orbit_weights, int64_t orbit_stride, scalar_t* out,
                                int64_t channels, int64_t height, int64_t width, int64_t y, int64_t x, int levels,
                                bool replicate) {
  const int64_t plane = height * width;
  for (int64_t first = 0; first < channels; first += kChannelChunk) {
    const int count = chunk_size(channels, first);
    const scalar_t* source = image + first * plane;
    acc_t acc[kChannelChunk];
    JDRL_UNROLL
    for (int j = 0; j < kChannelChunk; ++j) acc[j] = acc_t(0);
    for (int a = 0; a < levels; ++a) {
      for (int b = 0; b <= a; ++b) {
        acc_t orbit_sum[kChannelChunk];
        JDRL_UNROLL
        for (int j = 0; j < kChannelChunk; ++j) orbit_sum[j] = acc_t(0);
        const int size = orbit_size(a, b);
        for (int k = 0; k < size; ++k) {
          int dy, dx;
          orbit_offset(a, b, k, &dy, &dx);
          const int64_t offset = extended_offset(y + dy, x + dx, height, width, replicate);
          JDRL_UNROLL
          for (int j = 0; j < kChannelChunk; ++j) {
            if (j < count) orbit_sum[j] += extended_value<scalar_t, acc_t>(source + j * plane, offset);
          }
        }
        const acc_t weight = orbit_weights[orbit_index(a, b) * orbit_stride];
        JDRL_UNROLL
        for (int j = 0; j < kChannelChunk; ++j) acc[j] += weight * orbit_sum[j];
      }
    }
    const int64_t pixel = y * width + x;
    JDRL_UNROLL
    for (int j = 0; j < kChannelChunk; ++j) {
      if (j < count) out[(first + j) * plane + pixel] = static_cast<scalar_t>(acc[j]);
    }
  }
}

// reblur's gradient with respect to the radial kernel at pixel p:
// orbit_grad[o * orbit_stride] = sum_c grad_out[c, p] * S_o[c, p]. Needs channels >= 1 (every orbit
// is written by the first chunk).
template <typename scalar_t, typename acc_t>
JDRL_HD void correlate_orbits_pixel(const scalar_t* image, const scalar_t* grad_out, acc_t* orbit_grad,
                                    int64_t orbit_stride, int64_t channels, int64_t height, int64_t width, int64_t y,
                                    int64_t x, int levels, bool replicate) {
  const int64_t plane = height * width;
  const int64_t pixel = y * width + x;
  for (int64_t first = 0; first < channels; first += kChannelChunk) {
    const int count = chunk_size(channels, first);
    const scalar_t* source = image + first * plane;
    acc_t grad[kChannelChunk];
    JDRL_UNROLL
    for (int j = 0; j < kChannelChunk; ++j) {
      grad[j] = j < count ? static_cast<acc_t>(grad_out[(first + j) * plane + pixel]) : acc_t(0);
    }
    for (int a = 0; a < levels; ++a) {
      for (int b = 0; b <= a; ++b) {
        acc_t total = 0;
        const int size = orbit_size(a, b);
        for (int k = 0; k < size; ++k) {
          int dy, dx;
          orbit_offset(a, b, k, &dy, &dx);
          const int64_t offset = extended_offset(y + dy, x + dx, height, width, replicate);
          JDRL_UNROLL
          for (int j = 0; j < kChannelChunk; ++j) {
            if (j < count) total += grad[j] * extended_value<scalar_t, acc_t>(source + j * plane, offset);
          }
        }
        acc_t* target = orbit_grad + orbit_index(a, b) * orbit_stride;
        *target = first == 0 ? total : *target + total;
      }
    }
  }
}

}  // namespace gather
}  // namespace jdrl
