// The CUDA kernels of sv_conv and their launch, compiled by nvcc for the device (sv_conv_cuda.cu)
// and by the host compiler under common/cuda_host_emulation.h (csrc/emulation), which runs them in
// the tests.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "common/cuda_kernel_support.cuh"
#include "common/gather_conv.h"
#include "common/pixel_math.h"
#include "sv_conv/sv_conv.h"

namespace jdrl {
namespace sv_conv_kernels {

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

// ---------------------------------------------------------------------------------------------
// Host side, shared by the CUDA launcher (sv_conv_cuda.cu) and the emulation (csrc/emulation): the
// geometry and the kernel arguments. `launch(kernel, pixel_grid, args...)` runs one kernel; the
// tensors are contiguous, on the launcher's device, in scalar_t, and not empty.

template <typename scalar_t, typename acc_t, typename Launch>
void run_forward(const at::Tensor& image, const at::Tensor& kernels, const at::Tensor& out, const SvConvArgs& args,
                 Launch&& launch) {
  const int64_t batch = image.size(0), channels = image.size(1), height = image.size(2), width = image.size(3);
  launch(&sv_conv_forward_kernel<scalar_t, acc_t>, cuda::pixel_grid(batch * height * width),
         image.data_ptr<scalar_t>(), kernels.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), batch, channels, height,
         width, args.radius, args.replicate);
}

// Writes every element of grad_image and grad_kernels.
template <typename scalar_t, typename acc_t, typename Launch>
void run_backward(const at::Tensor& grad, const at::Tensor& image, const at::Tensor& kernels,
                  const at::Tensor& grad_image, const at::Tensor& grad_kernels, const SvConvArgs& args,
                  Launch&& launch) {
  const int64_t batch = image.size(0), channels = image.size(1), height = image.size(2), width = image.size(3);
  const cuda::PixelGrid g = cuda::pixel_grid(batch * height * width);
  launch(&sv_conv_grad_kernels_kernel<scalar_t, acc_t>, g, grad.data_ptr<scalar_t>(), image.data_ptr<scalar_t>(),
         grad_kernels.data_ptr<scalar_t>(), batch, channels, height, width, args.radius, args.replicate);
  launch(&sv_conv_grad_image_kernel<scalar_t, acc_t>, g, grad.data_ptr<scalar_t>(), kernels.data_ptr<scalar_t>(),
         grad_image.data_ptr<scalar_t>(), batch, channels, height, width, args.radius, args.replicate);
}

}  // namespace sv_conv_kernels
}  // namespace jdrl
