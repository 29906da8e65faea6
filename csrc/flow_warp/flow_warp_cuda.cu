// flow_warp on CUDA: the kernels, their index type and their arguments are in flow_warp_kernels.cuh
// (shared with the host emulation that tests them); this file checks the arguments, picks the device
// and stream, and launches. The forward pass and the flow gradient are gathers. The image gradient is
// a scatter (a flow can send any pixel anywhere), done with atomicAdd into a tensor in the
// accumulation dtype (the output itself for float32/float64, a float32 scratch for
// float16/bfloat16): its summation order varies from run to run, so the backward pass reports itself
// as nondeterministic.
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
#include "flow_warp/flow_warp_kernels.cuh"
#include "common/pixel_math.h"
#include "flow_warp/flow_warp.h"

namespace jdrl {
namespace {

at::Tensor flow_warp_cuda(const at::Tensor& image_in, const at::Tensor& flow_in, c10::string_view padding_mode) {
  const bool border = check_flow_warp(image_in, flow_in, padding_mode);
  const c10::cuda::CUDAGuard device_guard(image_in.device());
  const at::Tensor image = image_in.contiguous();
  const at::Tensor flow = flow_in.contiguous();
  at::Tensor out = at::empty(image.sizes(), image.options());
  if (out.numel() == 0) return out;
  const cuda::StreamPixelLaunch launch{c10::cuda::getCurrentCUDAStream()};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, image.scalar_type(), "flow_warp_cuda", [&] {
        flow_warp_kernels::run_forward<scalar_t, at::opmath_type<scalar_t>>(image, flow, out, border, launch);
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
  const cuda::StreamPixelLaunch launch{c10::cuda::getCurrentCUDAStream()};
  std::tuple<at::Tensor, at::Tensor> grads;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, image.scalar_type(), "flow_warp_backward_cuda", [&] {
        grads = flow_warp_kernels::run_backward<scalar_t, at::opmath_type<scalar_t>>(grad, image, flow, border, launch);
      });
  const auto& [grad_image, grad_flow] = grads;
  return {cuda::in_dtype(grad_image, image.scalar_type()), grad_flow};
}

}  // namespace
}  // namespace jdrl

TORCH_LIBRARY_IMPL(jdrl_ext, CUDA, m) {
  m.impl("flow_warp", &jdrl::flow_warp_cuda);
  m.impl("_flow_warp_backward", &jdrl::flow_warp_backward_cuda);
}
