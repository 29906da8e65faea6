// The CUDA kernels of reblur (SPEC section 4) and their launch geometry. Compiled by nvcc for the
// device (reblur_cuda.cu) and by the host compiler under common/cuda_host_emulation.h
// (csrc/emulation), so the tests run these very functions on a machine without a GPU.
//
// A block of kTile x kTile threads owns a kTile x kTile tile of output pixels, one per thread. The
// block loads the image around its tile (the tile and a halo of R = m - 1 pixels, padding applied
// at load) into shared memory, a chunk of channels at a time; each thread then sums the orbits of
// its pixel from there.
//
// The radial kernel of a pixel, Wt(o) = [o == 0] w_0 + sum_{r >= a(o)} w_r k_r(o), is built level
// by level: per level r, the maximum logit (in the specialized kernels the largest of the level's
// seeds and the corners' 0; in the generic ones a pass over its orbits), one pass for the softmax sum
// (bias_r = max + log2(sum), logits in log2 units: k_r(o) = exp2(z_r(o) - bias_r); base e in
// float64), one adding w_r k_r(o) to Wt; in the specialized kernels each level's passes are compiled
// for its own radius (cuda::with_constant_radius). With m = 8 known at compile time (kLevels = 8, the common case; float
// accumulation only, see kSpecializes) the orbits' polar positions are constants, the level's 8
// seeds are registers, and the 36 values of Wt are per-thread slots in shared memory (SlotArray; 36
// floats next to the rest did not fit in 64 registers); the generic kernels (kLevels = 0, any m,
// 64-bit indices, and float64) keep Wt and the biases in a per-pixel global scratch instead. The level loop stays
// rolled. Every kernel is held to 64 registers per thread (__launch_bounds__(256, 4): 4 blocks, 50%
// occupancy) without spills, which .ci/compile_cuda.sh checks.
//
// Backward, without atomics:
//   pass A, per pixel p: Wt(p) (as in the forward, stored for pass B), orbit_grad(o) =
//     sum_c grad[c, p] S_o[c, p] from the image tile (the specialized kernel reuses Wt's slots),
//     then per level the softmax backward:
//       d/dw_r = sum_o k_r(o) orbit_grad(o),  d/dz_r(o) = w_r k_r(o) (orbit_grad(o) - |o| d/dw_r),
//     each level's seed gradients summed in registers and stored once (the specialized kernel
//     in one pass over the orbits, recomputing the level's bias; see param_backward_kernel);
//   pass B, per pixel q: the image gradient, gathered from the neighbours p = e - d (e: the
//     extended positions that the padding folds onto q) as grad[c, p] Wt_p(o(d)), with the
//     gradient around the tile in shared memory.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>

#include "common/cuda_kernel_support.cuh"
#include "common/cuda_level_softmax.cuh"
#include "common/cuda_tile.cuh"
#include "common/pixel_math.h"
#include "reblur/reblur.h"

namespace jdrl {
namespace reblur_kernels {

using cuda::softmax_pow;
using cuda::level_bias;
using cuda::level_logit;
using cuda::level_seeds;
using cuda::load_tile;
using cuda::PixelSeeds;

constexpr int kTile = cuda::kTile;       // a block is kTile x kTile threads
constexpr int kThreads = cuda::kTileThreads;
// Blocks of kThreads that a streaming multiprocessor should hold at once: 4 x 256 threads = 50% of
// its 2048, which caps the kernels at 64 registers per thread (65536 / (4 x 256)).
constexpr int kMinBlocks = 4;
// At most this many channels in shared memory at once: 3, an RGB image's count, with float
// accumulation. Every channel of the chunk's unrolled gathers is issued whether the image has it or
// not (predicated off), so a chunk of 4 spent a quarter of the orbit sums' instructions on nothing
// for RGB (SASS, sm_90: the forward's gather 2,169 instructions per pixel for 4 channels, 1,635 for
// 3). float64 (the generic kernels only) keeps 4: with 3, its image backward spilled 16 bytes.
// One rule for the host's geometry (by the accumulation type's size) and the kernels' arrays.
constexpr int channel_chunk_limit(size_t accumulate_bytes) { return accumulate_bytes == sizeof(float) ? 3 : 4; }
template <typename acc_t>
constexpr int kChannelChunk = channel_chunk_limit(sizeof(acc_t));
constexpr int kSpecializedLevels = 8;    // m of the compile-time specialization
// The specialization is for float accumulation (float32, float16, bfloat16). float64 takes the
// generic kernels at every m: in doubles, the specialized kernels' per-level registers (8 seeds and
// 16 sums of the softmax backward, 48 registers) and the rest did not fit in 64 (ptxas, sm_90:
// parameter backward 700 bytes spilled, forward 20).
template <typename acc_t>
constexpr bool kSpecializes = sizeof(acc_t) == sizeof(float);
constexpr unsigned int kMaxGridZ = 65535;

// Everything a reblur kernel reads and writes; a kernel uses the fields its pass needs.
template <typename scalar_t, typename acc_t>
struct Params {
  const scalar_t* image;
  const scalar_t* seeds;
  const scalar_t* weights;
  const scalar_t* grad;     // backward: the output gradient
  scalar_t* out;            // forward: the output; pass B: the image gradient
  acc_t* orbit_weights;     // backward: (B, m(m+1)/2, H, W), Wt of every pixel (pass A writes, pass B reads)
  acc_t* scratch;           // generic kernels: (B, scratch_planes, H, W); unused by the specialized ones
  acc_t* grad_seeds;        // pass A, in the accumulation dtype
  scalar_t* grad_weights;   // pass A
  int64_t batch;
  int channels, height, width, levels;
  int channel_chunk;        // channels per shared tile (Geometry::channel_chunk)
  bool disk, replicate;
};

// The launch of every reblur kernel: one thread per pixel in kTile x kTile blocks, blockIdx.z over
// the batch (a block loops over b when B > 65535), and the image tile of `channel_chunk` channels
// with its halo in dynamic shared memory. The host launch code and the emulation both take it from
// here.
struct Geometry {
  dim3 grid, block;
  int channel_chunk;
  size_t shared_bytes;  // the image tile; over cuda::kDefaultSharedBytes, the launcher opts in to more
  bool specialized;     // m = 8, float accumulation and every tensor indexable with 32 bits
  int scratch_planes;   // per pixel, for the generic kernels (0 for the specialized ones)
  size_t slot_bytes;    // specialized forward and parameter backward: their per-pixel slots, before the tile
  // The geometry of a kernel that keeps per-pixel slots in shared memory (forward_kernel,
  // param_backward_kernel): the slots come first, the tile after them.
  Geometry with_slots() const {
    Geometry g = *this;
    g.shared_bytes += slot_bytes;
    return g;
  }
};

inline int tile_side(int levels) { return kTile + 2 * (levels - 1); }

// The specialized kernels index with int32_t: every tensor of a launch must have fewer elements.
constexpr int64_t kIndexLimit = std::numeric_limits<int32_t>::max();

// `largest_numel`: the largest tensor the kernels index (for the choice of 32-bit indices, below
// `index_limit`: kIndexLimit, smaller only in tests);
// `accumulate_bytes`: sizeof(acc_t), the element type of the shared tile; `max_shared_bytes`: the
// most shared memory a block may use on this device (opt-in limit): where the specialized kernels'
// slots and tile (up to 47,664 bytes) do not fit, the generic kernels run.
inline Geometry geometry(int64_t batch, int64_t channels, int64_t height, int64_t width, int levels,
                         int64_t largest_numel, size_t accumulate_bytes, int64_t max_shared_bytes,
                         int64_t index_limit = kIndexLimit) {
  const int64_t tiles_x = (width + kTile - 1) / kTile, tiles_y = (height + kTile - 1) / kTile;
  TORCH_CHECK_VALUE(tiles_y <= 65535, "reblur on CUDA: height ", height, " is over ", 65535 * kTile);
  const int64_t side = tile_side(levels);
  const int64_t tile_bytes = side * side * static_cast<int64_t>(accumulate_bytes);
  const int max_chunk = channel_chunk_limit(accumulate_bytes);
  int chunk = static_cast<int>(channels < max_chunk ? channels : max_chunk);
  if (chunk < 1) chunk = 1;
  while (chunk > 1 && chunk * tile_bytes > cuda::kDefaultSharedBytes) --chunk;
  Geometry g;
  g.grid = dim3(static_cast<unsigned int>(tiles_x), static_cast<unsigned int>(tiles_y),
                static_cast<unsigned int>(batch < kMaxGridZ ? batch : kMaxGridZ));
  g.block = dim3(kTile, kTile, 1);
  g.channel_chunk = chunk;
  g.shared_bytes = static_cast<size_t>(chunk * tile_bytes);
  const int64_t slot_bytes = static_cast<int64_t>(orbit_count(kSpecializedLevels)) * kThreads * accumulate_bytes;
  g.specialized = levels == kSpecializedLevels && accumulate_bytes == sizeof(float) &&
                  largest_numel < index_limit &&
                  static_cast<int64_t>(g.shared_bytes) + slot_bytes <= max_shared_bytes;
  g.scratch_planes = g.specialized ? 0 : orbit_count(levels) + levels;
  g.slot_bytes = g.specialized ? static_cast<size_t>(orbit_count(kSpecializedLevels)) * kThreads * accumulate_bytes : 0;
  return g;
}

// ---------------------------------------------------------------------------------------------
// Per-pixel arrays: registers in the specialized kernels (kSize > 0, every index a compile-time
// constant once the loops are unrolled), a strided view of global memory in the generic ones.

template <typename acc_t, int kSize>
struct PixelArray {
  acc_t values[kSize];
  __device__ __forceinline__ acc_t& operator[](int i) { return values[i]; }
};

template <typename acc_t>
struct PixelArray<acc_t, 0> {
  acc_t* base;
  int64_t stride;
  __device__ __forceinline__ acc_t& operator[](int i) { return base[i * stride]; }
};

constexpr int array_size(int levels_or_zero, int size) { return levels_or_zero > 0 ? size : 0; }

// A per-pixel array of the specialized kernels in the block's shared memory: the thread's values
// kThreads apart (consecutive threads, consecutive words: no bank conflicts). The 36 orbit values
// of m = 8 do not fit in registers next to the rest (36 floats plus the loop state went over 64
// registers), and the shared memory a block then uses (36 KiB of slots and at most a 3-channel tile
// of 10.5 KiB: 47,664 bytes, under the 48 KiB default) still lets 4 blocks reside, as 64 registers do.
template <typename acc_t>
struct SlotArray {
  acc_t* base;  // the thread's first slot
  __device__ __forceinline__ acc_t& operator[](int i) const { return base[i * kThreads]; }
};

// The thread's slots in the block's slot area (`shared`, kSlots x kThreads values).
template <typename acc_t>
__device__ __forceinline__ SlotArray<acc_t> thread_slots(acc_t* shared) {
  return {shared + threadIdx.y * kTile + threadIdx.x};
}

// The radial kernel's per-pixel array: shared-memory slots in the specialized kernels, a strided view
// of global memory (PixelArray<acc_t, 0>) in the generic ones.
template <typename acc_t, int kLevels>
using OrbitArray = std::conditional_t<(kLevels > 0), SlotArray<acc_t>, PixelArray<acc_t, 0>>;

// The per-pixel level softmax (seeds in registers, exp2 on log2(e)-scaled logits in float32, exp in
// float64): common/cuda_level_softmax.cuh.

// Where radial_kernel need not keep the level biases (the specialized kernels recompute a level's
// bias where they need it again).
struct NoBiases {};

// Wt(o) of one pixel into `wt`, and each level's bias into bias[r] (r >= 1) unless `bias` is NoBiases.
// The level loop stays rolled: unrolled, the compiler hoisted the loads of all 35 seeds to the top,
// and they did not fit in 64 registers.
template <typename acc_t, int kLevels, typename Seeds, typename Weights, typename WtArray, typename BiasArray>
__device__ __forceinline__ void radial_kernel(const Seeds& seed, const Weights& weight, int levels, bool disk,
                                              WtArray& wt, BiasArray& bias) {
  const int orbits = orbit_count(levels);
  JDRL_UNROLL
  for (int o = 0; o < (kLevels > 0 ? orbit_count(kLevels) : orbits); ++o) wt[o] = acc_t(0);
  wt[0] = weight(0);
  // One level: its bias, then w_r k_r(o) added to Wt over its orbits. `radius`: an int, or in the
  // specialized kernels a compile-time constant (with_constant_radius).
  const auto add_level = [&](auto radius) {
    // the level's rows of seeds and weights, indexed at run time (cuda::opaque)
    auto level = level_seeds<acc_t, kLevels>(seed, radius, cuda::opaque(seed_offset(radius)));
    const acc_t level_bias_value = level_bias<acc_t, kLevels>(level, radius, disk);
    if constexpr (!std::is_same_v<BiasArray, NoBiases>) bias[radius] = level_bias_value;
    const acc_t level_weight = weight(cuda::opaque(radius));
    JDRL_UNROLL
    for (int a = 0; a <= (kLevels > 0 ? kLevels - 1 : static_cast<int>(radius)); ++a) {
      if (a > radius) break;
      JDRL_UNROLL
      for (int b = 0; b <= a; ++b) {
        acc_t z;
        if (level_logit(level, radius, disk, orbit_polar<acc_t>(a, b), &z)) {
          wt[orbit_index(a, b)] += level_weight * softmax_pow(z - level_bias_value);
        }
      }
    }
  };
  JDRL_NO_UNROLL
  for (int radius = 1; radius < levels; ++radius) {
    if constexpr (kLevels > 0) {
      cuda::with_constant_radius<kLevels - 1>(radius, add_level);
    } else {
      add_level(radius);
    }
  }
}

// The image tile with its halo: common/cuda_tile.cuh (load_tile).

// S_o[j] for j < kChannelChunk<acc_t>: the tile summed over the offsets of orbit (a, b) around the
// thread's pixel, at tile position `centre` = (ty + R) * side + (tx + R).
template <typename acc_t>
__device__ __forceinline__ void orbit_sums(const acc_t* __restrict__ tile, int elements, int side, int centre, int count,
                                           int a, int b, acc_t* sums) {
  JDRL_UNROLL
  for (int j = 0; j < kChannelChunk<acc_t>; ++j) sums[j] = acc_t(0);
  const int size = orbit_size(a, b);
  JDRL_UNROLL
  for (int k = 0; k < 8; ++k) {
    if (k >= size) break;
    int dy, dx;
    orbit_offset(a, b, k, &dy, &dx);
    const int t = centre + dy * side + dx;
    JDRL_UNROLL
    for (int j = 0; j < kChannelChunk<acc_t>; ++j) {
      if (j < count) sums[j] += tile[j * elements + t];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The kernels. kLevels = 8 with 32-bit indices, or 0 (any m) with 64-bit indices.

template <typename scalar_t, typename acc_t, typename index_t, int kLevels>
__global__ void __launch_bounds__(kThreads, kMinBlocks) forward_kernel(const Params<scalar_t, acc_t> p) {
  const int levels = kLevels > 0 ? kLevels : p.levels;
  const int radius = levels - 1;
  const int side = kTile + 2 * radius, elements = side * side;
  const int y0 = blockIdx.y * kTile, x0 = blockIdx.x * kTile;
  const int y = y0 + threadIdx.y, x = x0 + threadIdx.x;
  const bool active = y < p.height && x < p.width;
  const index_t plane = static_cast<index_t>(p.height) * p.width;
  const index_t pixel = static_cast<index_t>(y) * p.width + x;
  const int centre = (threadIdx.y + radius) * side + threadIdx.x + radius;
  constexpr int kOrbits = array_size(kLevels, kLevels * (kLevels + 1) / 2);
  acc_t* const slots = cuda::dynamic_shared<acc_t>();  // kOrbits x kThreads values, then the tile
  acc_t* const tile = slots + kOrbits * kThreads;
  for (int64_t item = blockIdx.z; item < p.batch; item += gridDim.z) {
    const index_t b = static_cast<index_t>(item);
    const PixelSeeds<scalar_t, acc_t, index_t> seed{p.seeds + b * seed_channels(levels) * plane + pixel, plane};
    const scalar_t* __restrict__ pixel_weights = p.weights + b * levels * plane + pixel;
    const auto weight = [&](int r) { return static_cast<acc_t>(pixel_weights[static_cast<index_t>(r) * plane]); };
    OrbitArray<acc_t, kLevels> wt;
    if constexpr (kLevels > 0) {
      wt = thread_slots(slots);
    } else {
      wt = {p.scratch + b * (orbit_count(levels) + levels) * plane + pixel, static_cast<int64_t>(plane)};
    }
    NoBiases no_biases;
    if (active) radial_kernel<acc_t, kLevels>(seed, weight, levels, p.disk, wt, no_biases);
    for (int first = 0; first < p.channels; first += p.channel_chunk) {
      const int count = p.channels - first < p.channel_chunk ? p.channels - first : p.channel_chunk;
      __syncthreads();  // every thread is done with the previous chunk's tile
      load_tile<scalar_t, acc_t, index_t>(p.image + (b * p.channels + first) * plane, plane, count, p.height, p.width,
                                          y0, x0, radius, side, p.replicate, tile);
      __syncthreads();
      if (!active) continue;
      acc_t acc[kChannelChunk<acc_t>];
      JDRL_UNROLL
      for (int j = 0; j < kChannelChunk<acc_t>; ++j) acc[j] = acc_t(0);
      JDRL_UNROLL
      for (int a = 0; a < (kLevels > 0 ? kLevels : levels); ++a) {
        JDRL_UNROLL
        for (int bb = 0; bb <= a; ++bb) {
          acc_t sums[kChannelChunk<acc_t>];
          orbit_sums(tile, elements, side, centre, count, a, bb, sums);
          const acc_t w = wt[orbit_index(a, bb)];
          JDRL_UNROLL
          for (int j = 0; j < kChannelChunk<acc_t>; ++j) acc[j] += w * sums[j];
        }
      }
      JDRL_UNROLL
      for (int j = 0; j < kChannelChunk<acc_t>; ++j) {
        if (j < count) p.out[(b * p.channels + first + j) * plane + pixel] = static_cast<scalar_t>(acc[j]);
      }
    }
  }
}

// Pass A: Wt of each pixel into orbit_weights, the seed and weight gradients.
template <typename scalar_t, typename acc_t, typename index_t, int kLevels>
__global__ void __launch_bounds__(kThreads, kMinBlocks) param_backward_kernel(const Params<scalar_t, acc_t> p) {
  const int levels = kLevels > 0 ? kLevels : p.levels;
  const int radius = levels - 1;
  const int orbits = orbit_count(levels);
  const int side = kTile + 2 * radius, elements = side * side;
  const int y0 = blockIdx.y * kTile, x0 = blockIdx.x * kTile;
  const int y = y0 + threadIdx.y, x = x0 + threadIdx.x;
  const bool active = y < p.height && x < p.width;
  const index_t plane = static_cast<index_t>(p.height) * p.width;
  const index_t pixel = static_cast<index_t>(y) * p.width + x;
  const int centre = (threadIdx.y + radius) * side + threadIdx.x + radius;
  constexpr int kOrbits = array_size(kLevels, kLevels * (kLevels + 1) / 2);
  acc_t* const slots = cuda::dynamic_shared<acc_t>();  // kOrbits x kThreads values, then the tile
  acc_t* const tile = slots + kOrbits * kThreads;
  for (int64_t item = blockIdx.z; item < p.batch; item += gridDim.z) {
    const index_t b = static_cast<index_t>(item);
    const index_t seed_base = b * seed_channels(levels) * plane + pixel;
    const PixelSeeds<scalar_t, acc_t, index_t> seed{p.seeds + seed_base, plane};
    const scalar_t* __restrict__ pixel_weights = p.weights + b * levels * plane + pixel;
    const auto weight = [&](int r) { return static_cast<acc_t>(pixel_weights[static_cast<index_t>(r) * plane]); };
    PixelArray<acc_t, 0> bias;  // generic kernels: each level's bias, kept for the softmax backward
    // The specialized kernel's slots hold Wt first (copied out to orbit_weights), then orbit_grad.
    OrbitArray<acc_t, kLevels> orbit_grad;
    acc_t* __restrict__ pixel_orbit_weights = p.orbit_weights + b * orbits * plane + pixel;
    if constexpr (kLevels > 0) {
      orbit_grad = thread_slots(slots);
    } else {
      const index_t scratch_base = b * (orbits + levels) * plane + pixel;
      orbit_grad = {p.scratch + scratch_base, static_cast<int64_t>(plane)};
      bias = {p.scratch + scratch_base + orbits * plane, static_cast<int64_t>(plane)};
    }
    if (active) {
      if constexpr (kLevels > 0) {
        const SlotArray<acc_t> wt = orbit_grad;
        NoBiases no_biases;
        radial_kernel<acc_t, kLevels>(seed, weight, levels, p.disk, wt, no_biases);
        // rolled: unrolled, the 36 shared loads were all issued before the stores, 36 live registers
        JDRL_NO_UNROLL
        for (int o = 0; o < kOrbits; ++o) pixel_orbit_weights[static_cast<index_t>(o) * plane] = wt[o];
      } else {
        PixelArray<acc_t, 0> wt{pixel_orbit_weights, static_cast<int64_t>(plane)};
        radial_kernel<acc_t, kLevels>(seed, weight, levels, p.disk, wt, bias);
      }
    }
    JDRL_UNROLL
    for (int o = 0; o < (kLevels > 0 ? kOrbits : orbits); ++o) {
      if (active) orbit_grad[o] = acc_t(0);
    }
    // orbit_grad(o) = sum_c grad[c, p] S_o[c, p]
    for (int first = 0; first < p.channels; first += p.channel_chunk) {
      const int count = p.channels - first < p.channel_chunk ? p.channels - first : p.channel_chunk;
      __syncthreads();
      load_tile<scalar_t, acc_t, index_t>(p.image + (b * p.channels + first) * plane, plane, count, p.height, p.width,
                                          y0, x0, radius, side, p.replicate, tile);
      __syncthreads();
      if (!active) continue;
      acc_t pixel_grad[kChannelChunk<acc_t>];
      JDRL_UNROLL
      for (int j = 0; j < kChannelChunk<acc_t>; ++j) {
        pixel_grad[j] = j < count ? static_cast<acc_t>(p.grad[(b * p.channels + first + j) * plane + pixel]) : acc_t(0);
      }
      JDRL_UNROLL
      for (int a = 0; a < (kLevels > 0 ? kLevels : levels); ++a) {
        JDRL_UNROLL
        for (int bb = 0; bb <= a; ++bb) {
          acc_t sums[kChannelChunk<acc_t>];
          orbit_sums(tile, elements, side, centre, count, a, bb, sums);
          acc_t total = 0;
          JDRL_UNROLL
          for (int j = 0; j < kChannelChunk<acc_t>; ++j) total += pixel_grad[j] * sums[j];
          orbit_grad[orbit_index(a, bb)] += total;
        }
      }
    }
    if (!active) continue;
    scalar_t* __restrict__ pixel_grad_weights = p.grad_weights + b * levels * plane + pixel;
    pixel_grad_weights[0] = static_cast<scalar_t>(orbit_grad[0]);
    if constexpr (kLevels > 0) {
      // One level's gradients, its radius r a compile-time constant (with_constant_radius). One pass
      // over the level's orbits: with c(o, s) the share of seed s in the logit of orbit o
      // ((1 - f, f) at (l, l + 1), or 1 at l), d/da_s = sum_o c(o, s) d/dz_r(o)
      //   = w_r (sum_o c(o, s) k_r(o) orbit_grad(o) - d/dw_r sum_o c(o, s) |o| k_r(o)),
      // so each k_r(o) is computed once and no orbit's value waits for d/dw_r (the two-pass form
      // kept the level's 36 exponentials and orbit gradients live in registers between its passes).
      const auto level_gradients = [&](auto r) {
        // the level's rows of seeds, weights and their gradients, indexed at run time (cuda::opaque)
        const int first = cuda::opaque(seed_offset(r)), row = cuda::opaque(r);
        auto level = level_seeds<acc_t, kLevels>(seed, r, first);
        // recomputed: a rolled loop cannot keep the level biases in registers
        const acc_t level_bias_value = level_bias<acc_t, kLevels>(level, r, p.disk);
        acc_t* __restrict__ level_grad_out = p.grad_seeds + seed_base + static_cast<index_t>(first) * plane;
        const acc_t level_weight = weight(row);
        acc_t grad_weight = 0;
        acc_t weighted[kLevels], sized[kLevels];  // the two sums over o above, per seed s
        JDRL_UNROLL
        for (int t = 0; t < kLevels; ++t) weighted[t] = sized[t] = acc_t(0);
        JDRL_UNROLL
        for (int a = 0; a < kLevels; ++a) {
          if (a > r) break;
          JDRL_UNROLL
          for (int bb = 0; bb <= a; ++bb) {
            const OrbitPolar<acc_t> polar = orbit_polar<acc_t>(a, bb);
            acc_t z;
            if (!level_logit(level, r, p.disk, polar, &z)) continue;
            const acc_t k = softmax_pow(z - level_bias_value);
            const acc_t kg = k * orbit_grad[orbit_index(a, bb)];
            grad_weight += kg;  // d/dw_r = sum_o k_r(o) orbit_grad(o)
            if (polar.squared > r * r) continue;  // corner logits are constant
            cuda::add_orbit_seed_shares(polar, kg, polar.size * k, weighted, sized);
          }
        }
        pixel_grad_weights[static_cast<index_t>(row) * plane] = static_cast<scalar_t>(grad_weight);
        JDRL_UNROLL
        for (int t = 0; t < kLevels; ++t) {
          if (t <= r) {
            level_grad_out[static_cast<index_t>(t) * plane] = level_weight * (weighted[t] - grad_weight * sized[t]);
          }
        }
      };
      JDRL_NO_UNROLL
      for (int r = 1; r < levels; ++r) cuda::with_constant_radius<kLevels - 1>(r, level_gradients);
    } else {
      JDRL_NO_UNROLL
      for (int r = 1; r < levels; ++r) {
        auto level = level_seeds<acc_t, kLevels>(seed, r, seed_offset(r));
        const acc_t level_bias_value = bias[r];
        acc_t* __restrict__ level_grad_out = p.grad_seeds + seed_base + static_cast<index_t>(seed_offset(r)) * plane;
        const acc_t level_weight = weight(r);
        // d/dw_r = sum_o k_r(o) orbit_grad(o)
        acc_t grad_weight = 0;
        for (int a = 0; a <= r; ++a) {
          for (int bb = 0; bb <= a; ++bb) {
            acc_t z;
            if (level_logit(level, r, p.disk, orbit_polar<acc_t>(a, bb), &z)) {
              grad_weight += softmax_pow(z - level_bias_value) * orbit_grad[orbit_index(a, bb)];
            }
          }
        }
        pixel_grad_weights[static_cast<index_t>(r) * plane] = static_cast<scalar_t>(grad_weight);
        // d/dz_r(o) = w_r k_r(o) (orbit_grad(o) - |o| d/dw_r), sent to the seeds a_l, a_{l+1} of the inside orbits
        for (int t = 0; t <= r; ++t) level_grad_out[static_cast<index_t>(t) * plane] = acc_t(0);
        for (int a = 0; a <= r; ++a) {
          JDRL_UNROLL
          for (int bb = 0; bb <= a; ++bb) {
            const OrbitPolar<acc_t> polar = orbit_polar<acc_t>(a, bb);
            if (polar.squared > r * r) continue;  // corner logits are constant
            acc_t z;
            level_logit(level, r, p.disk, polar, &z);
            const acc_t dz = level_weight * softmax_pow(z - level_bias_value) *
                             (orbit_grad[orbit_index(a, bb)] - polar.size * grad_weight);
            acc_t& lower = level_grad_out[static_cast<index_t>(polar.lower) * plane];
            if (polar.frac == acc_t(0)) {
              lower += dz;
            } else {
              lower += (acc_t(1) - polar.frac) * dz;
              level_grad_out[static_cast<index_t>(polar.upper) * plane] += polar.frac * dz;
            }
          }
        }
      }
    }
  }
}

// The image gradient that the neighbours p = e - d send to the positions e of the padded image in
// rows [ey0, ey1] x columns [ex0, ex1], summed, per channel of the chunk: sum_e sum_d grad[c, p]
// Wt_p(o(d)) over the p inside the image, with the output gradient around the tile in `tile` (read
// only at pixels inside the image). The positions are a runtime loop inside the unrolled taps, as
// the kernel had them before its border positions were shared out: called with (y, y, x, x), which
// the compiler sees is one position, the m = 8 kernel needed 64 registers and spilled 40 bytes
// (ptxas, sm_90); with the pixel's range computed as below, 56 and none.
template <typename acc_t, typename index_t, int kLevels>
__device__ __forceinline__ void gather_image_gradient(const acc_t* __restrict__ item_orbit_weights, index_t plane,
                                                      const acc_t* __restrict__ tile, int elements, int side,
                                                      int levels, int radius, int height, int width, int y0, int x0,
                                                      int ey0, int ey1, int ex0, int ex1, int count, acc_t* acc) {
  JDRL_UNROLL
  for (int j = 0; j < kChannelChunk<acc_t>; ++j) acc[j] = acc_t(0);
  JDRL_UNROLL
  for (int a = 0; a < (kLevels > 0 ? kLevels : levels); ++a) {
    JDRL_UNROLL
    for (int bb = 0; bb <= a; ++bb) {
      const acc_t* __restrict__ wt = item_orbit_weights + static_cast<index_t>(orbit_index(a, bb)) * plane;
      const int size = orbit_size(a, bb);
      JDRL_UNROLL
      for (int k = 0; k < 8; ++k) {
        if (k >= size) break;
        int dy, dx;
        orbit_offset(a, bb, k, &dy, &dx);
        for (int ey = ey0; ey <= ey1; ++ey) {
          const int py = ey - dy;
          if (py < 0 || py >= height) continue;
          for (int ex = ex0; ex <= ex1; ++ex) {
            const int px = ex - dx;
            if (px < 0 || px >= width) continue;
            const acc_t w = wt[static_cast<index_t>(py) * width + px];
            const int t = (py - y0 + radius) * side + (px - x0 + radius);
            JDRL_UNROLL
            for (int j = 0; j < kChannelChunk<acc_t>; ++j) {
              if (j < count) acc[j] += w * tile[j * elements + t];
            }
          }
        }
      }
    }
  }
}

// gather_image_gradient for a pixel of an interior block, one whose every neighbour p = q - d lies in
// the image (the block and its halo of R pixels inside): no range checks and no position loops, each
// tap's orbit weight at a fixed offset from the pixel's own index and its gradient at a fixed offset
// from the pixel's tile cell `centre`. On an H200 the checked form of 1x3x512x512 float32 took 2.8x
// the forward's time (330 against 119 us), with 88% of its blocks interior.
template <typename acc_t, typename index_t, int kLevels>
__device__ __forceinline__ void gather_interior_gradient(const acc_t* __restrict__ item_orbit_weights, index_t plane,
                                                         const acc_t* __restrict__ tile, int elements, int side,
                                                         int levels, int width, index_t pixel, int centre, int count,
                                                         acc_t* acc) {
  JDRL_UNROLL
  for (int j = 0; j < kChannelChunk<acc_t>; ++j) acc[j] = acc_t(0);
  JDRL_UNROLL
  for (int a = 0; a < (kLevels > 0 ? kLevels : levels); ++a) {
    JDRL_UNROLL
    for (int bb = 0; bb <= a; ++bb) {
      const acc_t* __restrict__ wt = item_orbit_weights + static_cast<index_t>(orbit_index(a, bb)) * plane + pixel;
#if defined(__CUDA_ARCH__)
      // The orbit's plane made opaque to the compiler: otherwise it computes the 225 taps' addresses
      // ahead, out of the channel-chunk and batch loops around this call, and they spill (ptxas,
      // sm_90: 648 bytes at m = 8).
      asm volatile("" : "+l"(wt));
#endif
      const int size = orbit_size(a, bb);
      JDRL_UNROLL
      for (int k = 0; k < 8; ++k) {
        if (k >= size) break;
        int dy, dx;
        orbit_offset(a, bb, k, &dy, &dx);
        const acc_t w = wt[-(static_cast<index_t>(dy) * width + dx)];
        const int t = centre - dy * side - dx;
        JDRL_UNROLL
        for (int j = 0; j < kChannelChunk<acc_t>; ++j) {
          if (j < count) acc[j] += w * tile[j * elements + t];
        }
      }
    }
  }
}

// gather_image_gradient at one padded position e outside the image, for the block's shared border
// work: the same sum over the window's offsets d in rolled loops, with d's orbit computed (few such
// positions per block; unrolled, or as the orbit loops of the generic kernel, it made the m = 8
// kernel spill).
template <typename acc_t, typename index_t>
__device__ __forceinline__ void gather_folded_position(const acc_t* __restrict__ item_orbit_weights, index_t plane,
                                                       const acc_t* __restrict__ tile, int elements, int side,
                                                       int radius, int height, int width, int y0, int x0, int ey,
                                                       int ex, int count, acc_t* acc) {
  JDRL_UNROLL
  for (int j = 0; j < kChannelChunk<acc_t>; ++j) acc[j] = acc_t(0);
  JDRL_NO_UNROLL
  for (int dy = -radius; dy <= radius; ++dy) {
    const int py = ey - dy;
    if (py < 0 || py >= height) continue;
    JDRL_NO_UNROLL
    for (int dx = -radius; dx <= radius; ++dx) {
      const int px = ex - dx;
      if (px < 0 || px >= width) continue;
      const acc_t w = item_orbit_weights[static_cast<index_t>(orbit_of_offset(dy, dx)) * plane +
                                         static_cast<index_t>(py) * width + px];
      const int t = (py - y0 + radius) * side + (px - x0 + radius);
      JDRL_UNROLL
      for (int j = 0; j < kChannelChunk<acc_t>; ++j) {
        if (j < count) acc[j] += w * tile[j * elements + t];
      }
    }
  }
}

// Pass B: the image gradient of each pixel q, the gather at q plus, with replicate padding, the
// gathers at the positions e outside the image that the padding folds onto q (R of them for a pixel
// on an edge, (R + 1)^2 - 1 in a corner). A thread that did those for its own pixel ran 8-64x the
// taps of the others at m = 8 and held up its whole block (on an H200 this kernel's SMs sat idle half
// of its time). Instead the block's threads share them, one position each: a block on the image's
// border first gathers every outside position that folds onto its pixels and leaves the sum in the
// tile at that position (the gathers never read the tile outside the image); then each pixel adds
// the sums folded onto it.
template <typename scalar_t, typename acc_t, typename index_t, int kLevels>
__global__ void __launch_bounds__(kThreads, kMinBlocks) image_backward_kernel(const Params<scalar_t, acc_t> p) {
  const int levels = kLevels > 0 ? kLevels : p.levels;
  const int radius = levels - 1;
  const int orbits = orbit_count(levels);
  const int side = kTile + 2 * radius, elements = side * side;
  const int y0 = blockIdx.y * kTile, x0 = blockIdx.x * kTile;
  const int y = y0 + threadIdx.y, x = x0 + threadIdx.x;
  const bool active = y < p.height && x < p.width;
  const index_t plane = static_cast<index_t>(p.height) * p.width;
  const index_t pixel = static_cast<index_t>(y) * p.width + x;
  // The padded positions that fold onto the block's pixels: rows [fold_y0, fold_y1] x columns
  // [fold_x0, fold_x1], less the image (all inside the tile). The same for every thread of the block.
  // (sv_conv's grad_image_kernel has the same lines. A helper shared by both, tried, made this file's
  // float64 kernel, already at 64 registers, spill 4 bytes (ptxas, sm_90), so each keeps its copy.)
  const int last_y = (y0 + kTile < p.height ? y0 + kTile : p.height) - 1;
  const int last_x = (x0 + kTile < p.width ? x0 + kTile : p.width) - 1;
  const bool fold_block = p.replicate && radius > 0 &&
                          (y0 == 0 || x0 == 0 || last_y == p.height - 1 || last_x == p.width - 1);
  const int fold_y0 = y0 == 0 ? -radius : y0, fold_y1 = last_y == p.height - 1 ? last_y + radius : last_y;
  const int fold_x0 = x0 == 0 ? -radius : x0, fold_x1 = last_x == p.width - 1 ? last_x + radius : last_x;
  int first_row, last_row, first_col, last_col;  // what folds onto this thread's pixel
  folded_range(y, p.height, radius, p.replicate, &first_row, &last_row);
  folded_range(x, p.width, radius, p.replicate, &first_col, &last_col);
  // Its part inside the image (the pixel itself), gathered by the thread; the rest by the block.
  const int own_y0 = first_row > 0 ? first_row : 0, own_y1 = last_row < p.height - 1 ? last_row : p.height - 1;
  const int own_x0 = first_col > 0 ? first_col : 0, own_x1 = last_col < p.width - 1 ? last_col : p.width - 1;
  // A block whose pixels' neighbours all lie in the image: it folds nothing and needs no range checks.
  const bool interior_block = y0 >= radius && x0 >= radius && y0 + kTile + radius <= p.height &&
                              x0 + kTile + radius <= p.width;
  const int centre = (threadIdx.y + radius) * side + threadIdx.x + radius;
  acc_t* tile = cuda::dynamic_shared<acc_t>();
  for (int64_t item = blockIdx.z; item < p.batch; item += gridDim.z) {
    const index_t b = static_cast<index_t>(item);
    const acc_t* __restrict__ item_orbit_weights = p.orbit_weights + b * orbits * plane;
    for (int first = 0; first < p.channels; first += p.channel_chunk) {
      const int count = p.channels - first < p.channel_chunk ? p.channels - first : p.channel_chunk;
      __syncthreads();
      // The gradient around the tile, 0 outside the image (no neighbour there).
      load_tile<scalar_t, acc_t, index_t>(p.grad + (b * p.channels + first) * plane, plane, count, p.height, p.width,
                                          y0, x0, radius, side, false, tile);
      __syncthreads();
      if (fold_block) {
        for (int position = threadIdx.y * kTile + threadIdx.x; position < elements; position += kThreads) {
          const int ey = y0 - radius + position / side, ex = x0 - radius + position % side;
          const bool outside = ey < 0 || ey >= p.height || ex < 0 || ex >= p.width;
          if (!outside || ey < fold_y0 || ey > fold_y1 || ex < fold_x0 || ex > fold_x1) continue;
          acc_t sums[kChannelChunk<acc_t>];
          gather_folded_position<acc_t, index_t>(item_orbit_weights, plane, tile, elements, side, radius, p.height,
                                                 p.width, y0, x0, ey, ex, count, sums);
          JDRL_UNROLL
          for (int j = 0; j < kChannelChunk<acc_t>; ++j) {
            if (j < count) tile[j * elements + position] = sums[j];
          }
        }
        __syncthreads();
      }
      if (!active) continue;
      acc_t acc[kChannelChunk<acc_t>];
      if (interior_block) {
        gather_interior_gradient<acc_t, index_t, kLevels>(item_orbit_weights, plane, tile, elements, side, levels,
                                                          p.width, pixel, centre, count, acc);
      } else {
        gather_image_gradient<acc_t, index_t, kLevels>(item_orbit_weights, plane, tile, elements, side, levels,
                                                       radius, p.height, p.width, y0, x0, own_y0, own_y1, own_x0,
                                                       own_x1, count, acc);
        for (int ey = first_row; ey <= last_row; ++ey) {
          for (int ex = first_col; ex <= last_col; ++ex) {
            if (ey >= own_y0 && ey <= own_y1 && ex >= own_x0 && ex <= own_x1) continue;  // gathered above
            const int t = (ey - y0 + radius) * side + (ex - x0 + radius);
            JDRL_UNROLL
            for (int j = 0; j < kChannelChunk<acc_t>; ++j) {
              if (j < count) acc[j] += tile[j * elements + t];
            }
          }
        }
      }
      JDRL_UNROLL
      for (int j = 0; j < kChannelChunk<acc_t>; ++j) {
        if (j < count) p.out[(b * p.channels + first + j) * plane + pixel] = static_cast<scalar_t>(acc[j]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side, shared by the CUDA launcher (reblur_cuda.cu) and the emulation (csrc/emulation): the
// allocations, the geometry, the choice of kernel. `launch(kernel, geometry, params)` runs one
// kernel and `launch.max_shared_bytes()` says how much shared memory a block may have on its
// device; the tensors are contiguous, on the launcher's device, in scalar_t.

// The most elements that one batch item of a tensor the kernels index has: the image's C, the
// seeds' m(m+1)/2 - 1 or the per-pixel planes (orbit weights, or the generic kernels' scratch).
inline int64_t item_numel(const at::Tensor& image, const at::Tensor& seeds, int levels) {
  const int64_t planes = std::max<int64_t>({image.size(1), seeds.size(1), orbit_count(levels) + levels});
  return planes * image.size(2) * image.size(3);
}

// Batch items per launch: a large batch is cut into launches whose tensors all fit 32-bit indices, so
// that it still runs the specialized kernels (8 x 3 x 2160 x 4096 in float32 has 2.5e9 seeds: in one
// launch it took the generic kernels, 193 ms for the forward on an H200, 55x one item's 3.5 ms). Only
// an item that alone is over the limit makes the launch take the generic kernels, all at once.
inline int64_t items_per_launch(const at::Tensor& image, const at::Tensor& seeds, int levels, int64_t index_limit) {
  const int64_t batch = image.size(0), per_item = item_numel(image, seeds, levels);
  if (per_item == 0 || per_item >= index_limit) return std::max<int64_t>(batch, 1);
  return std::max<int64_t>(1, std::min(batch, (index_limit - 1) / per_item));
}

template <typename scalar_t, typename acc_t>
Geometry geometry_for(const at::Tensor& image, const at::Tensor& seeds, int levels, int64_t max_shared_bytes,
                      int64_t index_limit) {
  return geometry(image.size(0), image.size(1), image.size(2), image.size(3), levels,
                  image.size(0) * item_numel(image, seeds, levels), sizeof(acc_t), max_shared_bytes, index_limit);
}

template <typename scalar_t, typename acc_t>
Params<scalar_t, acc_t> params_for(const at::Tensor& image, const at::Tensor& seeds, const at::Tensor& weights,
                                   const ReblurArgs& args, const Geometry& g) {
  Params<scalar_t, acc_t> p{};
  p.image = image.data_ptr<scalar_t>();
  p.seeds = seeds.data_ptr<scalar_t>();
  p.weights = weights.data_ptr<scalar_t>();
  p.batch = image.size(0);
  p.channels = static_cast<int>(image.size(1));
  p.height = static_cast<int>(image.size(2));
  p.width = static_cast<int>(image.size(3));
  p.levels = args.levels;
  p.channel_chunk = g.channel_chunk;
  p.disk = args.disk;
  p.replicate = args.replicate;
  return p;
}

inline at::Tensor scratch_for(const Geometry& g, const at::Tensor& image, at::ScalarType accumulate_dtype) {
  if (g.scratch_planes == 0) return at::Tensor();
  return at::empty({image.size(0), g.scratch_planes, image.size(2), image.size(3)},
                   image.options().dtype(accumulate_dtype));
}

// Calls body(first, count) for each launch's batch items [first, first + count).
template <typename Body>
void for_each_launch(const at::Tensor& image, const at::Tensor& seeds, int levels, int64_t index_limit, Body&& body) {
  const int64_t batch = image.size(0), step = items_per_launch(image, seeds, levels, index_limit);
  for (int64_t first = 0; first < batch; first += step) body(first, std::min(step, batch - first));
}

// The forward of the items in `image` etc. (one launch's slices of the batch).
template <typename scalar_t, typename acc_t, typename Launch>
void forward_launch(const at::Tensor& image, const at::Tensor& seeds, const at::Tensor& weights, const at::Tensor& out,
                    const ReblurArgs& args, Launch& launch, int64_t index_limit) {
  const Geometry g = geometry_for<scalar_t, acc_t>(image, seeds, args.levels, launch.max_shared_bytes(), index_limit);
  const at::Tensor scratch = scratch_for(g, image, c10::CppTypeToScalarType<acc_t>::value);
  Params<scalar_t, acc_t> p = params_for<scalar_t, acc_t>(image, seeds, weights, args, g);
  p.out = out.data_ptr<scalar_t>();
  p.scratch = scratch.defined() ? scratch.data_ptr<acc_t>() : nullptr;
  if constexpr (kSpecializes<acc_t>) {
    if (g.specialized) {
      launch(&forward_kernel<scalar_t, acc_t, int32_t, kSpecializedLevels>, g.with_slots(), p);
      return;
    }
  }
  launch(&forward_kernel<scalar_t, acc_t, int64_t, 0>, g, p);
}

// `index_limit`: kIndexLimit; tests pass a smaller one to cut a small batch into several launches.
template <typename scalar_t, typename acc_t, typename Launch>
void run_forward(const at::Tensor& image, const at::Tensor& seeds, const at::Tensor& weights, const at::Tensor& out,
                 const ReblurArgs& args, Launch&& launch, int64_t index_limit = kIndexLimit) {
  for_each_launch(image, seeds, args.levels, index_limit, [&](int64_t first, int64_t count) {
    forward_launch<scalar_t, acc_t>(image.narrow(0, first, count), seeds.narrow(0, first, count),
                                    weights.narrow(0, first, count), out.narrow(0, first, count), args, launch,
                                    index_limit);
  });
}

// The backward of one launch's slices of the batch, into the slices of the gradients.
template <typename scalar_t, typename acc_t, typename Launch>
void backward_launch(const at::Tensor& grad, const at::Tensor& image, const at::Tensor& seeds,
                     const at::Tensor& weights, const at::Tensor& grad_image, const at::Tensor& grad_seeds,
                     const at::Tensor& grad_weights, const ReblurArgs& args, Launch& launch, int64_t index_limit) {
  const at::ScalarType accumulate_dtype = c10::CppTypeToScalarType<acc_t>::value;
  const at::Tensor orbit_weights = at::empty({image.size(0), orbit_count(args.levels), image.size(2), image.size(3)},
                                             image.options().dtype(accumulate_dtype));
  const Geometry g = geometry_for<scalar_t, acc_t>(image, seeds, args.levels, launch.max_shared_bytes(), index_limit);
  const at::Tensor scratch = scratch_for(g, image, accumulate_dtype);
  Params<scalar_t, acc_t> p = params_for<scalar_t, acc_t>(image, seeds, weights, args, g);
  p.grad = grad.data_ptr<scalar_t>();
  p.out = grad_image.data_ptr<scalar_t>();
  p.orbit_weights = orbit_weights.data_ptr<acc_t>();
  p.scratch = scratch.defined() ? scratch.data_ptr<acc_t>() : nullptr;
  p.grad_seeds = grad_seeds.data_ptr<acc_t>();
  p.grad_weights = grad_weights.data_ptr<scalar_t>();
  if constexpr (kSpecializes<acc_t>) {
    if (g.specialized) {
      launch(&param_backward_kernel<scalar_t, acc_t, int32_t, kSpecializedLevels>, g.with_slots(), p);
      launch(&image_backward_kernel<scalar_t, acc_t, int32_t, kSpecializedLevels>, g, p);
      return;
    }
  }
  launch(&param_backward_kernel<scalar_t, acc_t, int64_t, 0>, g, p);
  launch(&image_backward_kernel<scalar_t, acc_t, int64_t, 0>, g, p);
}

// Returns (grad_image, grad_seeds in acc_t, grad_weights); every element is written by the kernels.
template <typename scalar_t, typename acc_t, typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_backward(const at::Tensor& grad, const at::Tensor& image,
                                                            const at::Tensor& seeds, const at::Tensor& weights,
                                                            const ReblurArgs& args, Launch&& launch,
                                                            int64_t index_limit = kIndexLimit) {
  const at::ScalarType accumulate_dtype = c10::CppTypeToScalarType<acc_t>::value;
  at::Tensor grad_image = at::empty(image.sizes(), image.options());
  at::Tensor grad_seeds = at::empty(seeds.sizes(), seeds.options().dtype(accumulate_dtype));
  at::Tensor grad_weights = at::empty(weights.sizes(), weights.options());
  for_each_launch(image, seeds, args.levels, index_limit, [&](int64_t first, int64_t count) {
    const auto items = [&](const at::Tensor& t) { return t.narrow(0, first, count); };
    backward_launch<scalar_t, acc_t>(items(grad), items(image), items(seeds), items(weights), items(grad_image),
                                     items(grad_seeds), items(grad_weights), args, launch, index_limit);
  });
  return {grad_image, grad_seeds, grad_weights};
}

}  // namespace reblur_kernels
}  // namespace jdrl
