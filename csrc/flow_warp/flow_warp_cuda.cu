// flow_warp on CUDA: one thread per pixel through the bilinear functions of common/pixel_math.h.
// The forward pass and the flow gradient are gathers. The image gradient is a scatter (a flow can
// send any pixel anywhere), done with atomicAdd into a tensor in the accumulation dtype (the output
// itself for float32/float64, a float32 scratch for float16/bfloat16): its summation order varies
// from run to run, so the backward pass reports itself as nondeterministic.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "common/checks.h"
#include "common/cuda_launch.cuh"
#include "common/pixel_math.h"
#include "flow_warp/flow_warp.h"

namespace jdrl {
namespace {

template <typename scalar_t, typename acc_t>
__global__ void flow_warp_forward_kernel(const scalar_t* __restrict__ image, const scalar_t* __restrict__ flow,
                                         scalar_t* __restrict__ out, int64_t batch, int64_t channels, int64_t height,
                                         int64_t width, bool border) {
  const int64_t plane = height * width;
  JDRL_GRID_STRIDE_LOOP(index, batch * plane) {
    const int64_t b = index / plane, pixel = index - b * plane;
    const int64_t y = pixel / width, x = pixel - y * width;
    const scalar_t* pixel_flow = flow + b * 2 * plane + pixel;
    const BilinearTaps<acc_t> taps = bilinear_taps<acc_t>(y, x, static_cast<acc_t>(pixel_flow[0]),
                                                          static_cast<acc_t>(pixel_flow[plane]), height, width, border);
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t base = (b * channels + c) * plane;
      out[base + pixel] = static_cast<scalar_t>(bilinear_sample<scalar_t, acc_t>(image + base, height, width, taps));
    }
  }
}

// Per output pixel p: the flow gradient of p (a gather over the channels, written once), and
// grad[c, p] times each bilinear weight scattered onto the four taps of p's sample (atomicAdd).
template <typename scalar_t, typename acc_t>
__global__ void flow_warp_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ image,
                                          const scalar_t* __restrict__ flow, acc_t* __restrict__ grad_image,
                                          scalar_t* __restrict__ grad_flow, int64_t batch, int64_t channels,
                                          int64_t height, int64_t width, bool border) {
  const int64_t plane = height * width;
  JDRL_GRID_STRIDE_LOOP(index, batch * plane) {
    const int64_t b = index / plane, pixel = index - b * plane;
    const int64_t y = pixel / width, x = pixel - y * width;
    const int64_t flow_base = b * 2 * plane + pixel;
    const BilinearTaps<acc_t> taps = bilinear_taps<acc_t>(
        y, x, static_cast<acc_t>(flow[flow_base]), static_cast<acc_t>(flow[flow_base + plane]), height, width, border);
    acc_t tap_weights[4];
    bilinear_weights(taps, tap_weights);
    acc_t sum_x = 0, sum_y = 0;
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t base = (b * channels + c) * plane;
      const acc_t g = static_cast<acc_t>(grad[base + pixel]);
      acc_t d_sx, d_sy;
      bilinear_coordinate_grad<scalar_t, acc_t>(image + base, height, width, taps, &d_sx, &d_sy);
      sum_x += g * d_sx;
      sum_y += g * d_sy;
#pragma unroll
      for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int64_t ty = taps.y0 + i, tx = taps.x0 + j;
          // A NaN coordinate parks its taps outside the image: nothing to scatter, as on the CPU.
          if (tap_inside(ty, tx, height, width))
            atomicAdd(grad_image + base + ty * width + tx, tap_weights[2 * i + j] * g);
        }
      }
    }
    grad_flow[flow_base] = static_cast<scalar_t>(sum_x * taps.dsx_dflow);
    grad_flow[flow_base + plane] = static_cast<scalar_t>(sum_y * taps.dsy_dflow);
  }
}

at::Tensor flow_warp_cuda(const at::Tensor& image_in, const at::Tensor& flow_in, c10::string_view padding_mode) {
  const bool border = check_flow_warp(image_in, flow_in, padding_mode);
  const c10::cuda::CUDAGuard device_guard(image_in.device());
  const at::Tensor image = image_in.contiguous();
  const at::Tensor flow = flow_in.contiguous();
  at::Tensor out = at::empty(image.sizes(), image.options());
  if (out.numel() == 0) return out;
  const int64_t batch = image.size(0), channels = image.size(1), height = image.size(2), width = image.size(3);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, image.scalar_type(), "flow_warp_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        flow_warp_forward_kernel<scalar_t, acc_t>
            <<<cuda::blocks_for(batch * height * width), cuda::kThreadsPerBlock, 0, stream>>>(
                image.data_ptr<scalar_t>(), flow.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), batch, channels,
                height, width, border);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor> flow_warp_backward_cuda(const at::Tensor& grad_in, const at::Tensor& image_in,
                                                           const at::Tensor& flow_in, c10::string_view padding_mode) {
  const bool border = check_flow_warp(image_in, flow_in, padding_mode);
  check_grad(grad_in, image_in, "grad");
  const c10::cuda::CUDAGuard device_guard(image_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor image = image_in.contiguous();
  const at::Tensor flow = flow_in.contiguous();
  if (image.numel() == 0) {
    return {at::zeros(image.sizes(), image.options()), at::zeros(flow.sizes(), flow.options())};
  }
  at::globalContext().alertNotDeterministic("jdrl_ext::_flow_warp_backward");
  const int64_t batch = image.size(0), channels = image.size(1), height = image.size(2), width = image.size(3);
  // The scatter target starts at zero; the flow gradient is written for every pixel.
  at::Tensor grad_image = at::zeros(image.sizes(), image.options().dtype(cuda::accumulate_dtype(image.scalar_type())));
  at::Tensor grad_flow = at::empty(flow.sizes(), flow.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, image.scalar_type(), "flow_warp_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        flow_warp_backward_kernel<scalar_t, acc_t>
            <<<cuda::blocks_for(batch * height * width), cuda::kThreadsPerBlock, 0, stream>>>(
                grad.data_ptr<scalar_t>(), image.data_ptr<scalar_t>(), flow.data_ptr<scalar_t>(),
                grad_image.data_ptr<acc_t>(), grad_flow.data_ptr<scalar_t>(), batch, channels, height, width, border);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {cuda::in_dtype(grad_image, image.scalar_type()), grad_flow};
}

}  // namespace
}  // namespace jdrl

TORCH_LIBRARY_IMPL(jdrl_ext, CUDA, m) {
  m.impl("flow_warp", &jdrl::flow_warp_cuda);
  m.impl("_flow_warp_backward", &jdrl::flow_warp_backward_cuda);
}
