// reblur on CUDA, fused (SPEC section 4): the kernels, their geometry and their allocations are in
// reblur_kernels.cuh (shared with the host emulation that tests them); this file checks the
// arguments, picks the device and stream, and launches.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "common/checks.h"
#include "common/cuda_launch.cuh"
#include "reblur/reblur.h"
#include "reblur/reblur_kernels.cuh"

namespace jdrl {
namespace {

at::Tensor reblur_cuda(const at::Tensor& image_in, const at::Tensor& seeds_in, const at::Tensor& weights_in,
                       c10::string_view support, c10::string_view padding_mode) {
  const ReblurArgs args = check_reblur(image_in, seeds_in, weights_in, support, padding_mode);
  const c10::cuda::CUDAGuard device_guard(image_in.device());
  const at::Tensor image = image_in.contiguous();
  const at::Tensor seeds = seeds_in.contiguous();
  const at::Tensor weights = weights_in.contiguous();
  at::Tensor out = at::empty(image.sizes(), image.options());
  if (out.numel() == 0) return out;
  const cuda::StreamTileLaunch launch{c10::cuda::getCurrentCUDAStream()};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, image.scalar_type(), "reblur_cuda",
                                  [&] {
                                    reblur_kernels::run_forward<scalar_t, at::opmath_type<scalar_t>>(
                                        image, seeds, weights, out, args, launch);
                                  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> reblur_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& image_in, const at::Tensor& seeds_in, const at::Tensor& weights_in,
    c10::string_view support, c10::string_view padding_mode) {
  const ReblurArgs args = check_reblur(image_in, seeds_in, weights_in, support, padding_mode);
  check_grad(grad_in, image_in, "grad");
  const c10::cuda::CUDAGuard device_guard(image_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor image = image_in.contiguous();
  const at::Tensor seeds = seeds_in.contiguous();
  const at::Tensor weights = weights_in.contiguous();
  if (image.numel() == 0) {
    return {at::zeros(image.sizes(), image.options()), at::zeros(seeds.sizes(), seeds.options()),
            at::zeros(weights.sizes(), weights.options())};
  }
  const cuda::StreamTileLaunch launch{c10::cuda::getCurrentCUDAStream()};
  std::tuple<at::Tensor, at::Tensor, at::Tensor> grads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, image.scalar_type(),
                                  "reblur_backward_cuda", [&] {
                                    grads = reblur_kernels::run_backward<scalar_t, at::opmath_type<scalar_t>>(
                                        grad, image, seeds, weights, args, launch);
                                  });
  return {std::get<0>(grads), cuda::in_dtype(std::get<1>(grads), seeds.scalar_type()), std::get<2>(grads)};
}

}  // namespace
}  // namespace jdrl

TORCH_LIBRARY_IMPL(jdrl_ext, CUDA, m) {
  m.impl("reblur", &jdrl::reblur_cuda);
  m.impl("_reblur_backward", &jdrl::reblur_backward_cuda);
}
