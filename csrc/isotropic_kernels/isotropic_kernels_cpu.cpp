// isotropic_kernels on the CPU: a row of pixels at a time through the shared functions of
// common/pixel_math.h (the level softmax over orbits that reblur uses), parallel over rows.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "common/checks.h"
#include "common/cpu_helpers.h"
#include "common/pixel_math.h"
#include "isotropic_kernels/isotropic_kernels.h"

namespace jdrl {
namespace {

at::Tensor isotropic_kernels_cpu(const at::Tensor& seeds_in, c10::string_view support) {
  const IsotropicKernelsArgs args = check_isotropic_kernels(seeds_in, support);
  check_cpu_dtype(seeds_in, "seeds");
  const at::Tensor seeds = seeds_in.contiguous();
  const int64_t batch = seeds.size(0), height = seeds.size(2), width = seeds.size(3);
  const int64_t size = 2 * args.radius + 1;
  at::Tensor kernels = at::empty({batch, size * size, height, width}, seeds.options());
  if (kernels.numel() == 0) return kernels;
  const int64_t plane = height * width;
  AT_DISPATCH_FLOATING_TYPES(seeds.scalar_type(), "isotropic_kernels_cpu", [&] {
    const scalar_t* seeds_ptr = seeds.data_ptr<scalar_t>();
    scalar_t* kernels_ptr = kernels.data_ptr<scalar_t>();
    const std::vector<OrbitPolar<scalar_t>> table = cpu::orbit_table<scalar_t>(args.radius + 1);
    const int64_t orbits = orbit_count(args.radius + 1);
    at::parallel_for(0, batch * height, cpu::rows_per_task(width, cpu::kHeavyPixelsPerTask), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> probs(orbits * width), scratch(2 * width);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / height, y = row % height;
        isotropic_kernel_span<scalar_t, scalar_t>(seeds_ptr + b * seeds.size(1) * plane + y * width, plane, width,
                                                  args.radius, args.disk, table.data(), probs.data(), width,
                                                  scratch.data(), kernels_ptr + b * size * size * plane + y * width,
                                                  plane);
      }
    });
  });
  return kernels;
}

at::Tensor isotropic_kernels_backward_cpu(const at::Tensor& grad_in, const at::Tensor& seeds_in,
                                          c10::string_view support) {
  const IsotropicKernelsArgs args = check_isotropic_kernels(seeds_in, support);
  check_cpu_dtype(seeds_in, "seeds");
  const int64_t size = 2 * args.radius + 1;
  TORCH_CHECK_VALUE(grad_in.dim() == 4 && grad_in.size(0) == seeds_in.size(0) && grad_in.size(1) == size * size &&
                        grad_in.size(2) == seeds_in.size(2) && grad_in.size(3) == seeds_in.size(3),
                    "grad must have the shape of the kernels, (B, K*K, H, W) with K = ", size, ", got ", grad_in.sizes());
  check_same_kind(grad_in, "grad", seeds_in, "seeds");
  const at::Tensor seeds = seeds_in.contiguous();
  const at::Tensor grad = grad_in.contiguous();
  at::Tensor grad_seeds = at::empty(seeds.sizes(), seeds.options());
  if (grad_seeds.numel() == 0) return grad_seeds;
  const int64_t batch = seeds.size(0), height = seeds.size(2), width = seeds.size(3);
  const int64_t plane = height * width;
  AT_DISPATCH_FLOATING_TYPES(seeds.scalar_type(), "isotropic_kernels_backward_cpu", [&] {
    const scalar_t* seeds_ptr = seeds.data_ptr<scalar_t>();
    const scalar_t* grad_ptr = grad.data_ptr<scalar_t>();
    scalar_t* out_ptr = grad_seeds.data_ptr<scalar_t>();
    const std::vector<OrbitPolar<scalar_t>> table = cpu::orbit_table<scalar_t>(args.radius + 1);
    const int64_t orbits = orbit_count(args.radius + 1);
    at::parallel_for(0, batch * height, cpu::rows_per_task(width, cpu::kHeavyPixelsPerTask), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> probs(orbits * width), orbit_grad(orbits * width), scratch(3 * width);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / height, y = row % height;
        const int64_t seed_base = b * seeds.size(1) * plane + y * width;
        isotropic_kernel_span_backward<scalar_t, scalar_t>(
            grad_ptr + b * size * size * plane + y * width, plane, seeds_ptr + seed_base, plane, width, args.radius,
            args.disk, table.data(), probs.data(), width, orbit_grad.data(), width, scratch.data(),
            out_ptr + seed_base);
      }
    });
  });
  return grad_seeds;
}

}  // namespace
}  // namespace jdrl

TORCH_LIBRARY_IMPL(jdrl_ext, CPU, m) {
  m.impl("isotropic_kernels", &jdrl::isotropic_kernels_cpu);
  m.impl("_isotropic_kernels_backward", &jdrl::isotropic_kernels_backward_cpu);
}
