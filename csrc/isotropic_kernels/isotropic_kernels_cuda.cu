// isotropic_kernels on CUDA: one thread per pixel through the shared functions of
// common/pixel_math.h that the CPU kernel calls (with a span of one pixel), in float32 for
// float16/bfloat16 inputs. A thread's per-orbit values live in its slot of a scratch tensor: one
// slot per resident thread, reused along the grid-stride loop. The kernels, their geometry and
// arguments are in isotropic_kernels_device.cuh (shared with the host emulation that tests them);
// this file checks the arguments, picks the device and stream, and launches.
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
#include "common/cuda_orbit_table.cuh"
#include "common/pixel_math.h"
#include "isotropic_kernels/isotropic_kernels.h"

namespace jdrl {
namespace {

// The launch of isotropic_device::run_forward/run_backward on a stream: the device's resident
// blocks, and the orbit table filled on the device.
struct IsotropicStreamLaunch : cuda::StreamPixelLaunch {
  template <typename Kernel>
  int64_t resident_blocks(Kernel kernel) const {
    return cuda::resident_blocks(kernel);
  }
  template <typename acc_t>
  at::Tensor orbit_table(int levels, const at::Tensor& like) const {
    return cuda::orbit_table_on_device<acc_t>(levels, like, stream);
  }
};

at::Tensor isotropic_kernels_cuda(const at::Tensor& seeds_in, c10::string_view support) {
  const IsotropicKernelsArgs args = check_isotropic_kernels(seeds_in, support);
  const c10::cuda::CUDAGuard device_guard(seeds_in.device());
  const at::Tensor seeds = seeds_in.contiguous();
  const int64_t batch = seeds.size(0), height = seeds.size(2), width = seeds.size(3);
  const int64_t size = 2 * args.radius + 1;
  at::Tensor kernels = at::empty({batch, size * size, height, width}, seeds.options());
  if (kernels.numel() == 0) return kernels;
  const IsotropicStreamLaunch launch{{c10::cuda::getCurrentCUDAStream()}};
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
  at::Tensor grad_seeds = at::empty(seeds.sizes(), seeds.options().dtype(cuda::accumulate_dtype(seeds.scalar_type())));
  if (grad_seeds.numel() == 0) return cuda::in_dtype(grad_seeds, seeds.scalar_type());
  const IsotropicStreamLaunch launch{{c10::cuda::getCurrentCUDAStream()}};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, seeds.scalar_type(), "isotropic_kernels_backward_cuda", [&] {
        isotropic_device::run_backward<scalar_t, at::opmath_type<scalar_t>>(grad, seeds, grad_seeds, args, launch);
      });
  return cuda::in_dtype(grad_seeds, seeds.scalar_type());
}

}  // namespace
}  // namespace jdrl

TORCH_LIBRARY_IMPL(jdrl_ext, CUDA, m) {
  m.impl("isotropic_kernels", &jdrl::isotropic_kernels_cuda);
  m.impl("_isotropic_kernels_backward", &jdrl::isotropic_kernels_backward_cuda);
}
