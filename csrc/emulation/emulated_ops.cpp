// The CUDA kernels of the four ops, run on the CPU by the host emulation of common/cuda_host_emulation.h,
// as the test-only operators torch.ops.jdrl_emulated.* (CPU tensors, float32/float64; reblur, sv_conv
// and isotropic_kernels also float16/bfloat16): the same __global__ functions (the op folders' *_kernels.cuh / *_device.cuh,
// which the .cu files include), against the CPU kernels in tests/test_cuda_emulated.py. The kernel
// arguments, launch geometry and scratch come from those headers' run_forward/run_backward, which
// the .cu files call too; only the `launch` differs: emulation::launch here instead of <<<...>>> on
// a stream, with no device guard.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/cuda_kernel_support.cuh"
#include "common/pixel_math.h"
#include "flow_warp/flow_warp.h"
#include "flow_warp/flow_warp_kernels.cuh"
#include "isotropic_kernels/isotropic_kernels.h"
#include "isotropic_kernels/isotropic_kernels_device.cuh"
#include "reblur/reblur.h"
#include "reblur/reblur_kernels.cuh"
#include "sv_conv/sv_conv.h"
#include "sv_conv/sv_conv_kernels.cuh"

namespace jdrl {
namespace {

template <typename Kernel, typename... Args>
void emulate(const cuda::PixelGrid& g, Kernel kernel, Args... args) {
  emulation::launch(g.grid, g.block, 0, [&] { kernel(args...); });
}

// The `launch` of the pixel-grid ops' run_forward/run_backward (cuda::StreamPixelLaunch on CUDA).
struct EmulatedPixelLaunch {
  template <typename Kernel, typename... Args>
  void operator()(Kernel kernel, const cuda::PixelGrid& g, Args... args) const {
    emulate(g, kernel, args...);
  }
};

// The `launch` of the tiled ops' run_forward/run_backward (cuda::StreamTileLaunch on CUDA).
struct EmulatedLaunch {
  // The device's opt-in shared memory per block (the schemas' max_shared_bytes, by default an
  // H100/H200's 227 KB; 48 KB, as before Volta, makes reblur's m = 8 take the generic kernels).
  int64_t shared_limit;
  int64_t max_shared_bytes() const { return shared_limit; }
  template <typename Kernel, typename Geometry, typename Params>
  void operator()(Kernel kernel, const Geometry& g, const Params& params) const {
    emulation::launch(g.grid, g.block, g.shared_bytes, [&] { kernel(params); });
  }
};

// ---- reblur (also float16 and bfloat16, accumulated in float32, as on CUDA)

void check_emulated_half_dtype(const at::Tensor& t, const char* name) {
  const at::ScalarType dtype = t.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16, name,
                   ": the emulated reblur, sv_conv and isotropic_kernels take float32, float64, float16 or bfloat16, got ", dtype);
}

// A limit above 2^31 - 1 would send larger tensors to the 32-bit kernels.
void check_index_limit(int64_t index_limit) {
  TORCH_CHECK_VALUE(index_limit > 0 && index_limit <= reblur_kernels::kIndexLimit, "index_limit: must be in [1, ",
                    reblur_kernels::kIndexLimit, "], got ", index_limit);
}

at::Tensor reblur_emulated(const at::Tensor& image_in, const at::Tensor& seeds_in, const at::Tensor& weights_in,
                           c10::string_view support, c10::string_view padding_mode, int64_t max_shared_bytes,
                           int64_t index_limit) {
  const ReblurArgs args = check_reblur(image_in, seeds_in, weights_in, support, padding_mode);
  check_index_limit(index_limit);
  check_emulated_half_dtype(image_in, "image");
  const at::Tensor image = image_in.contiguous();
  const at::Tensor seeds = seeds_in.contiguous();
  const at::Tensor weights = weights_in.contiguous();
  at::Tensor out = at::empty(image.sizes(), image.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, image.scalar_type(), "reblur_emulated", [&] {
    reblur_kernels::run_forward<scalar_t, at::opmath_type<scalar_t>>(image, seeds, weights, out, args,
                                                                     EmulatedLaunch{max_shared_bytes}, index_limit);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> reblur_backward_emulated(const at::Tensor& grad_in,
                                                                        const at::Tensor& image_in,
                                                                        const at::Tensor& seeds_in,
                                                                        const at::Tensor& weights_in,
                                                                        c10::string_view support,
                                                                        c10::string_view padding_mode,
                                                                        int64_t max_shared_bytes,
                                                                        int64_t index_limit) {
  const ReblurArgs args = check_reblur(image_in, seeds_in, weights_in, support, padding_mode);
  check_index_limit(index_limit);
  check_emulated_half_dtype(image_in, "image");
  check_grad(grad_in, image_in, "grad");
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor image = image_in.contiguous();
  const at::Tensor seeds = seeds_in.contiguous();
  const at::Tensor weights = weights_in.contiguous();
  if (image.numel() == 0) {
    return {at::zeros(image.sizes(), image.options()), at::zeros(seeds.sizes(), seeds.options()),
            at::zeros(weights.sizes(), weights.options())};
  }
  std::tuple<at::Tensor, at::Tensor, at::Tensor> grads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, image.scalar_type(), "reblur_backward_emulated", [&] {
    grads = reblur_kernels::run_backward<scalar_t, at::opmath_type<scalar_t>>(grad, image, seeds, weights, args,
                                                                              EmulatedLaunch{max_shared_bytes},
                                                                              index_limit);
  });
  // grad_seeds comes in the accumulation dtype; the CUDA op converts it the same way
  return {std::get<0>(grads), std::get<1>(grads).to(seeds.scalar_type()), std::get<2>(grads)};
}

// ---- sv_conv (also float16 and bfloat16, accumulated in float32, as on CUDA)

// sv_conv's and isotropic_kernels' index64 (tests only): the 64-bit index kernels, which the CUDA
// launchers take only for batch items too large for 32-bit offsets.
sv_conv_kernels::IndexWidth sv_conv_index_width(bool index64) {
  return index64 ? sv_conv_kernels::IndexWidth::kInt64 : sv_conv_kernels::IndexWidth::kFitting;
}

at::Tensor sv_conv_emulated(const at::Tensor& image_in, const at::Tensor& kernels_in, c10::string_view padding_mode,
                            bool index64, int64_t max_shared_bytes) {
  const SvConvArgs args = check_sv_conv(image_in, kernels_in, padding_mode);
  check_emulated_half_dtype(image_in, "image");
  const at::Tensor image = image_in.contiguous();
  const at::Tensor kernels = kernels_in.contiguous();
  at::Tensor out = at::empty(image.sizes(), image.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, image.scalar_type(), "sv_conv_emulated", [&] {
    sv_conv_kernels::run_forward<scalar_t, at::opmath_type<scalar_t>>(
        image, kernels, out, args, EmulatedLaunch{max_shared_bytes}, sv_conv_index_width(index64));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> sv_conv_backward_emulated(const at::Tensor& grad_in, const at::Tensor& image_in,
                                                             const at::Tensor& kernels_in,
                                                             c10::string_view padding_mode, bool index64,
                                                             int64_t max_shared_bytes) {
  const SvConvArgs args = check_sv_conv(image_in, kernels_in, padding_mode);
  check_emulated_half_dtype(image_in, "image");
  check_grad(grad_in, image_in, "grad");
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor image = image_in.contiguous();
  const at::Tensor kernels = kernels_in.contiguous();
  if (image.numel() == 0 || kernels.numel() == 0) {
    return {at::zeros(image.sizes(), image.options()), at::zeros(kernels.sizes(), kernels.options())};
  }
  at::Tensor grad_image = at::empty(image.sizes(), image.options());
  at::Tensor grad_kernels = at::empty(kernels.sizes(), kernels.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, image.scalar_type(), "sv_conv_backward_emulated", [&] {
    sv_conv_kernels::run_backward<scalar_t, at::opmath_type<scalar_t>>(grad, image, kernels, grad_image, grad_kernels,
                                                                       args, EmulatedLaunch{max_shared_bytes},
                                                                       sv_conv_index_width(index64));
  });
  return {grad_image, grad_kernels};
}

// ---- isotropic_kernels (also float16 and bfloat16, accumulated in float32, as on CUDA)

isotropic_device::IndexWidth isotropic_index_width(bool index64) {
  return index64 ? isotropic_device::IndexWidth::kInt64 : isotropic_device::IndexWidth::kFitting;
}

at::Tensor isotropic_kernels_emulated(const at::Tensor& seeds_in, c10::string_view support, bool index64) {
  const IsotropicKernelsArgs args = check_isotropic_kernels(seeds_in, support);
  check_emulated_half_dtype(seeds_in, "seeds");
  const at::Tensor seeds = seeds_in.contiguous();
  const int64_t batch = seeds.size(0), height = seeds.size(2), width = seeds.size(3);
  const int64_t size = 2 * args.radius + 1;
  at::Tensor kernels = at::empty({batch, size * size, height, width}, seeds.options());
  if (kernels.numel() == 0) return kernels;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, seeds.scalar_type(), "isotropic_kernels_emulated", [&] {
    isotropic_device::run_forward<scalar_t, at::opmath_type<scalar_t>>(seeds, kernels, args, EmulatedPixelLaunch{},
                                                                       isotropic_index_width(index64));
  });
  return kernels;
}

at::Tensor isotropic_kernels_backward_emulated(const at::Tensor& grad_in, const at::Tensor& seeds_in,
                                               c10::string_view support, bool index64) {
  const IsotropicKernelsArgs args = check_isotropic_kernels(seeds_in, support);
  check_emulated_half_dtype(seeds_in, "seeds");
  check_same_kind(grad_in, "grad", seeds_in, "seeds");
  const at::Tensor seeds = seeds_in.contiguous();
  const at::Tensor grad = grad_in.contiguous();
  if (seeds.numel() == 0) return at::empty(seeds.sizes(), seeds.options());
  at::Tensor grad_seeds;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, seeds.scalar_type(), "isotropic_kernels_backward_emulated",
                                  [&] {
                                    grad_seeds = isotropic_device::run_backward<scalar_t, at::opmath_type<scalar_t>>(
                                        grad, seeds, args, EmulatedPixelLaunch{}, isotropic_index_width(index64));
                                  });
  // the generic kernels accumulate in the accumulation dtype; the CUDA op converts the same way
  return grad_seeds.to(seeds.scalar_type());
}

// ---- flow_warp

// index64: the 64-bit index kernels, which the CUDA launcher takes only for tensors too large for
// 32-bit offsets (tests only).
flow_warp_kernels::IndexWidth index_width(bool index64) {
  return index64 ? flow_warp_kernels::IndexWidth::kInt64 : flow_warp_kernels::IndexWidth::kFitting;
}

at::Tensor flow_warp_emulated(const at::Tensor& image_in, const at::Tensor& flow_in, c10::string_view padding_mode,
                              bool index64) {
  const bool border = check_flow_warp(image_in, flow_in, padding_mode);
  check_cpu_dtype(image_in, "image");
  const at::Tensor image = image_in.contiguous();
  const at::Tensor flow = flow_in.contiguous();
  at::Tensor out = at::empty(image.sizes(), image.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(image.scalar_type(), "flow_warp_emulated", [&] {
    flow_warp_kernels::run_forward<scalar_t, scalar_t>(image, flow, out, border, EmulatedPixelLaunch{},
                                                       index_width(index64));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> flow_warp_backward_emulated(const at::Tensor& grad_in, const at::Tensor& image_in,
                                                               const at::Tensor& flow_in,
                                                               c10::string_view padding_mode, bool index64) {
  const bool border = check_flow_warp(image_in, flow_in, padding_mode);
  check_cpu_dtype(image_in, "image");
  check_grad(grad_in, image_in, "grad");
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor image = image_in.contiguous();
  const at::Tensor flow = flow_in.contiguous();
  if (image.numel() == 0) return {at::zeros(image.sizes(), image.options()), at::zeros(flow.sizes(), flow.options())};
  std::tuple<at::Tensor, at::Tensor> grads;
  AT_DISPATCH_FLOATING_TYPES(image.scalar_type(), "flow_warp_backward_emulated", [&] {
    grads = flow_warp_kernels::run_backward<scalar_t, scalar_t>(grad, image, flow, border, EmulatedPixelLaunch{},
                                                                index_width(index64));
  });
  return grads;
}

}  // namespace
}  // namespace jdrl

// Test-only operators: the schemas of torch.ops.jdrl_ext (forward and backward of each op).
TORCH_LIBRARY(jdrl_emulated, m) {
  // isotropic_kernels' and sv_conv's index64 (test-only): force the 64-bit index kernels; sv_conv's
  // max_shared_bytes (test-only): the device's opt-in shared memory per block (227 KB: H100)
  m.def("isotropic_kernels(Tensor seeds, *, str support=\"window\", bool index64=False) -> Tensor");
  m.def("_isotropic_kernels_backward(Tensor grad, Tensor seeds, str support, bool index64=False) -> Tensor");
  m.def(
      "sv_conv(Tensor image, Tensor kernels, *, str padding_mode=\"replicate\", bool index64=False, "
      "int max_shared_bytes=232448) -> Tensor");
  m.def(
      "_sv_conv_backward(Tensor grad, Tensor image, Tensor kernels, str padding_mode, bool index64=False, "
      "int max_shared_bytes=232448) -> (Tensor, Tensor)");
  // reblur's max_shared_bytes (test-only): the device's opt-in shared memory per block (227 KB: H100);
  // index_limit (test-only): the element count under which a launch indexes with 32 bits (2^31 - 1;
  // a smaller one cuts a small batch into several launches, or sends m = 8 to the generic kernels)
  m.def(
      "reblur(Tensor image, Tensor seeds, Tensor weights, *, str support=\"window\", "
      "str padding_mode=\"replicate\", int max_shared_bytes=232448, int index_limit=2147483647) -> Tensor");
  m.def(
      "_reblur_backward(Tensor grad, Tensor image, Tensor seeds, Tensor weights, str support, str padding_mode, "
      "int max_shared_bytes=232448, int index_limit=2147483647) -> (Tensor, Tensor, Tensor)");
  // flow_warp's index64 (test-only): force the 64-bit index kernels
  m.def("flow_warp(Tensor image, Tensor flow, *, str padding_mode=\"border\", bool index64=False) -> Tensor");
  m.def(
      "_flow_warp_backward(Tensor grad, Tensor image, Tensor flow, str padding_mode, bool index64=False) "
      "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(jdrl_emulated, CPU, m) {
  m.impl("isotropic_kernels", &jdrl::isotropic_kernels_emulated);
  m.impl("_isotropic_kernels_backward", &jdrl::isotropic_kernels_backward_emulated);
  m.impl("sv_conv", &jdrl::sv_conv_emulated);
  m.impl("_sv_conv_backward", &jdrl::sv_conv_backward_emulated);
  m.impl("reblur", &jdrl::reblur_emulated);
  m.impl("_reblur_backward", &jdrl::reblur_backward_emulated);
  m.impl("flow_warp", &jdrl::flow_warp_emulated);
  m.impl("_flow_warp_backward", &jdrl::flow_warp_backward_emulated);
}
