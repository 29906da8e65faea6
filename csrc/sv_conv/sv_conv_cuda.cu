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
#include "common/gather_conv.h"
#include "sv_conv/sv_conv.h"

namespace jdrl {
namespace {

template <typename scalar_t, typename acc_t>
__global__ void sv_conv_forward_kernel(const scalar_t* __restrict__ image, const scalar_t* __restrict__ kernels,
                                       scalar_t* __restrict__ out, int64_t batch, int64_t channels, int64_t height,
                                       int64_t width, int radius, bool replicate) {
  const int64_t plane = height * width;
  const int64_t taps = static_cast<int64_t>(2 * radius + 1) * (2 * radius + 1);
  JDRL_GRID_STRIDE_LOOP(index, batch * plane) {
    const int64_t b = index / plane, pixel = index - b * plane;
    const int64_t y = pixel / width, x = pixel - y * width;
    gather::apply_planes_pixel<scalar_t, scalar_t, acc_t>(
        image + b * channels * plane, kernels + b * taps * plane + pixel, out + b * channels * plane, channels, height,
        width, y, x, radius, replicate, gather::TapIndex{radius});
  }
}

template <typename scalar_t, typename acc_t>
__global__ void sv_conv_grad_kernels_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ image,
                                            scalar_t* __restrict__ grad_kernels, int64_t batch, int64_t channels,
                                            int64_t height, int64_t width, int radius, bool replicate) {
  const int64_t plane = height * width;
  const int64_t taps = static_cast<int64_t>(2 * radius + 1) * (2 * radius + 1);
  JDRL_GRID_STRIDE_LOOP(index, batch * plane) {
    const int64_t b = index / plane, pixel = index - b * plane;
    const int64_t y = pixel / width, x = pixel - y * width;
    gather::correlate_planes_pixel<scalar_t, acc_t>(image + b * channels * plane, grad + b * channels * plane,
                                                    grad_kernels + b * taps * plane + pixel, channels, height, width, y,
                                                    x, radius, replicate, gather::TapIndex{radius});
  }
}

template <typename scalar_t, typename acc_t>
__global__ void sv_conv_grad_image_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ kernels,
                                          scalar_t* __restrict__ grad_image, int64_t batch, int64_t channels,
                                          int64_t height, int64_t width, int radius, bool replicate) {
  const int64_t plane = height * width;
  const int64_t taps = static_cast<int64_t>(2 * radius + 1) * (2 * radius + 1);
  JDRL_GRID_STRIDE_LOOP(index, batch * plane) {
    const int64_t b = index / plane, pixel = index - b * plane;
    const int64_t y = pixel / width, x = pixel - y * width;
    gather::transposed_planes_pixel<scalar_t, scalar_t, acc_t>(
        grad + b * channels * plane, kernels + b * taps * plane, grad_image + b * channels * plane, channels, height,
        width, y, x, radius, replicate, gather::TapIndex{radius});
  }
}

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
        sv_conv_forward_kernel<scalar_t, acc_t>
            <<<cuda::blocks_for(batch * height * width), cuda::kThreadsPerBlock, 0, stream>>>(
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
  const unsigned int blocks = cuda::blocks_for(batch * height * width);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, image.scalar_type(), "sv_conv_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        sv_conv_grad_kernels_kernel<scalar_t, acc_t><<<blocks, cuda::kThreadsPerBlock, 0, stream>>>(
            grad.data_ptr<scalar_t>(), image.data_ptr<scalar_t>(), grad_kernels.data_ptr<scalar_t>(), batch, channels,
            height, width, args.radius, args.replicate);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        sv_conv_grad_image_kernel<scalar_t, acc_t><<<blocks, cuda::kThreadsPerBlock, 0, stream>>>(
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
