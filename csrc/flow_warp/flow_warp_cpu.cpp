// flow_warp on the CPU, parallel over rows. Pixels whose four taps are inside the image (nearly all
// of them) take a path without bounds checks; the others go through the generic bilinear functions.
// The image gradient is a scatter (a flow can send any pixel anywhere): each thread scatters into
// its own buffer and the buffers are summed in a fixed order, so the result is deterministic for a
// given number of threads and needs no atomics.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/cpu_helpers.h"
#include "common/pixel_math.h"
#include "flow_warp/flow_warp.h"

namespace jdrl {
namespace {

at::Tensor flow_warp_cpu(const at::Tensor& image_in, const at::Tensor& flow_in, c10::string_view padding_mode) {
  const bool border = check_flow_warp(image_in, flow_in, padding_mode);
  check_cpu_dtype(image_in, "image");
  const at::Tensor image = image_in.contiguous();
  const at::Tensor flow = flow_in.contiguous();
  at::Tensor out = at::empty(image.sizes(), image.options());
  if (out.numel() == 0) return out;
  const int64_t batch = image.size(0), channels = image.size(1), height = image.size(2), width = image.size(3);
  const int64_t plane = height * width;
  AT_DISPATCH_FLOATING_TYPES(image.scalar_type(), "flow_warp_cpu", [&] {
    const scalar_t* image_ptr = image.data_ptr<scalar_t>();
    const scalar_t* flow_ptr = flow.data_ptr<scalar_t>();
    scalar_t* out_ptr = out.data_ptr<scalar_t>();
    at::parallel_for(0, batch * height, cpu::rows_per_task(width, cpu::kLightPixelsPerTask), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / height, y = row % height;
        const scalar_t* flow_x = flow_ptr + b * 2 * plane + y * width;
        const scalar_t* flow_y = flow_x + plane;
        const scalar_t* item = image_ptr + b * channels * plane;
        scalar_t* out_row = out_ptr + b * channels * plane + y * width;
        for (int64_t x = 0; x < width; ++x) {
          const BilinearTaps<scalar_t> taps = bilinear_taps<scalar_t>(y, x, flow_x[x], flow_y[x], height, width, border);
          if (taps_interior(taps, height, width)) {
            scalar_t w[4];
            bilinear_weights(taps, w);
            const int64_t tap = taps.y0 * width + taps.x0;
            for (int64_t c = 0; c < channels; ++c) {
              const scalar_t* p = item + c * plane + tap;
              out_row[c * plane + x] = w[0] * p[0] + w[1] * p[1] + w[2] * p[width] + w[3] * p[width + 1];
            }
          } else {
            for (int64_t c = 0; c < channels; ++c) {
              out_row[c * plane + x] = bilinear_sample<scalar_t, scalar_t>(item + c * plane, height, width, taps);
            }
          }
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> flow_warp_backward_cpu(const at::Tensor& grad_in, const at::Tensor& image_in,
                                                          const at::Tensor& flow_in, c10::string_view padding_mode) {
  const bool border = check_flow_warp(image_in, flow_in, padding_mode);
  check_cpu_dtype(image_in, "image");
  check_grad(grad_in, image_in, "grad");
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor image = image_in.contiguous();
  const at::Tensor flow = flow_in.contiguous();
  at::Tensor grad_image = at::zeros(image.sizes(), image.options());
  at::Tensor grad_flow = at::empty(flow.sizes(), flow.options());
  if (image.numel() == 0) return {grad_image, grad_flow.zero_()};
  const int64_t batch = image.size(0), channels = image.size(1), height = image.size(2), width = image.size(3);
  const int64_t plane = height * width, rows = batch * height;
  // One scatter buffer per chunk of rows; chunk 0 writes straight into grad_image.
  const int64_t tasks = (rows + cpu::rows_per_task(width, cpu::kLightPixelsPerTask) - 1) /
                        cpu::rows_per_task(width, cpu::kLightPixelsPerTask);
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tasks));
  AT_DISPATCH_FLOATING_TYPES(image.scalar_type(), "flow_warp_backward_cpu", [&] {
    const scalar_t* grad_ptr = grad.data_ptr<scalar_t>();
    const scalar_t* image_ptr = image.data_ptr<scalar_t>();
    const scalar_t* flow_ptr = flow.data_ptr<scalar_t>();
    scalar_t* grad_image_ptr = grad_image.data_ptr<scalar_t>();
    scalar_t* grad_flow_ptr = grad_flow.data_ptr<scalar_t>();
    std::vector<scalar_t> extra_buffers((chunks - 1) * image.numel(), scalar_t(0));
    at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
      for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
        scalar_t* scatter = chunk == 0 ? grad_image_ptr : extra_buffers.data() + (chunk - 1) * image.numel();
        for (int64_t row = rows * chunk / chunks; row < rows * (chunk + 1) / chunks; ++row) {
          const int64_t b = row / height, y = row % height;
          const int64_t flow_base = b * 2 * plane + y * width;
          const scalar_t* item = image_ptr + b * channels * plane;
          const scalar_t* grad_row = grad_ptr + b * channels * plane + y * width;
          scalar_t* scatter_item = scatter + b * channels * plane;
          for (int64_t x = 0; x < width; ++x) {
            const BilinearTaps<scalar_t> taps = bilinear_taps<scalar_t>(
                y, x, flow_ptr[flow_base + x], flow_ptr[flow_base + plane + x], height, width, border);
            scalar_t w[4];
            bilinear_weights(taps, w);
            scalar_t sum_x = 0, sum_y = 0;
            if (taps_interior(taps, height, width)) {
              const int64_t tap = taps.y0 * width + taps.x0;
              for (int64_t c = 0; c < channels; ++c) {
                const scalar_t* p = item + c * plane + tap;
                const scalar_t g = grad_row[c * plane + x];
                sum_x += g * ((1 - taps.wy) * (p[1] - p[0]) + taps.wy * (p[width + 1] - p[width]));
                sum_y += g * ((1 - taps.wx) * (p[width] - p[0]) + taps.wx * (p[width + 1] - p[1]));
                scalar_t* s = scatter_item + c * plane + tap;
                s[0] += w[0] * g;
                s[1] += w[1] * g;
                s[width] += w[2] * g;
                s[width + 1] += w[3] * g;
              }
            } else {
              const bool nan_coordinate = taps_are_nan(taps);
              for (int64_t c = 0; c < channels; ++c) {
                scalar_t d_sx, d_sy;
                bilinear_coordinate_grad<scalar_t, scalar_t>(item + c * plane, height, width, taps, &d_sx, &d_sy);
                const scalar_t g = grad_row[c * plane + x];
                sum_x += g * d_sx;
                sum_y += g * d_sy;
                if (nan_coordinate) continue;  // no tap to scatter onto
                for (int i = 0; i < 2; ++i) {
                  for (int j = 0; j < 2; ++j) {
                    const int64_t ty = taps.y0 + i, tx = taps.x0 + j;
                    if (tap_inside(ty, tx, height, width)) scatter_item[c * plane + ty * width + tx] += w[2 * i + j] * g;
                  }
                }
              }
            }
            grad_flow_ptr[flow_base + x] = sum_x * taps.dsx_dflow;
            grad_flow_ptr[flow_base + plane + x] = sum_y * taps.dsy_dflow;
          }
        }
      }
    });
    if (chunks > 1) {
      const int64_t numel = image.numel();
      at::parallel_for(0, numel, 16384, [&](int64_t begin, int64_t end) {
        for (int64_t chunk = 1; chunk < chunks; ++chunk) {
          const scalar_t* extra = extra_buffers.data() + (chunk - 1) * numel;
          for (int64_t i = begin; i < end; ++i) grad_image_ptr[i] += extra[i];
        }
      });
    }
  });
  return {grad_image, grad_flow};
}

}  // namespace
}  // namespace jdrl

TORCH_LIBRARY_IMPL(jdrl_ext, CPU, m) {
  m.impl("flow_warp", &jdrl::flow_warp_cpu);
  m.impl("_flow_warp_backward", &jdrl::flow_warp_backward_cpu);
}
