// sv_conv on CUDA: one thread per pixel running the gather loops of common/gather_conv.h with plane
// t(d) = (dy + R) * K + (dx + R). The backward pass has no atomics: the kernel gradient is per pixel
// and the image gradient gathers from the neighbours (the transposed convolution as a gather).
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
#include "sv_conv/sv_conv_kernels.cuh"
#include "common/gather_conv.h"
#include "sv_conv/sv_conv.h"

namespace jdrl {
namespace {

at::Tensor sv_conv_cuda(const at::Tensor& image_in, const at::Tensor& kernels_in, c10::string_view padding_mode) {
  const SvConvArgs args = check_sv_conv(image_in, kernels_in, padding_mode);
  const c10::cuda::CUDAGuard device_guard(image_in.device());
  const at::Tensor image = image_in.contiguous();
  const at::Tensor kernels = kernels_in.contiguous();
  at::Tensor out = at::empty(image.sizes(), image.options());
  if (out.numel() == 0) return out;
  const int64_t batch = image.size(0), channels = image.size(1), height = image.size(2), width = image.size(3);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, image.scalar_type(), "sv_conv_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const cuda::PixelGrid g = cuda::pixel_grid(batch * height * width);
        sv_conv_kernels::sv_conv_forward_kernel<scalar_t, acc_t><<<g.grid, g.block, 0, stream>>>(
                image.data_ptr<scalar_t>(), kernels.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), batch, channels,
                height, width, args.radius, args.replicate);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
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
  const int64_t batch = image.size(0), channels = image.size(1), height = image.size(2), width = image.size(3);
  const cuda::PixelGrid g = cuda::pixel_grid(batch * height * width);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, image.scalar_type(), "sv_conv_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        sv_conv_kernels::sv_conv_grad_kernels_kernel<scalar_t, acc_t><<<g.grid, g.block, 0, stream>>>(
            grad.data_ptr<scalar_t>(), image.data_ptr<scalar_t>(), grad_kernels.data_ptr<scalar_t>(), batch, channels,
            height, width, args.radius, args.replicate);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        sv_conv_kernels::sv_conv_grad_image_kernel<scalar_t, acc_t><<<g.grid, g.block, 0, stream>>>(
            grad.data_ptr<scalar_t>(), kernels.data_ptr<scalar_t>(), grad_image.data_ptr<scalar_t>(), batch, channels,
            height, width, args.radius, args.replicate);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {grad_image, grad_kernels};
}

}  // namespace
}  // namespace jdrl

TORCH_LIBRARY_IMPL(jdrl_ext, CUDA, m) {
  m.impl("sv_conv", &jdrl::sv_conv_cuda);
  m.impl("_sv_conv_backward", &jdrl::sv_conv_backward_cuda);
}
