// Per-pixel arithmetic shared by the CPU and the CUDA kernels.
//
// Everything here is a small inline function that compiles for the host and, under nvcc, for the
// device. The CPU kernels and the CUDA kernels call the same functions (the orbits and their polar
// interpolation, the NaN rules, the border folding, the bilinear taps), so the CPU tests exercise
// the arithmetic that the GPU runs. The span functions below (the level softmax over a row of
// pixels) are the CPU's; the CUDA kernels compute the same softmax per pixel in registers from the
// same orbit functions (common/cuda_level_softmax.cuh), and the emulated tests compare the two.
// SPEC.md sections 1 to 5 define what is computed; the comments here say how.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define JDRL_HD __host__ __device__ __forceinline__
#else
#define JDRL_HD inline
#endif

// Full unrolling of a loop with compile-time bounds (keeps small per-thread arrays in registers).
// JDRL_NO_UNROLL keeps a loop rolled (a loop whose unrolled copies the compiler would interleave,
// holding too many values in registers at once).
#if defined(__CUDACC__) || defined(__HIPCC__)
#define JDRL_UNROLL _Pragma("unroll")
#define JDRL_NO_UNROLL _Pragma("unroll 1")
#else
#define JDRL_UNROLL
#define JDRL_NO_UNROLL
#endif

namespace jdrl {

// ---------------------------------------------------------------------------------------------
// Seed layout (SPEC 1): level r = 1..m-1 owns r + 1 seed channels, packed in order of r.

JDRL_HD int seed_offset(int radius) { return (radius - 1) * (radius + 2) / 2; }
JDRL_HD int seed_channels(int levels) { return (levels - 1) * (levels + 2) / 2; }

JDRL_HD int iabs(int a) { return a < 0 ? -a : a; }
JDRL_HD int64_t clamp_index(int64_t i, int64_t n) { return i < 0 ? 0 : (i >= n ? n - 1 : i); }

// sqrt in the precision of the accumulator.
JDRL_HD float math_sqrt(float x) { return sqrtf(x); }
JDRL_HD double math_sqrt(double x) { return sqrt(x); }

// Running maximum that lets a NaN through: once NaN, always NaN, so NaN seeds give NaN kernels.
template <typename acc_t>
JDRL_HD acc_t nan_max(acc_t running, acc_t value) {
  return (value != value || value > running) ? value : running;
}

// ---------------------------------------------------------------------------------------------
// Orbits (SPEC 4). The offsets of a (2m-1)^2 window fall into the symmetry orbits
// (a, b) = (max(|dx|, |dy|), min(|dx|, |dy|)), 0 <= b <= a <= m - 1, indexed o = a(a+1)/2 + b, so
// the orbits that level r's square window covers (a <= r) are exactly the prefix o < (r+1)(r+2)/2.

JDRL_HD int orbit_count(int levels) { return levels * (levels + 1) / 2; }
JDRL_HD int orbit_index(int a, int b) { return a * (a + 1) / 2 + b; }
JDRL_HD int orbit_of_offset(int dy, int dx) {
  const int ay = iabs(dy), ax = iabs(dx);
  return ay > ax ? orbit_index(ay, ax) : orbit_index(ax, ay);
}
JDRL_HD int orbit_size(int a, int b) { return a == 0 ? 1 : ((b == 0 || b == a) ? 4 : 8); }

// The k-th offset (k < orbit_size(a, b)) of orbit (a, b): the sign and swap variants of (a, b),
// each listed once.
JDRL_HD void orbit_offset(int a, int b, int k, int* dy, int* dx) {
  if (b == 0) {  // (0, +-a), (+-a, 0); the centre orbit (a = 0) has k = 0 only: (0, 0)
    const int s = (k & 1) ? -a : a;
    *dy = k < 2 ? 0 : s;
    *dx = k < 2 ? s : 0;
  } else if (b == a) {  // the four diagonals
    *dy = (k & 1) ? -a : a;
    *dx = (k & 2) ? -a : a;
  } else {  // (+-b, +-a) and (+-a, +-b)
    const int u = (k & 1) ? -a : a;
    const int v = (k & 2) ? -b : b;
    *dy = (k & 4) ? u : v;
    *dx = (k & 4) ? v : u;
  }
}

// The radial kernel of one pixel, Wt(o) = [o == 0] w_0 + sum_{r >= a(o)} w_r k_r(o), with k_r(o) the
// per-tap softmax weight of orbit o at level r, and its backward. A precomputed table holds the
// orbits' polar positions and a scratch of m(m+1)/2 values per pixel holds one level's softmax, so
// each (level, orbit) costs one exponential (SPEC 4 counts 119 for m = 8).

// Polar interpolation (SPEC 2): an offset at distance rho = sqrt(a^2 + b^2) from the centre has, at
// level r, the logit (1 - f) a_l + f a_{l+1} with l = floor(rho), f = rho - l, when rho <= r
// (decided on integers: a^2 + b^2 <= r^2); outside, logit 0 ("window") or no weight ("disk"). Every
// offset of an orbit has the same rho, so one table entry per orbit serves all levels.
template <typename acc_t>
struct OrbitPolar {
  int squared;  // a^2 + b^2
  int lower;    // l = floor(rho)
  int upper;    // l + 1, or l where f == 0 (then a_{l+1} never enters: 0 * inf would be NaN)
  acc_t frac;   // f = rho - l
  acc_t size;   // number of offsets in the orbit (1, 4 or 8)
};

// floor(sqrt(n)) for 0 <= n < 2^30, on integers, bit by bit: a loop of fixed length with no exit
// that depends on n, so that for a compile-time n the compiler folds it to a constant (it did not
// fold a search from the float estimate: its while loops ran on the GPU at every use).
JDRL_HD int floor_sqrt(int n) {
  int root = 0;
  JDRL_UNROLL
  for (int bit = 1 << 15; bit > 0; bit >>= 1) {
    const int trial = root + bit;
    if (static_cast<int64_t>(trial) * trial <= n) root = trial;
  }
  return root;
}

// The polar position of orbit (a, b): what the table holds, computed by itself so that the CUDA
// kernels can build an entry where they need it (with a and b known at compile time, a constant:
// the integer fields from integer arithmetic alone, so that a register array indexed by them
// stays in registers).
template <typename acc_t>
JDRL_HD OrbitPolar<acc_t> orbit_polar(int a, int b) {
  const int squared = a * a + b * b;
  const acc_t rho = math_sqrt(static_cast<acc_t>(squared));  // exact for perfect squares
  const int lower = floor_sqrt(squared);  // decided on integers: rounding may put rho on either side of one
  const bool on_integer = lower * lower == squared;
  OrbitPolar<acc_t> entry;
  entry.squared = squared;
  entry.lower = lower;
  entry.frac = on_integer ? acc_t(0) : rho - static_cast<acc_t>(lower);
  // Where the orbit is inside a level's disk (rho <= r) and is not on an integer radius,
  // l + 1 <= r holds by itself. (f == 0 off an integer radius, only for rho over ~2900 in float,
  // reads a_l alone wherever f == 0 is tested.)
  entry.upper = on_integer ? lower : lower + 1;
  entry.size = static_cast<acc_t>(orbit_size(a, b));
  return entry;
}

template <typename acc_t>
JDRL_HD void fill_orbit_table(int levels, OrbitPolar<acc_t>* table) {
  for (int a = 0; a < levels; ++a) {
    for (int b = 0; b <= a; ++b) table[orbit_index(a, b)] = orbit_polar<acc_t>(a, b);
  }
}

// The exponential of the orbit softmaxes, for arguments x <= 0 (a logit minus the level's maximum)
// or NaN. Written as plain arithmetic, so that the compiler vectorizes the CPU's loops over a row
// of pixels (expf is a library call it cannot vectorize): x = n ln2 + r with |r| <= ln2 / 2, exp(r)
// by its degree-7 Taylor polynomial (relative error < 1e-8), 2^n from the exponent bits. Below -87
// the result is ~1e-38 instead of underflowing further.
JDRL_HD float softmax_exp(float x) {
  x = x > -87.0f ? x : -87.0f;  // NaN becomes -87 here: level_tap_weights propagates NaN itself
  const float shifted = x * 1.44269504f + 12582912.0f;  // 1.5 * 2^23: round(x / ln2) in the low bits
  const float n = shifted - 12582912.0f;
  const float r = (x - n * 0.693145752f) - n * 1.42860677e-06f;  // ln2 split in two for accuracy
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int n_bits;
  float scale;
#if defined(__CUDA_ARCH__)
  n_bits = __float_as_int(shifted) - 0x4B400000;
  scale = __int_as_float((n_bits + 127) << 23);
#else
  n_bits = __builtin_bit_cast(int, shifted) - 0x4B400000;
  scale = __builtin_bit_cast(float, (n_bits + 127) << 23);
#endif
  return p * scale;
}
JDRL_HD double softmax_exp(double x) { return exp(x); }

// The functions below work on a span of `span` consecutive pixels (pixel x of the span at offset
// x): the CPU passes a row, so its loops over x vectorize (the CUDA kernels use the per-pixel form
// of common/cuda_level_softmax.cuh instead).
// Per-channel arrays are `..._stride` apart; per-pixel scratch comes from the caller.

// Per-tap softmax weights k_r(o) of level `radius` into probs[o * probs_stride + x] for the orbits
// o < (r+1)(r+2)/2 of its square window (0 for the corners under "disk"). `max_logit` and
// `inverse_sum` are scratch of `span` values each.
template <typename scalar_t, typename acc_t>
JDRL_HD void level_tap_weights(const scalar_t* __restrict__ level_seeds, int64_t seed_stride, int64_t span, int radius,
                               bool disk, const OrbitPolar<acc_t>* __restrict__ table, acc_t* __restrict__ probs,
                               int64_t probs_stride, acc_t* __restrict__ max_logit, acc_t* __restrict__ inverse_sum) {
  const int orbits = orbit_count(radius + 1);
  const int radius_squared = radius * radius;
  for (int64_t x = 0; x < span; ++x) max_logit[x] = static_cast<acc_t>(level_seeds[x]);
  for (int o = 0; o < orbits; ++o) {
    const OrbitPolar<acc_t> orbit = table[o];
    acc_t* __restrict__ z = probs + o * probs_stride;
    if (orbit.squared <= radius_squared) {
      const scalar_t* __restrict__ a_lower = level_seeds + orbit.lower * seed_stride;
      const scalar_t* __restrict__ a_upper = level_seeds + orbit.upper * seed_stride;
      if (orbit.frac == acc_t(0)) {  // f == 0 reads a_l alone (0 * inf would be NaN)
        for (int64_t x = 0; x < span; ++x) {
          z[x] = static_cast<acc_t>(a_lower[x]);
          max_logit[x] = nan_max(max_logit[x], z[x]);
        }
      } else {
        const acc_t f = orbit.frac;
        for (int64_t x = 0; x < span; ++x) {
          z[x] = (acc_t(1) - f) * static_cast<acc_t>(a_lower[x]) + f * static_cast<acc_t>(a_upper[x]);
          max_logit[x] = nan_max(max_logit[x], z[x]);
        }
      }
    } else if (!disk) {  // window support: the corners keep logit 0
      for (int64_t x = 0; x < span; ++x) {
        z[x] = acc_t(0);
        max_logit[x] = nan_max(max_logit[x], acc_t(0));
      }
    }
  }
  for (int64_t x = 0; x < span; ++x) inverse_sum[x] = acc_t(0);
  for (int o = 0; o < orbits; ++o) {
    acc_t* __restrict__ e = probs + o * probs_stride;
    if (disk && table[o].squared > radius_squared) {
      for (int64_t x = 0; x < span; ++x) e[x] = acc_t(0);
      continue;
    }
    const acc_t size = table[o].size;
    for (int64_t x = 0; x < span; ++x) {
      e[x] = softmax_exp(e[x] - max_logit[x]);
      inverse_sum[x] += size * e[x];
    }
  }
  // max - max is 0, or NaN where a seed is NaN or infinite: the kernel of such a pixel is NaN.
  for (int64_t x = 0; x < span; ++x) inverse_sum[x] = acc_t(1) / inverse_sum[x] + (max_logit[x] - max_logit[x]);
  for (int o = 0; o < orbits; ++o) {
    acc_t* __restrict__ k = probs + o * probs_stride;
    for (int64_t x = 0; x < span; ++x) k[x] *= inverse_sum[x];
  }
}

// The softmax backward of one level: given its per-tap weights k(o) (probs) and orbit_grad[o], the
// gradient of the loss with respect to k summed over orbit o's taps, writes
//   grad_weight[x] = sum_o k(o) orbit_grad[o]                     (d/dw of the level's mixing weight)
//   d/dz(o) = w k(o) (orbit_grad[o] - |o| grad_weight)           (|o| taps share the logit z(o))
// and sends each inside orbit's d/dz to its two seeds with weights (1 - f) and f. `level_weight` is
// the level's mixing weight per pixel, or null for weight 1 (isotropic_kernels).
template <typename scalar_t, typename acc_t>
JDRL_HD void level_seeds_backward(const acc_t* __restrict__ probs, int64_t probs_stride,
                                  const acc_t* __restrict__ orbit_grad, int64_t orbit_grad_stride,
                                  const scalar_t* __restrict__ level_weight, int64_t span, int radius,
                                  const OrbitPolar<acc_t>* __restrict__ table, acc_t* __restrict__ grad_weight,
                                  acc_t* __restrict__ level_grad, int64_t seed_stride) {
  const int level_orbits = orbit_count(radius + 1);
  for (int64_t x = 0; x < span; ++x) grad_weight[x] = acc_t(0);
  for (int o = 0; o < level_orbits; ++o) {
    const acc_t* __restrict__ k = probs + o * probs_stride;
    const acc_t* __restrict__ g = orbit_grad + o * orbit_grad_stride;
    for (int64_t x = 0; x < span; ++x) grad_weight[x] += k[x] * g[x];
  }
  for (int s = 0; s <= radius; ++s) {
    for (int64_t x = 0; x < span; ++x) level_grad[s * seed_stride + x] = acc_t(0);
  }
  const int radius_squared = radius * radius;
  for (int o = 0; o < level_orbits; ++o) {
    const OrbitPolar<acc_t> orbit = table[o];
    if (orbit.squared > radius_squared) continue;  // corner logits are constant
    const acc_t* __restrict__ k = probs + o * probs_stride;
    const acc_t* __restrict__ g = orbit_grad + o * orbit_grad_stride;
    acc_t* __restrict__ lower = level_grad + orbit.lower * seed_stride;
    acc_t* __restrict__ upper = level_grad + orbit.upper * seed_stride;
    const acc_t f = orbit.frac;
    for (int64_t x = 0; x < span; ++x) {
      const acc_t w = level_weight == nullptr ? acc_t(1) : static_cast<acc_t>(level_weight[x]);
      const acc_t dz = w * k[x] * (g[x] - orbit.size * grad_weight[x]);
      if (f == acc_t(0)) {  // a rim orbit reads a_l alone
        lower[x] += dz;
      } else {
        lower[x] += (acc_t(1) - f) * dz;
        upper[x] += f * dz;
      }
    }
  }
}

// The radial kernel Wt(o) of each pixel of the span into orbit_weights[o * orbit_stride + x].
// `scratch`: 2 * span values.
template <typename scalar_t, typename acc_t>
JDRL_HD void radial_kernel(const scalar_t* __restrict__ seeds, int64_t seed_stride,
                           const scalar_t* __restrict__ weights, int64_t weight_stride, int64_t span, int levels,
                           bool disk, const OrbitPolar<acc_t>* __restrict__ table, acc_t* __restrict__ probs,
                           int64_t probs_stride, acc_t* __restrict__ scratch, acc_t* __restrict__ orbit_weights,
                           int64_t orbit_stride) {
  const int orbits = orbit_count(levels);
  for (int64_t x = 0; x < span; ++x) orbit_weights[x] = static_cast<acc_t>(weights[x]);
  for (int o = 1; o < orbits; ++o) {
    for (int64_t x = 0; x < span; ++x) orbit_weights[o * orbit_stride + x] = acc_t(0);
  }
  for (int radius = 1; radius < levels; ++radius) {
    level_tap_weights<scalar_t, acc_t>(seeds + seed_offset(radius) * seed_stride, seed_stride, span, radius, disk,
                                       table, probs, probs_stride, scratch, scratch + span);
    const scalar_t* __restrict__ level_weight = weights + radius * weight_stride;
    const int level_orbits = orbit_count(radius + 1);
    for (int o = 0; o < level_orbits; ++o) {
      acc_t* __restrict__ target = orbit_weights + o * orbit_stride;
      const acc_t* __restrict__ k = probs + o * probs_stride;
      for (int64_t x = 0; x < span; ++x) target[x] += static_cast<acc_t>(level_weight[x]) * k[x];
    }
  }
}

// Seed and weight gradients of each pixel of the span, given orbit_grad[o] = sum_c grad_out[c] * S_o[c]
// (S_o: the sum of the extended image over orbit o's offsets), the gradient with respect to Wt(o).
// Per level r:
//   d/dw_r = sum_o k_r(o) orbit_grad[o]
//   d/dz_r(o) = w_r k_r(o) (orbit_grad[o] - |o| d/dw_r)    (softmax backward, |o| taps share z_r(o))
// Also writes Wt(o) into orbit_weights (the image gradient needs it) from the same softmax values.
// `scratch`: 3 * span values.
template <typename scalar_t, typename acc_t>
JDRL_HD void radial_kernel_backward(const acc_t* __restrict__ orbit_grad, int64_t orbit_grad_stride,
                                    const scalar_t* __restrict__ seeds, int64_t seed_stride,
                                    const scalar_t* __restrict__ weights, int64_t weight_stride, int64_t span,
                                    int levels, bool disk, const OrbitPolar<acc_t>* __restrict__ table,
                                    acc_t* __restrict__ probs, int64_t probs_stride, acc_t* __restrict__ scratch,
                                    acc_t* __restrict__ grad_seeds, scalar_t* __restrict__ grad_weights,
                                    acc_t* __restrict__ orbit_weights, int64_t orbit_stride) {
  const int orbits = orbit_count(levels);
  acc_t* __restrict__ grad_weight = scratch + 2 * span;
  for (int64_t x = 0; x < span; ++x) {
    grad_weights[x] = static_cast<scalar_t>(orbit_grad[x]);
    orbit_weights[x] = static_cast<acc_t>(weights[x]);
  }
  for (int o = 1; o < orbits; ++o) {
    for (int64_t x = 0; x < span; ++x) orbit_weights[o * orbit_stride + x] = acc_t(0);
  }
  for (int radius = 1; radius < levels; ++radius) {
    level_tap_weights<scalar_t, acc_t>(seeds + seed_offset(radius) * seed_stride, seed_stride, span, radius, disk,
                                       table, probs, probs_stride, scratch, scratch + span);
    const int level_orbits = orbit_count(radius + 1);
    const scalar_t* __restrict__ level_weight = weights + radius * weight_stride;
    for (int o = 0; o < level_orbits; ++o) {
      const acc_t* __restrict__ k = probs + o * probs_stride;
      acc_t* __restrict__ target = orbit_weights + o * orbit_stride;
      for (int64_t x = 0; x < span; ++x) target[x] += static_cast<acc_t>(level_weight[x]) * k[x];
    }
    acc_t* __restrict__ level_grad = grad_seeds + seed_offset(radius) * seed_stride;
    level_seeds_backward<scalar_t, acc_t>(probs, probs_stride, orbit_grad, orbit_grad_stride, level_weight, span,
                                          radius, table, grad_weight, level_grad, seed_stride);
    scalar_t* __restrict__ level_grad_weight = grad_weights + radius * weight_stride;
    for (int64_t x = 0; x < span; ++x) level_grad_weight[x] = static_cast<scalar_t>(grad_weight[x]);
  }
}

// Isotropic kernels (SPEC 2) through the same level softmax: a kernel of radius r is one level, its
// taps share their orbit's weight. kernels[t * kernel_stride + x], t = (dy + r) * K + (dx + r);
// `probs`: (r+1)(r+2)/2 arrays of `span`; `scratch`: 2 * span values.
template <typename scalar_t, typename acc_t>
JDRL_HD void isotropic_kernel_span(const scalar_t* __restrict__ seeds, int64_t seed_stride, int64_t span, int radius,
                                   bool disk, const OrbitPolar<acc_t>* __restrict__ table, acc_t* __restrict__ probs,
                                   int64_t probs_stride, acc_t* __restrict__ scratch, scalar_t* __restrict__ kernels,
                                   int64_t kernel_stride) {
  level_tap_weights<scalar_t, acc_t>(seeds, seed_stride, span, radius, disk, table, probs, probs_stride, scratch,
                                     scratch + span);
  const int size = 2 * radius + 1;
  for (int dy = -radius; dy <= radius; ++dy) {
    for (int dx = -radius; dx <= radius; ++dx) {
      const acc_t* __restrict__ k = probs + orbit_of_offset(dy, dx) * probs_stride;
      scalar_t* __restrict__ tap = kernels + ((dy + radius) * size + (dx + radius)) * kernel_stride;
      for (int64_t x = 0; x < span; ++x) tap[x] = static_cast<scalar_t>(k[x]);
    }
  }
}

// The seed gradients of isotropic_kernel_span: the kernel gradient summed over each orbit's taps,
// then the level's softmax backward with weight 1. `probs` and `orbit_grad`: (r+1)(r+2)/2 arrays of
// `span`; `scratch`: 3 * span values; grad_seeds in the accumulation type.
template <typename scalar_t, typename acc_t>
JDRL_HD void isotropic_kernel_span_backward(const scalar_t* __restrict__ grad_kernels, int64_t kernel_stride,
                                            const scalar_t* __restrict__ seeds, int64_t seed_stride, int64_t span,
                                            int radius, bool disk, const OrbitPolar<acc_t>* __restrict__ table,
                                            acc_t* __restrict__ probs, int64_t probs_stride,
                                            acc_t* __restrict__ orbit_grad, int64_t orbit_grad_stride,
                                            acc_t* __restrict__ scratch, acc_t* __restrict__ grad_seeds) {
  const int orbits = orbit_count(radius + 1);
  for (int o = 0; o < orbits; ++o) {
    for (int64_t x = 0; x < span; ++x) orbit_grad[o * orbit_grad_stride + x] = acc_t(0);
  }
  const int size = 2 * radius + 1;
  for (int dy = -radius; dy <= radius; ++dy) {
    for (int dx = -radius; dx <= radius; ++dx) {
      acc_t* __restrict__ target = orbit_grad + orbit_of_offset(dy, dx) * orbit_grad_stride;
      const scalar_t* __restrict__ g = grad_kernels + ((dy + radius) * size + (dx + radius)) * kernel_stride;
      for (int64_t x = 0; x < span; ++x) target[x] += static_cast<acc_t>(g[x]);
    }
  }
  level_tap_weights<scalar_t, acc_t>(seeds, seed_stride, span, radius, disk, table, probs, probs_stride, scratch,
                                     scratch + span);
  level_seeds_backward<scalar_t, acc_t>(probs, probs_stride, orbit_grad, orbit_grad_stride,
                                        static_cast<const scalar_t*>(nullptr), span, radius, table, scratch + 2 * span,
                                        grad_seeds, seed_stride);
}

// ---------------------------------------------------------------------------------------------
// Border folding for the transposed convolutions (image gradients of sv_conv and reblur).
// The forward pass reads the extended image Ie at e = p + d, e in [-R, n - 1 + R]. Pixel q of the
// real image receives the gradient of every extended position that the padding maps onto it:
// "replicate": [-R, 0] onto 0, [n-1, n-1+R] onto n-1, q alone elsewhere; "zeros": q alone.
JDRL_HD void folded_range(int q, int n, int radius, bool replicate, int* first, int* last) {
  *first = q;
  *last = q;
  if (replicate) {
    if (q == 0) *first = -radius;
    if (q == n - 1) *last = n - 1 + radius;
  }
}

// ---------------------------------------------------------------------------------------------
// Bilinear taps (SPEC 5): sample at (sx, sy) = (x + flow_x, y + flow_y), align_corners=True.
// "border" clamps the coordinate to [0, n-1] and then has zero gradient there, as grid_sample
// does (a coordinate on or past the border counts as clamped); "zeros" drops taps outside.

// index_t: int64_t on the CPU and for large tensors on CUDA, int32_t where every element count of
// the op fits in 32 bits (flow_warp_kernels.cuh), so that the tap addresses are 32-bit arithmetic.
template <typename acc_t, typename index_t = int64_t>
struct BilinearTaps {
  index_t x0, y0;      // top-left tap; the others are x0 + 1, y0 + 1
  acc_t wx, wy;        // fractional parts: weights (1 - wx, wx), (1 - wy, wy)
  acc_t dsx_dflow;     // 1 where the x coordinate moves with the flow, 0 where clamped
  acc_t dsy_dflow;
};

template <typename acc_t, typename index_t>
JDRL_HD acc_t clamp_coordinate(acc_t coordinate, index_t n, acc_t* slope) {
  const acc_t high = static_cast<acc_t>(n - 1);
  if (coordinate <= acc_t(0)) {
    *slope = acc_t(0);
    return acc_t(0);
  }
  if (coordinate >= high) {
    *slope = acc_t(0);
    return high;
  }
  *slope = acc_t(1);
  return coordinate;
}

template <typename acc_t, typename index_t = int64_t>
JDRL_HD BilinearTaps<acc_t, index_t> bilinear_taps(index_t y, index_t x, acc_t flow_x, acc_t flow_y, index_t height,
                                                   index_t width, bool border) {
  acc_t sx = static_cast<acc_t>(x) + flow_x;
  acc_t sy = static_cast<acc_t>(y) + flow_y;
  BilinearTaps<acc_t, index_t> taps;
  taps.dsx_dflow = acc_t(1);
  taps.dsy_dflow = acc_t(1);
  if (border) {
    // A NaN coordinate fails both comparisons and stays NaN.
    if (sx == sx) sx = clamp_coordinate(sx, width, &taps.dsx_dflow);
    if (sy == sy) sy = clamp_coordinate(sy, height, &taps.dsy_dflow);
  }
  const acc_t fx = floor(sx), fy = floor(sy);
  taps.wx = sx - fx;
  taps.wy = sy - fy;
  // Far-away or NaN coordinates would overflow the integer cast: park them outside the image.
  // (width + height + 4 fits index_t: each is at most an element count.)
  const acc_t limit = static_cast<acc_t>(width + height + 4);
  taps.x0 = (fx == fx && fx > -limit && fx < limit) ? static_cast<index_t>(fx) : index_t(-2);
  taps.y0 = (fy == fy && fy > -limit && fy < limit) ? static_cast<index_t>(fy) : index_t(-2);
  return taps;
}

template <typename index_t>
JDRL_HD bool tap_inside(index_t y, index_t x, index_t height, index_t width) {
  return y >= 0 && y < height && x >= 0 && x < width;
}

// Bilinear sample of one plane; a tap outside the image counts as 0 (with border padding the
// coordinate was clamped, so only taps of weight 0 can fall outside).
// All four taps inside the image: the common case, which needs no bounds checks. A NaN coordinate
// parks x0/y0 outside, so it never takes this path.
template <typename acc_t, typename index_t>
JDRL_HD bool taps_interior(const BilinearTaps<acc_t, index_t>& taps, index_t height, index_t width) {
  return taps.x0 >= 0 && taps.x0 + 1 < width && taps.y0 >= 0 && taps.y0 + 1 < height;
}

// The four bilinear weights, in the order (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1).
template <typename acc_t, typename index_t>
JDRL_HD void bilinear_weights(const BilinearTaps<acc_t, index_t>& taps, acc_t* w) {
  w[0] = (acc_t(1) - taps.wy) * (acc_t(1) - taps.wx);
  w[1] = (acc_t(1) - taps.wy) * taps.wx;
  w[2] = taps.wy * (acc_t(1) - taps.wx);
  w[3] = taps.wy * taps.wx;
}

// A NaN sample coordinate (NaN flow) gives a NaN sample and NaN coordinate gradients.
template <typename acc_t, typename index_t>
JDRL_HD bool taps_are_nan(const BilinearTaps<acc_t, index_t>& taps) {
  return taps.wx != taps.wx || taps.wy != taps.wy;
}

template <typename scalar_t, typename acc_t, typename index_t>
JDRL_HD acc_t bilinear_sample(const scalar_t* plane, index_t height, index_t width,
                              const BilinearTaps<acc_t, index_t>& taps) {
  if (taps_are_nan(taps)) return taps.wx + taps.wy;
  acc_t w[4];
  bilinear_weights(taps, w);
  acc_t value = 0;
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      const index_t ty = taps.y0 + i, tx = taps.x0 + j;
      if (tap_inside(ty, tx, height, width)) value += w[2 * i + j] * static_cast<acc_t>(plane[ty * width + tx]);
    }
  }
  return value;
}

// The gradient of one sample with respect to the sampling coordinate (d/dsx, d/dsy), before the
// clamping slope is applied.
template <typename scalar_t, typename acc_t, typename index_t>
JDRL_HD void bilinear_coordinate_grad(const scalar_t* plane, index_t height, index_t width,
                                      const BilinearTaps<acc_t, index_t>& taps, acc_t* d_sx, acc_t* d_sy) {
  if (taps_are_nan(taps)) {
    *d_sx = *d_sy = taps.wx + taps.wy;
    return;
  }
  acc_t v[2][2];
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      const index_t ty = taps.y0 + i, tx = taps.x0 + j;
      v[i][j] = tap_inside(ty, tx, height, width) ? static_cast<acc_t>(plane[ty * width + tx]) : acc_t(0);
    }
  }
  *d_sx = (acc_t(1) - taps.wy) * (v[0][1] - v[0][0]) + taps.wy * (v[1][1] - v[1][0]);
  *d_sy = (acc_t(1) - taps.wx) * (v[1][0] - v[0][0]) + taps.wx * (v[1][1] - v[0][1]);
}

}  // namespace jdrl
