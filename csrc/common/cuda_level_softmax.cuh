// The per-pixel softmax of one blur level on the GPU, for the CUDA kernels of reblur (every level of
// a pixel's radial kernel) and isotropic_kernels (its one level): the level's seeds read once (into
// registers where the level count is a compile-time constant), each orbit's logit from the polar
// interpolation of common/pixel_math.h (orbit_polar, whose fields fold to constants for a
// compile-time orbit), and the softmax as k(o) = exp2(z(o) - bias) with logits in log2 units and
// bias = max + log2(sum), so that float32 uses the hardware's ex2/lg2; float64 keeps base e
// (exp and log on the logits as they are, as the CPU computes them). What is computed is SPEC
// section 2's level softmax, as the CPU's level_tap_weights computes it.
#pragma once

#include <cmath>
#include <type_traits>

#include "common/cuda_kernel_support.cuh"
#include "common/pixel_math.h"

namespace jdrl {
namespace cuda {

// The softmax's exponential and logarithm: base 2 in float32 (the hardware's ex2 and lg2, on logits
// scaled by log2(e): kLogitScale), base e in float64 (exp, log; scale 1).
// log2 on the GPU: the bare lg2.approx.ftz (one MUFU.LG2) instead of log2f's ~20 instructions;
// its argument, a level's softmax sum, is >= 1. On the host (the emulation), log2f.
JDRL_HD float softmax_log(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return log2f(x);
#endif
}
JDRL_HD double softmax_log(double x) { return log(x); }
// On the GPU, the bare ex2.approx.ftz (one MUFU.EX2): exp2f adds a compare and two predicated
// multiplies per call to return subnormal results, three of ~10 instructions per orbit in a softmax
// pass (SASS, sm_90). Flushed to 0 are weights below 2^-126 of a level whose largest weight is
// >= 1 / 225: nothing the sums can see. On the host (the emulation), exp2f.
JDRL_HD float softmax_pow(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return exp2f(x);
#endif
}
JDRL_HD double softmax_pow(double x) { return exp(x); }

template <typename acc_t>
constexpr acc_t kLogitScale = sizeof(acc_t) == sizeof(float) ? acc_t(1.4426950408889634073599246810019) : acc_t(1);

// The seeds of one pixel, read as logits in the softmax's units: seed(s) = kLogitScale * seeds[s].
template <typename scalar_t, typename acc_t, typename index_t>
struct PixelSeeds {
  const scalar_t* __restrict__ pixel;  // seeds[b, 0, y, x]
  index_t plane;
  __device__ __forceinline__ acc_t operator()(int s) const {
    return kLogitScale<acc_t> * static_cast<acc_t>(pixel[static_cast<index_t>(s) * plane]);
  }
};

// The seeds of level `radius` of one pixel, s = 0..radius (its first seed is seed_offset(radius)):
// in the specialized kernels, read once into registers (s is a compile-time constant wherever the
// level's orbits are unrolled); in the generic ones, read from the pixel's seeds where needed.
//
// Each pass over a level's orbits computes their logits anew from the seeds: `forget()`, an empty
// asm statement that claims to change the seed registers, keeps the compiler from reusing the
// logits (and exponentials) of the previous pass instead, which would hold up to 36 more registers.
template <typename acc_t, int kLevels>
struct LevelSeedRegisters {
  acc_t values[kLevels];
  __device__ __forceinline__ acc_t operator()(int s) const { return values[s]; }
  __device__ __forceinline__ void forget() {
#if defined(__CUDA_ARCH__)
    JDRL_UNROLL
    for (int s = 0; s < kLevels; ++s) {
      if constexpr (sizeof(acc_t) == 8) {
        asm volatile("" : "+d"(values[s]));
      } else {
        asm volatile("" : "+f"(values[s]));
      }
    }
#endif
  }
};

template <typename Seeds>
struct LevelSeedView {
  const Seeds& seed;
  int first;
  __device__ __forceinline__ auto operator()(int s) const { return seed(first + s); }
  __device__ __forceinline__ void forget() {}
};

// `first`: the level's first seed among the pixel's seeds (seed_offset(radius) in reblur's packed layout,
// 0 for isotropic_kernels, whose seeds are one level's).
template <typename acc_t, int kLevels, typename Seeds>
__device__ __forceinline__ auto level_seeds(const Seeds& seed, int radius, int first) {
  if constexpr (kLevels > 0) {
    LevelSeedRegisters<acc_t, kLevels> level;
    JDRL_UNROLL
    for (int s = 0; s < kLevels; ++s) level.values[s] = s <= radius ? seed(first + s) : acc_t(0);
    return level;
  } else {
    return LevelSeedView<Seeds>{seed, first};
  }
}

// Logit of orbit `polar` at level `radius` in the softmax's units (`level`: the level's seeds), and whether
// the orbit takes part in the level's softmax (a corner under "disk" does not).
template <typename acc_t, typename Level>
__device__ __forceinline__ bool level_logit(const Level& level, int radius, bool disk, const OrbitPolar<acc_t>& polar,
                                            acc_t* logit) {
  if (polar.squared <= radius * radius) {
    const acc_t lower = level(polar.lower);
    // f == 0 reads a_l alone (0 * inf would be NaN)
    *logit = polar.frac == acc_t(0) ? lower : (acc_t(1) - polar.frac) * lower + polar.frac * level(polar.upper);
    return true;
  }
  *logit = acc_t(0);  // window support: the corners keep logit 0
  return !disk;
}

// bias = max + log2(sum of the level's exponentials): k(o) = exp2(z(o) - bias) (float64: log and
// exp). In the specialized kernels (kLevels > 0) the max is taken over the level's seeds, not its
// orbits' logits, and is the same number: seed a_l is itself the logit of orbit (l, 0) (rho = l
// exactly), every other inside logit lies between two seeds, and under "window" the corners (orbit
// (r, r) is one for every r >= 1) add the logit 0; radius 0 has no corner. This saves a pass over
// the orbits (up to 36 logits) per level. An interpolated logit can round an ulp of itself above
// its seeds: its exponential is then exp2(ulp), 1 + 1e-5 for logits near 100, at most 2 below 2^24
// (seeds below ~1.2e7, where float32 interpolation is that coarse on the CPU as well); from 2^30
// (seeds of ~7e8) the sum could overflow and the level drop out where the CPU stays finite. A NaN
// logit makes the sum NaN, and so the bias (a NaN or infinite seed: the max as well, inf - inf), so
// the level's kernel is NaN, as on the CPU.
template <typename acc_t, int kLevels, typename Level>
__device__ __forceinline__ acc_t level_bias(Level& level, int radius, bool disk) {
  acc_t max_logit = level(0);
  if constexpr (kLevels > 0) {
    if (!disk && radius >= 1) max_logit = nan_max(max_logit, acc_t(0));  // the window's corners
    JDRL_UNROLL
    for (int s = 1; s < kLevels; ++s) {
      if (s > radius) break;
      max_logit = nan_max(max_logit, level(s));
    }
  } else {
    // The generic kernels (seeds read from memory) keep the pass over the orbits' logits: with the
    // seeds' max, reblur's generic parameter backward spilled (8 bytes in float16, 44 in float64;
    // ptxas, sm_90), and they are not the kernels that speed is measured on.
    for (int a = 0; a <= radius; ++a) {
      JDRL_UNROLL
      for (int b = 0; b <= a; ++b) {
        acc_t z;
        if (level_logit(level, radius, disk, orbit_polar<acc_t>(a, b), &z)) max_logit = nan_max(max_logit, z);
      }
    }
  }
  acc_t sum = 0;
  JDRL_UNROLL
  for (int a = 0; a <= (kLevels > 0 ? kLevels - 1 : radius); ++a) {
    if (a > radius) break;
    JDRL_UNROLL
    for (int b = 0; b <= a; ++b) {
      const OrbitPolar<acc_t> polar = orbit_polar<acc_t>(a, b);
      acc_t z;
      if (level_logit(level, radius, disk, polar, &z)) sum += polar.size * softmax_pow(z - max_logit);
    }
  }
  level.forget();
  return max_logit + softmax_log(sum);
}

// f(r) for the level radius r in 1..kMaxRadius, with r a compile-time constant in each call
// (std::integral_constant): in a rolled loop over a pixel's levels, each level's orbit loops then
// compile for their own radius, with no per-orbit test of whether the orbit lies inside the level's
// window or disk and the corners' constant logit folded (kMaxRadius = 0: no call).
template <int kMaxRadius, typename F>
__device__ __forceinline__ void with_constant_radius(int radius, F&& f) {
  if constexpr (kMaxRadius >= 1) {
    if (radius == kMaxRadius) {
      f(std::integral_constant<int, kMaxRadius>{});
    } else {
      with_constant_radius<kMaxRadius - 1>(radius, f);
    }
  }
}

// One orbit's share of a level's seed gradient, in the one-pass form of the specialized backward
// kernels (reblur's param_backward_kernel, isotropic_kernels' backward_kernel): with c(o, s) the
// share of seed s in the logit of orbit o ((1 - f, f) at (l, l + 1), or 1 at l), they sum
// weighted[s] += c(o, s) k(o) g(o) (kg) and sized[s] += c(o, s) |o| k(o) (ks) over the level's inside
// orbits, then d/da_s = weighted[s] - (sum_o k(o) g(o)) sized[s] (times the level's weight in reblur).
template <typename acc_t>
__device__ __forceinline__ void add_orbit_seed_shares(const OrbitPolar<acc_t>& polar, acc_t kg, acc_t ks,
                                                      acc_t* weighted, acc_t* sized) {
  if (polar.frac == acc_t(0)) {  // a rim orbit reads a_l alone
    weighted[polar.lower] += kg;
    sized[polar.lower] += ks;
  } else {
    weighted[polar.lower] += (acc_t(1) - polar.frac) * kg;
    sized[polar.lower] += (acc_t(1) - polar.frac) * ks;
    weighted[polar.upper] += polar.frac * kg;
    sized[polar.upper] += polar.frac * ks;
  }
}


}  // namespace cuda
}  // namespace jdrl
