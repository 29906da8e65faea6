// flow_warp on the CPU. The forward and the flow gradient are per pixel and parallel over rows. The
// image gradient is a scatter (a flow can send any pixel anywhere), so it runs parallel over the
// (batch, channel) planes: each plane is written by one thread, in a fixed order, so the result is
// deterministic.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>

#include "common/checks.h"
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
    at::parallel_for(0, batch * height, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / height, y = row % height;
        const scalar_t* flow_x = flow_ptr + b * 2 * plane + y * width;
        const scalar_t* flow_y = flow_x + plane;
        for (int64_t x = 0; x < width; ++x) {
          const BilinearTaps<scalar_t> taps = bilinear_taps<scalar_t>(y, x, flow_x[x], flow_y[x], height, width, border);
          for (int64_t c = 0; c < channels; ++c) {
            const int64_t base = (b * channels + c) * plane;
            out_ptr[base + y * width + x] = bilinear_sample<scalar_t, scalar_t>(image_ptr + base, height, width, taps);
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
  at::Tensor grad_flow = at::zeros(flow.sizes(), flow.options());
  if (image.numel() == 0) return {grad_image, grad_flow};
  const int64_t batch = image.size(0), channels = image.size(1), height = image.size(2), width = image.size(3);
  const int64_t plane = height * width;
  AT_DISPATCH_FLOATING_TYPES(image.scalar_type(), "flow_warp_backward_cpu", [&] {
    const scalar_t* grad_ptr = grad.data_ptr<scalar_t>();
    const scalar_t* image_ptr = image.data_ptr<scalar_t>();
    const scalar_t* flow_ptr = flow.data_ptr<scalar_t>();
    scalar_t* grad_image_ptr = grad_image.data_ptr<scalar_t>();
    scalar_t* grad_flow_ptr = grad_flow.data_ptr<scalar_t>();
    // The flow gradient: sum over channels of grad * d(sample)/d(coordinate), times the clamp slope.
    at::parallel_for(0, batch * height, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / height, y = row % height;
        const int64_t flow_base = b * 2 * plane + y * width;
        for (int64_t x = 0; x < width; ++x) {
          const BilinearTaps<scalar_t> taps =
              bilinear_taps<scalar_t>(y, x, flow_ptr[flow_base + x], flow_ptr[flow_base + plane + x], height, width,
                                      border);
          scalar_t sum_x = 0, sum_y = 0;
          for (int64_t c = 0; c < channels; ++c) {
            const int64_t base = (b * channels + c) * plane;
            scalar_t d_sx, d_sy;
            bilinear_coordinate_grad<scalar_t, scalar_t>(image_ptr + base, height, width, taps, &d_sx, &d_sy);
            const scalar_t g = grad_ptr[base + y * width + x];
            sum_x += g * d_sx;
            sum_y += g * d_sy;
          }
          grad_flow_ptr[flow_base + x] = sum_x * taps.dsx_dflow;
          grad_flow_ptr[flow_base + plane + x] = sum_y * taps.dsy_dflow;
        }
      }
    });
    // The image gradient: each output pixel scatters grad * bilinear weight onto its four taps.
    at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) {
        const int64_t b = bc / channels;
        const int64_t base = bc * plane;
        for (int64_t y = 0; y < height; ++y) {
          for (int64_t x = 0; x < width; ++x) {
            const int64_t flow_index = b * 2 * plane + y * width + x;
            const BilinearTaps<scalar_t> taps = bilinear_taps<scalar_t>(
                y, x, flow_ptr[flow_index], flow_ptr[flow_index + plane], height, width, border);
            const scalar_t g = grad_ptr[base + y * width + x];
            const scalar_t w[2][2] = {{(1 - taps.wy) * (1 - taps.wx), (1 - taps.wy) * taps.wx},
                                      {taps.wy * (1 - taps.wx), taps.wy * taps.wx}};
            for (int i = 0; i < 2; ++i) {
              for (int j = 0; j < 2; ++j) {
                const int64_t ty = taps.y0 + i, tx = taps.x0 + j;
                if (tap_inside(ty, tx, height, width)) grad_image_ptr[base + ty * width + tx] += w[i][j] * g;
              }
            }
          }
        }
      }
    });
  });
  return {grad_image, grad_flow};
}

}  // namespace
}  // namespace jdrl

TORCH_LIBRARY_IMPL(jdrl_ext, CPU, m) {
  m.impl("flow_warp", &jdrl::flow_warp_cpu);
  m.impl("_flow_warp_backward", &jdrl::flow_warp_backward_cpu);
}
