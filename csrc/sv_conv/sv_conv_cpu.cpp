// sv_conv on the CPU: row loops of common/cpu_conv.h with plane t(d) = (dy + R) * K + (dx + R).
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
#include "sv_conv/sv_conv.h"

namespace jdrl {
namespace {

struct TapIndex {
  int radius;
  int operator()(int dy, int dx) const { return (dy + radius) * (2 * radius + 1) + (dx + radius); }
};

at::Tensor sv_conv_cpu(const at::Tensor& image_in, const at::Tensor& kernels_in, c10::string_view padding_mode) {
  const SvConvArgs args = check_sv_conv(image_in, kernels_in, padding_mode);
  check_cpu_dtype(image_in, "image");
  const at::Tensor image = image_in.contiguous();
  const at::Tensor kernels = kernels_in.contiguous();
  at::Tensor out = at::empty(image.sizes(), image.options());
  if (out.numel() == 0) return out;
  const int64_t batch = image.size(0), channels = image.size(1), height = image.size(2), width = image.size(3);
  const int64_t plane = height * width, taps = kernels.size(1);
  AT_DISPATCH_FLOATING_TYPES(image.scalar_type(), "sv_conv_cpu", [&] {
    const scalar_t* image_ptr = image.data_ptr<scalar_t>();
    const scalar_t* kernels_ptr = kernels.data_ptr<scalar_t>();
    scalar_t* out_ptr = out.data_ptr<scalar_t>();
    at::parallel_for(0, batch * height, cpu::rows_per_task(width, cpu::kHeavyPixelsPerTask), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> row_buffer, accumulator;
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / height, y = row % height;
        cpu::apply_planes_row(image_ptr + b * channels * plane, out_ptr + b * channels * plane, channels, height, width,
                              y, args.radius, args.replicate, kernels_ptr + b * taps * plane + y * width, plane,
                              TapIndex{args.radius}, row_buffer, accumulator);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> sv_conv_backward_cpu(const at::Tensor& grad_in, const at::Tensor& image_in,
                                                        const at::Tensor& kernels_in, c10::string_view padding_mode) {
  const SvConvArgs args = check_sv_conv(image_in, kernels_in, padding_mode);
  check_cpu_dtype(image_in, "image");
  check_grad(grad_in, image_in, "grad");
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor image = image_in.contiguous();
  const at::Tensor kernels = kernels_in.contiguous();
  at::Tensor grad_image = at::empty(image.sizes(), image.options());
  at::Tensor grad_kernels = at::zeros(kernels.sizes(), kernels.options());
  if (image.numel() == 0 || kernels.numel() == 0) return {grad_image.zero_(), grad_kernels};
  const int64_t batch = image.size(0), channels = image.size(1), height = image.size(2), width = image.size(3);
  const int64_t plane = height * width, taps = kernels.size(1);
  AT_DISPATCH_FLOATING_TYPES(image.scalar_type(), "sv_conv_backward_cpu", [&] {
    const scalar_t* grad_ptr = grad.data_ptr<scalar_t>();
    const scalar_t* image_ptr = image.data_ptr<scalar_t>();
    const scalar_t* kernels_ptr = kernels.data_ptr<scalar_t>();
    scalar_t* grad_image_ptr = grad_image.data_ptr<scalar_t>();
    scalar_t* grad_kernels_ptr = grad_kernels.data_ptr<scalar_t>();
    at::parallel_for(0, batch * height, cpu::rows_per_task(width, cpu::kHeavyPixelsPerTask), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> row_buffer, accumulator;
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / height, y = row % height;
        const int64_t image_base = b * channels * plane;
        cpu::correlate_planes_row(image_ptr + image_base, grad_ptr + image_base, channels, height, width, y,
                                  args.radius, args.replicate, grad_kernels_ptr + b * taps * plane + y * width, plane,
                                  TapIndex{args.radius}, row_buffer);
        cpu::transposed_row(grad_ptr + image_base, grad_image_ptr + image_base, channels, height, width, y,
                            args.radius, args.replicate, kernels_ptr + b * taps * plane, plane,
                            TapIndex{args.radius}, accumulator);
      }
    });
  });
  return {grad_image, grad_kernels};
}

}  // namespace
}  // namespace jdrl

TORCH_LIBRARY_IMPL(jdrl_ext, CPU, m) {
  m.impl("sv_conv", &jdrl::sv_conv_cpu);
  m.impl("_sv_conv_backward", &jdrl::sv_conv_backward_cpu);
}
