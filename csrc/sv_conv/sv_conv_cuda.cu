// sv_conv on CUDA: the tiled kernels of sv_conv_kernels.cuh (shared with the host emulation that
// tests them: their geometry, variants and arguments are there too); this file checks the arguments,
// picks the device and stream, and launches. The backward pass has no atomics: the kernel gradient
// is per pixel and the image gradient gathers from the neighbours (the transposed convolution as a
// gather).
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
#include "sv_conv/sv_conv.h"
#include "sv_conv/sv_conv_kernels.cuh"

namespace jdrl {
namespace {

at::Tensor sv_conv_cuda(const at::Tensor& image_in, const at::Tensor& kernels_in, c10::string_view padding_mode) {
  const SvConvArgs args = check_sv_conv(image_in, kernels_in, padding_mode);
  const c10::cuda::CUDAGuard device_guard(image_in.device());
  const at::Tensor image = image_in.contiguous();
  const at::Tensor kernels = kernels_in.contiguous();
  at::Tensor out = at::empty(image.sizes(), image.options());
  if (out.numel() == 0) return out;
  const cuda::StreamTileLaunch launch{c10::cuda::getCurrentCUDAStream()};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, image.scalar_type(), "sv_conv_cuda", [&] {
        sv_conv_kernels::run_forward<scalar_t, at::opmath_type<scalar_t>>(image, kernels, out, args, launch);
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor> sv_conv_backward_cuda(const at::Tensor& grad_in, const at::Tensor& image_in,
                                                         const at::Tensor& kernels_in, c10::string_view padding_mode) {
  const SvConvArgs args = check_sv_conv(image_in, kernels_in, padding_mode);
  check_grad(grad_in, image_in, "grad");
  const c10::cuda::CUDAGuard device_guard(image_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor image = image_in.contiguous();
  const at::Tensor kernels = kernels_in.contiguous();
  if (image.numel() == 0 || kernels.numel() == 0) {
    return {at::zeros(image.sizes(), image.options()), at::zeros(kernels.sizes(), kernels.options())};
  }
  // Both kernels write every element of their output.
  at::Tensor grad_image = at::empty(image.sizes(), image.options());
  at::Tensor grad_kernels = at::empty(kernels.sizes(), kernels.options());
  const cuda::StreamTileLaunch launch{c10::cuda::getCurrentCUDAStream()};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, image.scalar_type(), "sv_conv_backward_cuda", [&] {
        sv_conv_kernels::run_backward<scalar_t, at::opmath_type<scalar_t>>(grad, image, kernels, grad_image,
                                                                           grad_kernels, args, launch);
      });
  return {grad_image, grad_kernels};
}

}  // namespace
}  // namespace jdrl

TORCH_LIBRARY_IMPL(jdrl_ext, CUDA, m) {
  m.impl("sv_conv", &jdrl::sv_conv_cuda);
  m.impl("_sv_conv_backward", &jdrl::sv_conv_backward_cuda);
}
