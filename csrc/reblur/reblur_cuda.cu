// reblur on CUDA, fused (SPEC section 4). One thread per pixel builds the pixel's radial kernel over
// the m(m+1)/2 orbits with radial_kernel of common/pixel_math.h (what the CPU kernel calls, with the
// same table of the orbits' polar positions) and applies it at once; the per-level kernels are
// never stored. A thread's radial kernel and softmax values (m(m+1)/2 each, m known at run time
// only) live in its slot of a scratch tensor: one slot per resident thread, reused along the
// grid-stride loop, so the forward pass's scratch does not grow with the image.
//
// Backward, without atomics:
//   pass A, per pixel p: orbit_grad(o) = sum_c grad[c, p] * S_o[c, p] into the thread's slot, then
//     the seed and weight gradients of p and its radial kernel Wt(p) (radial_kernel_backward),
//     Wt into a (B, m(m+1)/2, H, W) scratch (36 planes for m = 8): pass B reads the neighbours';
//   pass B, per pixel q: the image gradient, gathered from the neighbours' Wt.
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
#include "common/cuda_orbit_table.cuh"
#include "common/gather_conv.h"
#include "common/pixel_math.h"
#include "reblur/reblur.h"

namespace jdrl {
namespace {

template <typename scalar_t, typename acc_t>
__global__ void reblur_forward_kernel(const scalar_t* __restrict__ image, const scalar_t* __restrict__ seeds,
                                      const scalar_t* __restrict__ weights, const OrbitPolar<acc_t>* __restrict__ table,
                                      acc_t* __restrict__ slot_scratch, scalar_t* __restrict__ out, int64_t batch,
                                      int64_t channels, int64_t height, int64_t width, int levels, bool disk,
                                      bool replicate) {
  const int64_t plane = height * width;
  const int64_t seed_count = seed_channels(levels);
  const int64_t orbits = orbit_count(levels);
  // The thread's k-th array of orbit values: slot_scratch[(k * orbits + o) * slots + slot].
  const int64_t slots = cuda::slot_count();
  acc_t* probs = slot_scratch + cuda::thread_slot();
  acc_t* orbit_weights = probs + orbits * slots;
  JDRL_GRID_STRIDE_LOOP(index, batch * plane) {
    const int64_t b = index / plane, pixel = index - b * plane;
    const int64_t y = pixel / width, x = pixel - y * width;
    acc_t pixel_scratch[2];  // the span-1 scratch of radial_kernel
    radial_kernel<scalar_t, acc_t>(seeds + b * seed_count * plane + pixel, plane, weights + b * levels * plane + pixel,
                                   plane, 1, levels, disk, table, probs, slots, pixel_scratch, orbit_weights, slots);
    gather::apply_orbits_pixel<scalar_t, acc_t>(image + b * channels * plane, orbit_weights, slots,
                                                out + b * channels * plane, channels, height, width, y, x, levels,
                                                replicate);
  }
}

// Pass A. grad_seeds is in acc_t (a float32 scratch tensor for float16/bfloat16 inputs).
template <typename scalar_t, typename acc_t>
__global__ void reblur_param_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ image,
                                             const scalar_t* __restrict__ seeds, const scalar_t* __restrict__ weights,
                                             const OrbitPolar<acc_t>* __restrict__ table,
                                             acc_t* __restrict__ slot_scratch, acc_t* __restrict__ orbit_weights,
                                             acc_t* __restrict__ grad_seeds, scalar_t* __restrict__ grad_weights,
                                             int64_t batch, int64_t channels, int64_t height, int64_t width, int levels,
                                             bool disk, bool replicate) {
  const int64_t plane = height * width;
  const int64_t seed_count = seed_channels(levels);
  const int64_t orbits = orbit_count(levels);
  // The thread's k-th array of orbit values: slot_scratch[(k * orbits + o) * slots + slot].
  const int64_t slots = cuda::slot_count();
  acc_t* orbit_grad = slot_scratch + cuda::thread_slot();
  acc_t* probs = orbit_grad + orbits * slots;
  JDRL_GRID_STRIDE_LOOP(index, batch * plane) {
    const int64_t b = index / plane, pixel = index - b * plane;
    const int64_t y = pixel / width, x = pixel - y * width;
    const int64_t seed_base = b * seed_count * plane + pixel;
    const int64_t weight_base = b * levels * plane + pixel;
    gather::correlate_orbits_pixel<scalar_t, acc_t>(image + b * channels * plane, grad + b * channels * plane,
                                                    orbit_grad, slots, channels, height, width, y, x, levels,
                                                    replicate);
    acc_t pixel_scratch[3];  // the span-1 scratch of radial_kernel_backward
    radial_kernel_backward<scalar_t, acc_t>(orbit_grad, slots, seeds + seed_base, plane, weights + weight_base, plane,
                                            1, levels, disk, table, probs, slots, pixel_scratch,
                                            grad_seeds + seed_base, grad_weights + weight_base,
                                            orbit_weights + b * orbits * plane + pixel, plane);
  }
}

// Pass B: the image gradient, gathered from the neighbours' radial kernels (written by pass A).
template <typename scalar_t, typename acc_t>
__global__ void reblur_image_backward_kernel(const scalar_t* __restrict__ grad, const acc_t* __restrict__ orbit_weights,
                                             scalar_t* __restrict__ grad_image, int64_t batch, int64_t channels,
                                             int64_t height, int64_t width, int levels, bool replicate) {
  const int64_t plane = height * width;
  const int64_t orbits = orbit_count(levels);
  JDRL_GRID_STRIDE_LOOP(index, batch * plane) {
    const int64_t b = index / plane, pixel = index - b * plane;
    const int64_t y = pixel / width, x = pixel - y * width;
    gather::transposed_planes_pixel<scalar_t, acc_t, acc_t>(
        grad + b * channels * plane, orbit_weights + b * orbits * plane, grad_image + b * channels * plane, channels,
        height, width, y, x, levels - 1, replicate, gather::OrbitIndex{});
  }
}

at::Tensor reblur_cuda(const at::Tensor& image_in, const at::Tensor& seeds_in, const at::Tensor& weights_in,
                       c10::string_view support, c10::string_view padding_mode) {
  const ReblurArgs args = check_reblur(image_in, seeds_in, weights_in, support, padding_mode);
  const c10::cuda::CUDAGuard device_guard(image_in.device());
  const at::Tensor image = image_in.contiguous();
  const at::Tensor seeds = seeds_in.contiguous();
  const at::Tensor weights = weights_in.contiguous();
  at::Tensor out = at::empty(image.sizes(), image.options());
  if (out.numel() == 0) return out;
  const int64_t batch = image.size(0), channels = image.size(1), height = image.size(2), width = image.size(3);
  const int64_t orbits = orbit_count(args.levels);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, image.scalar_type(), "reblur_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto kernel = reblur_forward_kernel<scalar_t, acc_t>;
        const unsigned int blocks = cuda::resident_blocks_for(kernel, batch * height * width);
        // Two arrays of orbit values per thread slot: the softmax values of a level and the radial kernel.
        const at::Tensor slot_scratch = at::empty({2 * orbits * static_cast<int64_t>(blocks) * cuda::kThreadsPerBlock},
                                                  image.options().dtype(cuda::accumulate_dtype(image.scalar_type())));
        const at::Tensor table = cuda::orbit_table_on_device<acc_t>(args.levels, image, stream);
        kernel<<<blocks, cuda::kThreadsPerBlock, 0, stream>>>(
            image.data_ptr<scalar_t>(), seeds.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(),
            cuda::table_pointer<acc_t>(table), slot_scratch.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), batch, channels,
            height, width, args.levels, args.disk, args.replicate);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> reblur_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& image_in, const at::Tensor& seeds_in, const at::Tensor& weights_in,
    c10::string_view support, c10::string_view padding_mode) {
  const ReblurArgs args = check_reblur(image_in, seeds_in, weights_in, support, padding_mode);
  check_grad(grad_in, image_in, "grad");
  const c10::cuda::CUDAGuard device_guard(image_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor image = image_in.contiguous();
  const at::Tensor seeds = seeds_in.contiguous();
  const at::Tensor weights = weights_in.contiguous();
  if (image.numel() == 0) {
    return {at::zeros(image.sizes(), image.options()), at::zeros(seeds.sizes(), seeds.options()),
            at::zeros(weights.sizes(), weights.options())};
  }
  const int64_t batch = image.size(0), channels = image.size(1), height = image.size(2), width = image.size(3);
  const at::ScalarType acc_dtype = cuda::accumulate_dtype(image.scalar_type());
  // Every element of these is written by the kernels.
  at::Tensor grad_image = at::empty(image.sizes(), image.options());
  at::Tensor grad_seeds = at::empty(seeds.sizes(), seeds.options().dtype(acc_dtype));
  at::Tensor grad_weights = at::empty(weights.sizes(), weights.options());
  const int64_t orbits = orbit_count(args.levels);
  at::Tensor orbit_weights = at::empty({batch, orbits, height, width}, image.options().dtype(acc_dtype));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, image.scalar_type(), "reblur_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto param_kernel = reblur_param_backward_kernel<scalar_t, acc_t>;
        const unsigned int param_blocks = cuda::resident_blocks_for(param_kernel, batch * height * width);
        // Two arrays of orbit values per thread slot: orbit_grad and the softmax values of a level.
        const at::Tensor slot_scratch =
            at::empty({2 * orbits * static_cast<int64_t>(param_blocks) * cuda::kThreadsPerBlock},
                      image.options().dtype(acc_dtype));
        const at::Tensor table = cuda::orbit_table_on_device<acc_t>(args.levels, image, stream);
        param_kernel<<<param_blocks, cuda::kThreadsPerBlock, 0, stream>>>(
            grad.data_ptr<scalar_t>(), image.data_ptr<scalar_t>(), seeds.data_ptr<scalar_t>(),
            weights.data_ptr<scalar_t>(), cuda::table_pointer<acc_t>(table), slot_scratch.data_ptr<acc_t>(),
            orbit_weights.data_ptr<acc_t>(), grad_seeds.data_ptr<acc_t>(), grad_weights.data_ptr<scalar_t>(), batch,
            channels, height, width, args.levels, args.disk, args.replicate);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        reblur_image_backward_kernel<scalar_t, acc_t>
            <<<cuda::blocks_for(batch * height * width), cuda::kThreadsPerBlock, 0, stream>>>(
                grad.data_ptr<scalar_t>(), orbit_weights.data_ptr<acc_t>(), grad_image.data_ptr<scalar_t>(), batch,
                channels, height, width, args.levels, args.replicate);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {grad_image, cuda::in_dtype(grad_seeds, seeds.scalar_type()), grad_weights};
}

}  // namespace
}  // namespace jdrl

TORCH_LIBRARY_IMPL(jdrl_ext, CUDA, m) {
  m.impl("reblur", &jdrl::reblur_cuda);
  m.impl("_reblur_backward", &jdrl::reblur_backward_cuda);
}
