// isotropic_kernels on CUDA: the kernels of isotropic_kernels_device.cuh (one thread per pixel, the
// level softmax in registers; shared with the host emulation that tests them, with their grid,
// variants and arguments); this file checks the arguments, picks the device and stream, and launches.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/cuda_launch.cuh"
#include "isotropic_kernels/isotropic_kernels_device.cuh"
#include "isotropic_kernels/isotropic_kernels.h"

namespace jdrl {
namespace {

at::Tensor isotropic_kernels_cuda(const at::Tensor& seeds_in, c10::string_view support) {
  const IsotropicKernelsArgs args = check_isotropic_kernels(seeds_in, support);
  const c10::cuda::CUDAGuard device_guard(seeds_in.device());
  const at::Tensor seeds = seeds_in.contiguous();
  const int64_t batch = seeds.size(0), height = seeds.size(2), width = seeds.size(3);
  const int64_t size = 2 * args.radius + 1;
  at::Tensor kernels = at::empty({batch, size * size, height, width}, seeds.options());
  if (kernels.numel() == 0) return kernels;
  const cuda::StreamPixelLaunch launch{c10::cuda::getCurrentCUDAStream()};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, seeds.scalar_type(), "isotropic_kernels_cuda", [&] {
        isotropic_device::run_forward<scalar_t, at::opmath_type<scalar_t>>(seeds, kernels, args, launch);
      });
  return kernels;
}

at::Tensor isotropic_kernels_backward_cuda(const at::Tensor& grad_in, const at::Tensor& seeds_in,
                                           c10::string_view support) {
  const IsotropicKernelsArgs args = check_isotropic_kernels(seeds_in, support);
  const int64_t size = 2 * args.radius + 1;
  TORCH_CHECK_VALUE(grad_in.dim() == 4 && grad_in.size(0) == seeds_in.size(0) && grad_in.size(1) == size * size &&
                        grad_in.size(2) == seeds_in.size(2) && grad_in.size(3) == seeds_in.size(3),
                    "grad must have the shape of the kernels, (B, K*K, H, W) with K = ", size, ", got ",
                    grad_in.sizes());
  check_same_kind(grad_in, "grad", seeds_in, "seeds");
  const c10::cuda::CUDAGuard device_guard(seeds_in.device());
  const at::Tensor seeds = seeds_in.contiguous();
  const at::Tensor grad = grad_in.contiguous();
  if (seeds.numel() == 0) return at::empty(seeds.sizes(), seeds.options());
  at::Tensor grad_seeds;
  const cuda::StreamPixelLaunch launch{c10::cuda::getCurrentCUDAStream()};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, seeds.scalar_type(), "isotropic_kernels_backward_cuda", [&] {
        grad_seeds = isotropic_device::run_backward<scalar_t, at::opmath_type<scalar_t>>(grad, seeds, args, launch);
      });
  return cuda::in_dtype(grad_seeds, seeds.scalar_type());
}

}  // namespace
}  // namespace jdrl

TORCH_LIBRARY_IMPL(jdrl_ext, CUDA, m) {
  m.impl("isotropic_kernels", &jdrl::isotropic_kernels_cuda);
  m.impl("_isotropic_kernels_backward", &jdrl::isotropic_kernels_backward_cuda);
}
