// The CUDA kernels of isotropic_kernels (SPEC section 2) and their launch, compiled by nvcc for the
// device (isotropic_kernels_cuda.cu) and by the host compiler under common/cuda_host_emulation.h
// (csrc/emulation), which runs them in the tests.
//
// One thread per pixel: blockIdx.x * 256 + threadIdx.x is the pixel of a plane (no division), and
// blockIdx.z runs over the batch (a block loops over b when B > 65535), each batch item's base offset
// computed once, in 64 bits. A pixel's level softmax is common/cuda_level_softmax.cuh's, as in reblur:
// the seeds read once (registers for R = 7), the bias max + log2(sum) computed once per pixel, each
// orbit's k(o) = exp2(z(o) - bias) once (float64: base e), then stored into the planes of its 1, 4
// or 8 taps (consecutive threads, consecutive pixels of a plane: coalesced stores). The orbits' polar
// positions come from common/pixel_math.h's orbit_polar where they are used (constants for a
// compile-time radius): no orbit table, no scratch.
//
// Three variants of each kernel: R = 7 (K = 15, the method's case) known at compile time with 32-bit
// offsets (kRadius = 7, int32_t); any R with 32-bit offsets (kRadius = 0, int32_t); any R with 64-bit
// offsets, for an item of more than 2^31 - 1 elements (kRadius = 0, int64_t).
//
// Backward, per pixel: g(o), the output gradient summed over orbit o's taps, then the softmax backward
//   d/da_s = sum_o c(o, s) k(o) (g(o) - |o| G),  G = sum_o k(o) g(o),
// with c(o, s) the share of seed s in the logit of o ((1 - f, f) at (l, l + 1), or 1 at l). R = 7 in
// one pass over the orbits, d/da_s = sum_o c(o, s) k(o) g(o) - G sum_o c(o, s) |o| k(o), with the
// 2 x 8 sums in registers and each seed gradient stored once in the data type; any R in two passes
// (G, then each orbit's d/dz sent to its seeds), accumulated in a float32 (float64) tensor.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "common/cuda_kernel_support.cuh"
#include "common/cuda_level_softmax.cuh"
#include "common/pixel_math.h"
#include "isotropic_kernels/isotropic_kernels.h"

namespace jdrl {
namespace isotropic_device {

constexpr int kThreads = 256;
// Blocks of kThreads that a streaming multiprocessor should hold at once: 4 x 256 threads = 50% of
// its 2048, which caps the kernels at 64 registers per thread (65536 / (4 x 256)), as reblur's and
// sv_conv's. Without a minimum, ptxas gave the generic float64 backward 40 registers and spilled.
constexpr int kMinBlocks = 4;
// The specialization is for float accumulation (float32, float16, bfloat16); float64 takes the generic
// kernels at every R (in doubles the R = 7 kernels spilled at 64 registers, sm_90).
template <typename acc_t>
constexpr bool kSpecializes = sizeof(acc_t) == sizeof(float);
constexpr int kSpecializedRadius = 7;  // R of the compile-time specialization (K = 15)
constexpr unsigned int kMaxGridZ = 65535;

// The level arrays of a kernel: registers of R + 1 = 8 values for kRadius = 7, runtime (0) otherwise.
constexpr int level_count(int radius_or_zero) { return radius_or_zero > 0 ? radius_or_zero + 1 : 0; }

// Where the seed gradients go: straight in the data type for the specialized kernels (summed in
// registers, stored once), in the accumulation type for the generic ones (summed in place).
template <typename scalar_t, typename acc_t, int kRadius>
using grad_seed_t = std::conditional_t<(kRadius > 0), scalar_t, acc_t>;

// Calls visit(k, plane) for each orbit o = (a, b) of a kernel of radius R, with k the orbit's
// per-tap softmax weight and plane the tap plane of each of its offsets; `level`: the pixel's seeds.
// A corner under "disk" gets weight 0, or NaN where the pixel's softmax is NaN (as on the CPU, where
// the corners' 0 is multiplied by the level's inverse sum).
template <typename acc_t, int kRadius, typename Level, typename Visit>
__device__ __forceinline__ void for_each_orbit(const Level& level, int radius, bool disk, acc_t bias, Visit&& visit) {
  const int size = 2 * radius + 1;
  const acc_t zero_or_nan = bias - bias;
  JDRL_UNROLL
  for (int a = 0; a <= (kRadius > 0 ? kRadius : radius); ++a) {
    JDRL_UNROLL
    for (int b = 0; b <= a; ++b) {
      const OrbitPolar<acc_t> polar = orbit_polar<acc_t>(a, b);
      acc_t z;
      const acc_t k = cuda::level_logit(level, radius, disk, polar, &z) ? cuda::softmax_pow(z - bias) : zero_or_nan;
      visit(a, b, polar, k, size);
    }
  }
}

// The tap planes of orbit (a, b): visit(plane) for each of its offsets d, plane t(d) = (dy + R) K + (dx + R).
template <typename Visit>
__device__ __forceinline__ void for_each_tap(int a, int b, int radius, int size, Visit&& visit) {
  const int count = orbit_size(a, b);
  JDRL_UNROLL
  for (int k = 0; k < 8; ++k) {
    if (k >= count) break;
    int dy, dx;
    orbit_offset(a, b, k, &dy, &dx);
    visit((dy + radius) * size + (dx + radius));
  }
}

template <typename scalar_t, typename acc_t, typename index_t, int kRadius>
__global__ void __launch_bounds__(kThreads, kMinBlocks) forward_kernel(const scalar_t* __restrict__ seeds,
                                                           scalar_t* __restrict__ kernels, int64_t batch,
                                                           index_t plane, int radius_arg, bool disk) {
  const int radius = kRadius > 0 ? kRadius : radius_arg;
  const index_t pixel = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (pixel >= plane) return;
  const int64_t seed_stride = static_cast<int64_t>(radius + 1) * plane;
  const int64_t kernel_stride = static_cast<int64_t>(2 * radius + 1) * (2 * radius + 1) * plane;
  for (int64_t item = blockIdx.z; item < batch; item += gridDim.z) {
    const cuda::PixelSeeds<scalar_t, acc_t, index_t> seed{seeds + item * seed_stride + pixel, plane};
    scalar_t* __restrict__ out = kernels + item * kernel_stride + pixel;
    auto level = cuda::level_seeds<acc_t, level_count(kRadius)>(seed, radius, 0);
    const acc_t bias = cuda::level_bias<acc_t, level_count(kRadius)>(level, radius, disk);
    for_each_orbit<acc_t, kRadius>(level, radius, disk, bias,
                                   [&](int a, int b, const OrbitPolar<acc_t>&, acc_t k, int size) {
                                     const scalar_t value = static_cast<scalar_t>(k);
                                     for_each_tap(a, b, radius, size, [&](int tap) {
                                       out[static_cast<index_t>(tap) * plane] = value;
                                     });
                                   });
  }
}

// grad_seeds: grad_seed_t (the data type for kRadius = 7, the accumulation type otherwise).
template <typename scalar_t, typename acc_t, typename index_t, int kRadius>
__global__ void __launch_bounds__(kThreads, kMinBlocks) backward_kernel(const scalar_t* __restrict__ grad,
                                                            const scalar_t* __restrict__ seeds,
                                                            grad_seed_t<scalar_t, acc_t, kRadius>* __restrict__ grad_seeds,
                                                            int64_t batch, index_t plane, int radius_arg, bool disk) {
  const int radius = kRadius > 0 ? kRadius : radius_arg;
  const index_t pixel = static_cast<index_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (pixel >= plane) return;
  const int64_t seed_stride = static_cast<int64_t>(radius + 1) * plane;
  const int64_t kernel_stride = static_cast<int64_t>(2 * radius + 1) * (2 * radius + 1) * plane;
  for (int64_t item = blockIdx.z; item < batch; item += gridDim.z) {
    const cuda::PixelSeeds<scalar_t, acc_t, index_t> seed{seeds + item * seed_stride + pixel, plane};
    const scalar_t* __restrict__ pixel_grad = grad + item * kernel_stride + pixel;
    auto* __restrict__ out = grad_seeds + item * seed_stride + pixel;
    auto level = cuda::level_seeds<acc_t, level_count(kRadius)>(seed, radius, 0);
    const acc_t bias = cuda::level_bias<acc_t, level_count(kRadius)>(level, radius, disk);
    // g(o): every tap is read (a NaN gradient on a corner under "disk" reaches G, as on the CPU). The
    // loop over the orbit's taps stays rolled: unrolled, the compiler issued the loads of many orbits
    // ahead, and they spilled.
    const auto orbit_grad = [&](int a, int b, int size) {
      acc_t total = 0;
      const int count = orbit_size(a, b);
      JDRL_NO_UNROLL
      for (int k = 0; k < count; ++k) {
        int dy, dx;
        orbit_offset(a, b, k, &dy, &dx);
        total += static_cast<acc_t>(pixel_grad[static_cast<index_t>((dy + radius) * size + (dx + radius)) * plane]);
      }
      return total;
    };
    acc_t grad_weight = 0;  // G
    if constexpr (kRadius > 0) {
      acc_t weighted[kRadius + 1], sized[kRadius + 1];  // sum_o c(o, s) k(o) g(o) and sum_o c(o, s) |o| k(o)
      JDRL_UNROLL
      for (int s = 0; s <= kRadius; ++s) weighted[s] = sized[s] = acc_t(0);
      for_each_orbit<acc_t, kRadius>(level, radius, disk, bias,
                                     [&](int a, int b, const OrbitPolar<acc_t>& polar, acc_t k, int size) {
                                       const acc_t kg = k * orbit_grad(a, b, size);
                                       grad_weight += kg;
                                       if (polar.squared > radius * radius) return;  // corner logits are constant
                                       cuda::add_orbit_seed_shares(polar, kg, polar.size * k, weighted, sized);
                                     });
      JDRL_UNROLL
      for (int s = 0; s <= kRadius; ++s) {
        out[static_cast<index_t>(s) * plane] = static_cast<scalar_t>(weighted[s] - grad_weight * sized[s]);
      }
    } else {
      for_each_orbit<acc_t, kRadius>(level, radius, disk, bias,
                                     [&](int a, int b, const OrbitPolar<acc_t>&, acc_t k, int size) {
                                       grad_weight += k * orbit_grad(a, b, size);
                                     });
      for (int s = 0; s <= radius; ++s) out[static_cast<index_t>(s) * plane] = acc_t(0);
      // d/dz(o) = k(o) (g(o) - |o| G), sent to the seeds a_l, a_{l+1} of the inside orbits
      for_each_orbit<acc_t, kRadius>(level, radius, disk, bias,
                                     [&](int a, int b, const OrbitPolar<acc_t>& polar, acc_t k, int size) {
                                       if (polar.squared > radius * radius) return;  // corner logits are constant
                                       const acc_t dz = k * (orbit_grad(a, b, size) - polar.size * grad_weight);
                                       acc_t& lower = out[static_cast<index_t>(polar.lower) * plane];
                                       if (polar.frac == acc_t(0)) {
                                         lower += dz;
                                       } else {
                                         lower += (acc_t(1) - polar.frac) * dz;
                                         out[static_cast<index_t>(polar.upper) * plane] += polar.frac * dz;
                                       }
                                     });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side, shared by the CUDA launcher (isotropic_kernels_cuda.cu) and the emulation
// (csrc/emulation): the grid, the choice of kernel and its arguments. `launch(kernel, pixel_grid,
// args...)` runs one kernel (cuda::StreamPixelLaunch); the tensors are contiguous, on the launcher's
// device, and not empty.

// Which index type a launch uses: int32_t where it fits, else int64_t; kInt64 forces the 64-bit
// kernels (the emulated tests, to cover them at small sizes).
enum class IndexWidth { kFitting, kInt64 };

struct Variant {
  cuda::PixelGrid grid;
  bool index32;      // every offset inside a batch item fits int32_t
  bool specialized;  // R = 7, float accumulation and index32
};

inline Variant variant_for(int64_t batch, int64_t height, int64_t width, int radius, size_t accumulate_bytes,
                           IndexWidth width_kind) {
  const int64_t plane = height * width;
  const int64_t taps = static_cast<int64_t>(2 * radius + 1) * (2 * radius + 1);
  Variant v;
  v.grid = {dim3(static_cast<unsigned int>((plane + kThreads - 1) / kThreads), 1,
                 static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(batch, kMaxGridZ)))),
            dim3(kThreads)};
  // the largest item offset is below taps * plane (the kernels and their gradient); the thread's
  // pixel below plane + kThreads
  v.index32 = width_kind == IndexWidth::kFitting && taps * plane < std::numeric_limits<int32_t>::max() - kThreads;
  v.specialized = v.index32 && radius == kSpecializedRadius && accumulate_bytes == sizeof(float);
  return v;
}

// Writes every element of `kernels`, (B, K*K, H, W).
template <typename scalar_t, typename acc_t, typename Launch>
void run_forward(const at::Tensor& seeds, const at::Tensor& kernels, const IsotropicKernelsArgs& args, Launch&& launch,
                 IndexWidth width_kind = IndexWidth::kFitting) {
  const int64_t batch = seeds.size(0), plane = seeds.size(2) * seeds.size(3);
  const Variant v = variant_for(batch, seeds.size(2), seeds.size(3), args.radius, sizeof(acc_t), width_kind);
  const scalar_t* seeds_ptr = seeds.data_ptr<scalar_t>();
  scalar_t* kernels_ptr = kernels.data_ptr<scalar_t>();
  if constexpr (kSpecializes<acc_t>) {
    if (v.specialized) {
      launch(&forward_kernel<scalar_t, acc_t, int32_t, kSpecializedRadius>, v.grid, seeds_ptr, kernels_ptr, batch,
             static_cast<int32_t>(plane), args.radius, args.disk);
      return;
    }
  }
  if (v.index32) {
    launch(&forward_kernel<scalar_t, acc_t, int32_t, 0>, v.grid, seeds_ptr, kernels_ptr, batch,
           static_cast<int32_t>(plane), args.radius, args.disk);
  } else {
    launch(&forward_kernel<scalar_t, acc_t, int64_t, 0>, v.grid, seeds_ptr, kernels_ptr, batch, plane, args.radius,
           args.disk);
  }
}

// Returns the seed gradient (the shape of seeds), in scalar_t or in acc_t (the caller converts it).
template <typename scalar_t, typename acc_t, typename Launch>
at::Tensor run_backward(const at::Tensor& grad, const at::Tensor& seeds, const IsotropicKernelsArgs& args,
                        Launch&& launch, IndexWidth width_kind = IndexWidth::kFitting) {
  const int64_t batch = seeds.size(0), plane = seeds.size(2) * seeds.size(3);
  const Variant v = variant_for(batch, seeds.size(2), seeds.size(3), args.radius, sizeof(acc_t), width_kind);
  const scalar_t* grad_ptr = grad.data_ptr<scalar_t>();
  const scalar_t* seeds_ptr = seeds.data_ptr<scalar_t>();
  if constexpr (kSpecializes<acc_t>) {
    if (v.specialized) {
      at::Tensor grad_seeds = at::empty(seeds.sizes(), seeds.options());
      launch(&backward_kernel<scalar_t, acc_t, int32_t, kSpecializedRadius>, v.grid, grad_ptr, seeds_ptr,
             grad_seeds.data_ptr<scalar_t>(), batch, static_cast<int32_t>(plane), args.radius, args.disk);
      return grad_seeds;
    }
  }
  at::Tensor grad_seeds = at::empty(seeds.sizes(), seeds.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  if (v.index32) {
    launch(&backward_kernel<scalar_t, acc_t, int32_t, 0>, v.grid, grad_ptr, seeds_ptr, grad_seeds.data_ptr<acc_t>(),
           batch, static_cast<int32_t>(plane), args.radius, args.disk);
  } else {
    launch(&backward_kernel<scalar_t, acc_t, int64_t, 0>, v.grid, grad_ptr, seeds_ptr, grad_seeds.data_ptr<acc_t>(),
           batch, plane, args.radius, args.disk);
  }
  return grad_seeds;
}

}  // namespace isotropic_device
}  // namespace jdrl
