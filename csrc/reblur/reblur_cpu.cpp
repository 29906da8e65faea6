// reblur on the CPU, fused (SPEC section 4): per row, the per-pixel radial kernel over the
// m(m+1)/2 orbits is built in a row buffer and applied at once, so no level's kernels are ever
// stored for the whole image.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/cpu_helpers.h"
#include "common/cpu_conv.h"
#include "common/pixel_math.h"
#include "reblur/reblur.h"

namespace jdrl {
namespace {

struct OrbitIndex {
  int operator()(int dy, int dx) const { return orbit_of_offset(dy, dx); }
};


at::Tensor reblur_cpu(const at::Tensor& image_in, const at::Tensor& seeds_in, const at::Tensor& weights_in,
                      c10::string_view support, c10::string_view padding_mode) {
  const ReblurArgs args = check_reblur(image_in, seeds_in, weights_in, support, padding_mode);
  check_cpu_dtype(image_in, "image");
  const at::Tensor image = image_in.contiguous();
  const at::Tensor seeds = seeds_in.contiguous();
  const at::Tensor weights = weights_in.contiguous();
  at::Tensor out = at::empty(image.sizes(), image.options());
  if (out.numel() == 0) return out;
  const int64_t batch = image.size(0), channels = image.size(1), height = image.size(2), width = image.size(3);
  const int64_t plane = height * width, seed_count = seeds.size(1);
  const int orbits = orbit_count(args.levels);
  const int radius = args.levels - 1;
  AT_DISPATCH_FLOATING_TYPES(image.scalar_type(), "reblur_cpu", [&] {
    const scalar_t* image_ptr = image.data_ptr<scalar_t>();
    const scalar_t* seeds_ptr = seeds.data_ptr<scalar_t>();
    const scalar_t* weights_ptr = weights.data_ptr<scalar_t>();
    scalar_t* out_ptr = out.data_ptr<scalar_t>();
    const std::vector<OrbitPolar<scalar_t>> table = cpu::orbit_table<scalar_t>(args.levels);
    at::parallel_for(0, batch * height, cpu::rows_per_task(width, cpu::kHeavyPixelsPerTask), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> row_weights(orbits * width), probs(orbits * width), scratch(2 * width), row_buffer,
          accumulator;
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / height, y = row % height;
        // The whole row is one span: the loops over x inside vectorize.
        radial_kernel<scalar_t, scalar_t>(seeds_ptr + b * seed_count * plane + y * width, plane,
                                          weights_ptr + b * args.levels * plane + y * width, plane, width, args.levels,
                                          args.disk, table.data(), probs.data(), width, scratch.data(),
                                          row_weights.data(), width);
        cpu::apply_planes_row(image_ptr + b * channels * plane, out_ptr + b * channels * plane, channels, height, width,
                              y, radius, args.replicate, row_weights.data(), width, OrbitIndex{}, row_buffer,
                              accumulator);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> reblur_backward_cpu(const at::Tensor& grad_in,
                                                                   const at::Tensor& image_in,
                                                                   const at::Tensor& seeds_in,
                                                                   const at::Tensor& weights_in,
                                                                   c10::string_view support,
                                                                   c10::string_view padding_mode) {
  const ReblurArgs args = check_reblur(image_in, seeds_in, weights_in, support, padding_mode);
  check_cpu_dtype(image_in, "image");
  check_grad(grad_in, image_in, "grad");
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor image = image_in.contiguous();
  const at::Tensor seeds = seeds_in.contiguous();
  const at::Tensor weights = weights_in.contiguous();
  at::Tensor grad_image = at::zeros(image.sizes(), image.options());
  at::Tensor grad_seeds = at::zeros(seeds.sizes(), seeds.options());
  at::Tensor grad_weights = at::zeros(weights.sizes(), weights.options());
  if (image.numel() == 0) return {grad_image, grad_seeds, grad_weights};
  const int64_t batch = image.size(0), channels = image.size(1), height = image.size(2), width = image.size(3);
  const int64_t plane = height * width, seed_count = seeds.size(1);
  const int orbits = orbit_count(args.levels);
  const int radius = args.levels - 1;
  // The radial kernels of the whole image (m(m+1)/2 planes: 36 for m = 8), which the image
  // gradient gathers from the neighbours. The per-level kernels (679 planes) are never built.
  at::Tensor orbit_weights = at::empty({batch, orbits, height, width}, image.options());
  AT_DISPATCH_FLOATING_TYPES(image.scalar_type(), "reblur_backward_cpu", [&] {
    const scalar_t* grad_ptr = grad.data_ptr<scalar_t>();
    const scalar_t* image_ptr = image.data_ptr<scalar_t>();
    const scalar_t* seeds_ptr = seeds.data_ptr<scalar_t>();
    const scalar_t* weights_ptr = weights.data_ptr<scalar_t>();
    scalar_t* orbit_weights_ptr = orbit_weights.data_ptr<scalar_t>();
    scalar_t* grad_image_ptr = grad_image.data_ptr<scalar_t>();
    scalar_t* grad_seeds_ptr = grad_seeds.data_ptr<scalar_t>();
    scalar_t* grad_weights_ptr = grad_weights.data_ptr<scalar_t>();
    // Pass 1, per row: the gradient with respect to each orbit weight, sum_c grad * S_o, then the
    // seed and weight gradients of each pixel; and the radial kernels for pass 2.
    const std::vector<OrbitPolar<scalar_t>> table = cpu::orbit_table<scalar_t>(args.levels);
    at::parallel_for(0, batch * height, cpu::rows_per_task(width, cpu::kHeavyPixelsPerTask), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> orbit_grad(orbits * width), probs(orbits * width), scratch(3 * width), row_buffer;
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / height, y = row % height;
        const int64_t image_base = b * channels * plane;
        const int64_t seed_base = b * seed_count * plane + y * width;
        const int64_t weight_base = b * args.levels * plane + y * width;
        std::fill(orbit_grad.begin(), orbit_grad.end(), scalar_t(0));
        cpu::correlate_planes_row(image_ptr + image_base, grad_ptr + image_base, channels, height, width, y, radius,
                                  args.replicate, orbit_grad.data(), width, OrbitIndex{}, row_buffer);
        radial_kernel_backward<scalar_t, scalar_t>(orbit_grad.data(), width, seeds_ptr + seed_base, plane,
                                                   weights_ptr + weight_base, plane, width, args.levels, args.disk,
                                                   table.data(), probs.data(), width, scratch.data(),
                                                   grad_seeds_ptr + seed_base, grad_weights_ptr + weight_base,
                                                   orbit_weights_ptr + b * orbits * plane + y * width, plane);
      }
    });
    // Pass 2, per row: the image gradient, gathered from the neighbours' radial kernels.
    at::parallel_for(0, batch * height, cpu::rows_per_task(width, cpu::kHeavyPixelsPerTask), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> accumulator;
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / height, y = row % height;
        const int64_t image_base = b * channels * plane;
        cpu::transposed_row(grad_ptr + image_base, grad_image_ptr + image_base, channels, height, width, y, radius,
                            args.replicate, orbit_weights_ptr + b * orbits * plane, plane, OrbitIndex{}, accumulator);
      }
    });
  });
  return {grad_image, grad_seeds, grad_weights};
}

}  // namespace
}  // namespace jdrl

TORCH_LIBRARY_IMPL(jdrl_ext, CPU, m) {
  m.impl("reblur", &jdrl::reblur_cpu);
  m.impl("_reblur_backward", &jdrl::reblur_backward_cpu);
}
