// The CUDA kernels of sv_conv (SPEC section 3) and their launch geometry, compiled by nvcc for the
// device (sv_conv_cuda.cu) and by the host compiler under common/cuda_host_emulation.h
// (csrc/emulation), which runs them in the tests.
//
// A block of kTile x kTile threads owns a kTile x kTile tile of output pixels, one per thread
// (common/cuda_tile.cuh). The block loads the image around its tile (the tile and a halo of R pixels,
// the border padding applied once, at load) into shared memory, a chunk of channels at a time; each
// thread then reads the K*K taps of its pixel, one per kernel plane (consecutive threads,
// consecutive pixels: coalesced), and multiplies them with the tile. blockIdx.z runs over the batch
// (a block loops over b when B > 65535); each batch item's base offset is computed once, in 64
// bits, and the offsets inside an item in index_t.
//
// Three variants of each kernel: R = 7 (K = 15, the method's case) known at compile time with 32-bit
// offsets (kRadius = 7, int32_t); any R with 32-bit offsets (kRadius = 0, int32_t); any R with 64-bit
// offsets, for an item of more than 2^31 - 1 elements (kRadius = 0, int64_t).
//
// Backward, without atomics:
//   kernel gradient, per pixel p: grad_kernels[t(d), p] = sum_c grad[c, p] Ie[c, p + d], from the
//     image tile (channels [0, 4)) and the gradient of p in registers, each tap written once;
//     channels past the first four are read from global memory (a slow path; the method's images
//     have 3);
//   image gradient, per pixel q: a gather over the neighbours p = e - d (e: the extended positions
//     that the padding folds onto q, common/pixel_math.h's folded_range) of grad[c, p] * kernels[t(d), p],
//     with the output gradient around the tile in shared memory (0 outside the image); the positions
//     outside the image are gathered by the whole block, one per thread (grad_image_kernel).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "common/cuda_kernel_support.cuh"
#include "common/cuda_tile.cuh"
#include "common/pixel_math.h"
#include "sv_conv/sv_conv.h"

namespace jdrl {
namespace sv_conv_kernels {

using cuda::kTile;
constexpr int kThreads = cuda::kTileThreads;
// Blocks of kThreads that a streaming multiprocessor should hold at once: 4 x 256 threads = 50% of
// its 2048, which caps the kernels at 64 registers per thread (65536 / (4 x 256)), as reblur's.
// Without it, ptxas gave the image-gradient kernels 32 registers and spilled (sm_90).
constexpr int kMinBlocks = 4;
constexpr int kChannelChunk = 4;       // at most this many channels in shared memory at once
constexpr int kSpecializedRadius = 7;  // R of the compile-time specialization (K = 15)
// The specialization is for float accumulation (float32, float16, bfloat16); float64 takes the generic
// kernels at every R (in doubles the kernel gradient's unrolled taps spilled at 64 registers, sm_90).
template <typename acc_t>
constexpr bool kSpecializes = sizeof(acc_t) == sizeof(float);
constexpr unsigned int kMaxGridZ = 65535;

// Everything an sv_conv kernel reads and writes; a kernel uses the fields its pass needs.
template <typename scalar_t>
struct Params {
  const scalar_t* image;
  const scalar_t* kernels;
  const scalar_t* grad;     // backward: the output gradient
  scalar_t* out;            // forward: the output; image-gradient kernel: the image gradient
  scalar_t* grad_kernels;   // kernel-gradient kernel
  int64_t batch;
  int channels, height, width, radius;
  int channel_chunk;        // channels per shared tile (Geometry::channel_chunk)
  bool replicate;
};

// The launch of every sv_conv kernel: one thread per pixel in kTile x kTile blocks, blockIdx.z over
// the batch, and the tile of `channel_chunk` channels with its halo in dynamic shared memory.
struct Geometry {
  dim3 grid, block;
  int channel_chunk;
  size_t shared_bytes;  // over cuda::kDefaultSharedBytes (large R only), the launcher opts in
  bool index32;         // every offset inside a batch item fits int32_t
  bool specialized;     // R = 7, float accumulation and index32
};

// Which index type a launch uses: int32_t where it fits, else int64_t; kInt64 forces the 64-bit
// kernels (the emulated tests, to cover them at small sizes).
enum class IndexWidth { kFitting, kInt64 };

// `item_numel`: the most elements of one batch item of a tensor the kernels index ((C or K*K) * H * W);
// `accumulate_bytes`: sizeof(acc_t), the tile's element type; `max_shared_bytes`: the most shared
// memory a block may use on this device (opt-in limit).
inline Geometry geometry(int64_t batch, int64_t channels, int64_t height, int64_t width, int radius,
                         int64_t item_numel, size_t accumulate_bytes, int64_t max_shared_bytes, IndexWidth width_kind) {
  const int64_t tiles_x = (width + kTile - 1) / kTile, tiles_y = (height + kTile - 1) / kTile;
  TORCH_CHECK_VALUE(tiles_y <= 65535, "sv_conv on CUDA: height ", height, " is over ", 65535 * kTile);
  // Params keeps C and W as int (the tile arithmetic is 32-bit even in the 64-bit kernels): larger
  // values would wrap and leave the output unwritten.
  TORCH_CHECK_VALUE(width <= INT32_MAX - kTile && channels <= INT32_MAX, "sv_conv on CUDA: width ", width,
                    " and channels ", channels, " must each be below 2^31 - ", kTile);
  const int64_t side = kTile + 2 * static_cast<int64_t>(radius);
  const int64_t tile_bytes = side * side * static_cast<int64_t>(accumulate_bytes);
  int chunk = static_cast<int>(std::min<int64_t>(std::max<int64_t>(channels, 1), kChannelChunk));
  while (chunk > 1 && chunk * tile_bytes > cuda::kDefaultSharedBytes) --chunk;
  TORCH_CHECK_VALUE(chunk * tile_bytes <= max_shared_bytes, "sv_conv on CUDA: kernels of size K = ", 2 * radius + 1,
                    " need an image tile of ", side, " x ", side, " values (", chunk * tile_bytes,
                    " bytes of shared memory per block), over this device's ", max_shared_bytes,
                    " bytes; use smaller kernels or the CPU");
  Geometry g;
  g.grid = dim3(static_cast<unsigned int>(tiles_x), static_cast<unsigned int>(tiles_y),
                static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(batch, kMaxGridZ))));
  g.block = dim3(kTile, kTile, 1);
  g.channel_chunk = chunk;
  g.shared_bytes = static_cast<size_t>(chunk * tile_bytes);
  g.index32 = width_kind == IndexWidth::kFitting && item_numel < std::numeric_limits<int32_t>::max();
  g.specialized = g.index32 && radius == kSpecializedRadius && accumulate_bytes == sizeof(float);
  return g;
}

// The pixel a thread owns and where its window starts in the tile.
struct TilePixel {
  int y0, x0;     // the block's first output pixel
  int y, x;       // the thread's pixel
  bool active;    // inside the image (the block's last row and column of tiles may overhang)
  int window;     // tile position of the window's top-left offset (-R, -R)
};

__device__ __forceinline__ TilePixel tile_pixel(int height, int width, int side) {
  TilePixel t;
  t.y0 = blockIdx.y * kTile;
  t.x0 = blockIdx.x * kTile;
  t.y = t.y0 + threadIdx.y;
  t.x = t.x0 + threadIdx.x;
  t.active = t.y < height && t.x < width;
  t.window = threadIdx.y * side + threadIdx.x;
  return t;
}

template <typename scalar_t, typename acc_t, typename index_t, int kRadius>
__global__ void __launch_bounds__(kThreads, kMinBlocks) forward_kernel(const Params<scalar_t> p) {
  const int radius = kRadius > 0 ? kRadius : p.radius;
  const int size = 2 * radius + 1;
  const int side = kTile + 2 * radius, elements = side * side;
  const TilePixel t = tile_pixel(p.height, p.width, side);
  const index_t plane = static_cast<index_t>(p.height) * p.width;
  const index_t pixel = static_cast<index_t>(t.y) * p.width + t.x;
  const int64_t image_stride = static_cast<int64_t>(p.channels) * plane;
  const int64_t kernel_stride = static_cast<int64_t>(size) * size * plane;
  acc_t* const tile = cuda::dynamic_shared<acc_t>();
  for (int64_t item = blockIdx.z; item < p.batch; item += gridDim.z) {
    const scalar_t* __restrict__ image = p.image + item * image_stride;
    const scalar_t* __restrict__ taps = p.kernels + item * kernel_stride + pixel;
    scalar_t* __restrict__ out = p.out + item * image_stride + pixel;
    for (int first = 0; first < p.channels; first += p.channel_chunk) {
      const int count = p.channels - first < p.channel_chunk ? p.channels - first : p.channel_chunk;
      __syncthreads();  // every thread is done with the previous chunk's tile
      cuda::load_tile<scalar_t, acc_t, index_t>(image + static_cast<index_t>(first) * plane, plane, count, p.height,
                                                p.width, t.y0, t.x0, radius, side, p.replicate, tile);
      __syncthreads();
      if (!t.active) continue;
      acc_t acc[kChannelChunk];
      JDRL_UNROLL
      for (int j = 0; j < kChannelChunk; ++j) acc[j] = acc_t(0);
      JDRL_NO_UNROLL  // the rows rolled, each row's taps unrolled (all 225 taps unrolled held too many registers)
      for (int dy = 0; dy < size; ++dy) {
        JDRL_UNROLL
        for (int dx = 0; dx < (kRadius > 0 ? 2 * kRadius + 1 : size); ++dx) {
          // A padded zero is multiplied in (not skipped), as on the CPU: a NaN weight gives NaN.
          const acc_t w = static_cast<acc_t>(taps[static_cast<index_t>(dy * size + dx) * plane]);
          const int at = t.window + dy * side + dx;
          JDRL_UNROLL
          for (int j = 0; j < kChannelChunk; ++j) {
            if (j < count) acc[j] += w * tile[j * elements + at];
          }
        }
      }
      JDRL_UNROLL
      for (int j = 0; j < kChannelChunk; ++j) {
        if (j < count) out[static_cast<index_t>(first + j) * plane] = static_cast<scalar_t>(acc[j]);
      }
    }
  }
}

// The kernel gradient: grad_kernels[t(d), p] = sum_c grad[c, p] Ie[c, p + d], each tap written once.
// The specialization (kRadius = 7) takes C <= kChannelChunk only (the tile holds every channel: with
// the global-memory path for more channels next to its unrolled taps, ptxas spilled); more channels
// take the generic kernel, whatever R.
template <typename scalar_t, typename acc_t, typename index_t, int kRadius>
__global__ void __launch_bounds__(kThreads, kMinBlocks) grad_kernels_kernel(const Params<scalar_t> p) {
  const int radius = kRadius > 0 ? kRadius : p.radius;
  const int size = 2 * radius + 1;
  const int side = kTile + 2 * radius, elements = side * side;
  const TilePixel t = tile_pixel(p.height, p.width, side);
  const index_t plane = static_cast<index_t>(p.height) * p.width;
  const index_t pixel = static_cast<index_t>(t.y) * p.width + t.x;
  const int64_t image_stride = static_cast<int64_t>(p.channels) * plane;
  const int64_t kernel_stride = static_cast<int64_t>(size) * size * plane;
  // The tile holds the first channels (a chunk); the others come from global memory.
  const int count = p.channels < p.channel_chunk ? p.channels : p.channel_chunk;
  acc_t* const tile = cuda::dynamic_shared<acc_t>();
  for (int64_t item = blockIdx.z; item < p.batch; item += gridDim.z) {
    const scalar_t* __restrict__ image = p.image + item * image_stride;
    const scalar_t* __restrict__ grad = p.grad + item * image_stride + pixel;
    scalar_t* __restrict__ grad_taps = p.grad_kernels + item * kernel_stride + pixel;
    __syncthreads();  // every thread is done with the previous item's tile
    cuda::load_tile<scalar_t, acc_t, index_t>(image, plane, count, p.height, p.width, t.y0, t.x0, radius, side,
                                              p.replicate, tile);
    __syncthreads();
    if (!t.active) continue;
    acc_t pixel_grad[kChannelChunk];
    JDRL_UNROLL
    for (int j = 0; j < kChannelChunk; ++j) {
      pixel_grad[j] = j < count ? static_cast<acc_t>(grad[static_cast<index_t>(j) * plane]) : acc_t(0);
    }
    // One tap: the tile's channels from registers and shared memory, the others (global_channels)
    // from global memory.
    const auto tap = [&](int dy, int dx, bool global_channels) {
      const int at = t.window + dy * side + dx;
      acc_t total = 0;
      JDRL_UNROLL
      for (int j = 0; j < kChannelChunk; ++j) {
        if (j < count) total += pixel_grad[j] * tile[j * elements + at];
      }
      if (global_channels) {
        for (int c = count; c < p.channels; ++c) {
          total += static_cast<acc_t>(grad[static_cast<index_t>(c) * plane]) *
                   cuda::padded_value<scalar_t, acc_t, index_t>(image + static_cast<index_t>(c) * plane, p.height,
                                                                p.width, t.y + dy - radius, t.x + dx - radius,
                                                                p.replicate);
        }
      }
      grad_taps[static_cast<index_t>(dy * size + dx) * plane] = static_cast<scalar_t>(total);
    };
    if (kRadius > 0 || p.channels <= count) {  // the tile holds every channel (C <= 4)
      JDRL_NO_UNROLL
      for (int dy = 0; dy < size; ++dy) {
        JDRL_UNROLL
        for (int dx = 0; dx < (kRadius > 0 ? 2 * kRadius + 1 : size); ++dx) tap(dy, dx, false);
      }
    } else {  // rolled: unrolled, the global channel loops of 15 taps held too many registers (spills)
      JDRL_NO_UNROLL
      for (int dy = 0; dy < size; ++dy) {
        JDRL_NO_UNROLL
        for (int dx = 0; dx < size; ++dx) tap(dy, dx, true);
      }
    }
  }
}

// The image gradient that the neighbours p = e - d send to one padded position e outside the image,
// per channel of the chunk: sum_d grad[c, p] kernels[t(d), p] over the p inside the image, with the
// output gradient around the tile in `tile` (read only at pixels inside the image). Rolled loops:
// a block runs few of these (see grad_image_kernel).
template <typename scalar_t, typename acc_t, typename index_t>
__device__ __forceinline__ void gather_folded_position(const scalar_t* __restrict__ kernels, index_t plane,
                                                       const acc_t* __restrict__ tile, int elements, int side,
                                                       int radius, int height, int width, int y0, int x0, int ey,
                                                       int ex, int count, acc_t* acc) {
  const int size = 2 * radius + 1;
  JDRL_UNROLL
  for (int j = 0; j < kChannelChunk; ++j) acc[j] = acc_t(0);
  JDRL_NO_UNROLL
  for (int dy = 0; dy < size; ++dy) {
    const int py = ey - (dy - radius);
    if (py < 0 || py >= height) continue;
    JDRL_NO_UNROLL
    for (int dx = 0; dx < size; ++dx) {
      const int px = ex - (dx - radius);
      if (px < 0 || px >= width) continue;
      const acc_t w =
          static_cast<acc_t>(kernels[static_cast<index_t>(dy * size + dx) * plane + static_cast<index_t>(py) * width + px]);
      const int at = (py - y0 + radius) * side + (px - x0 + radius);
      JDRL_UNROLL
      for (int j = 0; j < kChannelChunk; ++j) {
        if (j < count) acc[j] += w * tile[j * elements + at];
      }
    }
  }
}

// The image gradient at each pixel q, gathered from the neighbours p = e - d that read q (no atomics):
// the gather at q, plus, with replicate padding, the gathers at the padded positions e outside the
// image that fold onto q (R of them on an edge, (R + 1)^2 - 1 in a corner). As in reblur's
// image_backward_kernel, a block on the image's border shares those among its threads, one position
// each, and leaves each sum in the tile's cell of that position (never read by the gathers); each
// border pixel then adds the sums folded onto it. (Before, each border pixel gathered them all
// itself, up to 64x the taps of the others at R = 7, and its block held up the kernel.)
template <typename scalar_t, typename acc_t, typename index_t, int kRadius>
__global__ void __launch_bounds__(kThreads, kMinBlocks) grad_image_kernel(const Params<scalar_t> p) {
  const int radius = kRadius > 0 ? kRadius : p.radius;
  const int size = 2 * radius + 1;
  const int side = kTile + 2 * radius, elements = side * side;
  const TilePixel t = tile_pixel(p.height, p.width, side);
  const index_t plane = static_cast<index_t>(p.height) * p.width;
  const index_t pixel = static_cast<index_t>(t.y) * p.width + t.x;
  const int64_t image_stride = static_cast<int64_t>(p.channels) * plane;
  const int64_t kernel_stride = static_cast<int64_t>(size) * size * plane;
  // The padded positions that fold onto the block's pixels: rows [fold_y0, fold_y1] x columns
  // [fold_x0, fold_x1], less the image (all inside the tile). The same for every thread of the block.
  // (The same lines as reblur's image_backward_kernel; why they are not shared: a comment there.)
  const int last_y = (t.y0 + kTile < p.height ? t.y0 + kTile : p.height) - 1;
  const int last_x = (t.x0 + kTile < p.width ? t.x0 + kTile : p.width) - 1;
  const bool fold_block = p.replicate && radius > 0 &&
                          (t.y0 == 0 || t.x0 == 0 || last_y == p.height - 1 || last_x == p.width - 1);
  const int fold_y0 = t.y0 == 0 ? -radius : t.y0, fold_y1 = last_y == p.height - 1 ? last_y + radius : last_y;
  const int fold_x0 = t.x0 == 0 ? -radius : t.x0, fold_x1 = last_x == p.width - 1 ? last_x + radius : last_x;
  int first_row, last_row, first_col, last_col;  // what folds onto this thread's pixel
  folded_range(t.y, p.height, radius, p.replicate, &first_row, &last_row);
  folded_range(t.x, p.width, radius, p.replicate, &first_col, &last_col);
  // Its part inside the image (the pixel itself), gathered by the thread; the rest by the block.
  const int own_y0 = first_row > 0 ? first_row : 0, own_y1 = last_row < p.height - 1 ? last_row : p.height - 1;
  const int own_x0 = first_col > 0 ? first_col : 0, own_x1 = last_col < p.width - 1 ? last_col : p.width - 1;
  acc_t* const tile = cuda::dynamic_shared<acc_t>();
  for (int64_t item = blockIdx.z; item < p.batch; item += gridDim.z) {
    const scalar_t* __restrict__ grad = p.grad + item * image_stride;
    const scalar_t* __restrict__ kernels = p.kernels + item * kernel_stride;
    scalar_t* __restrict__ grad_image = p.out + item * image_stride + pixel;
    for (int first = 0; first < p.channels; first += p.channel_chunk) {
      const int count = p.channels - first < p.channel_chunk ? p.channels - first : p.channel_chunk;
      __syncthreads();
      // The output gradient around the tile, 0 outside the image (no neighbour there).
      cuda::load_tile<scalar_t, acc_t, index_t>(grad + static_cast<index_t>(first) * plane, plane, count, p.height,
                                                p.width, t.y0, t.x0, radius, side, false, tile);
      __syncthreads();
      if (fold_block) {
        for (int position = threadIdx.y * kTile + threadIdx.x; position < elements; position += kThreads) {
          const int ey = t.y0 - radius + position / side, ex = t.x0 - radius + position % side;
          const bool outside = ey < 0 || ey >= p.height || ex < 0 || ex >= p.width;
          if (!outside || ey < fold_y0 || ey > fold_y1 || ex < fold_x0 || ex > fold_x1) continue;
          acc_t sums[kChannelChunk];
          gather_folded_position<scalar_t, acc_t, index_t>(kernels, plane, tile, elements, side, radius, p.height,
                                                           p.width, t.y0, t.x0, ey, ex, count, sums);
          JDRL_UNROLL
          for (int j = 0; j < kChannelChunk; ++j) {
            if (j < count) tile[j * elements + position] = sums[j];
          }
        }
        __syncthreads();
      }
      if (!t.active) continue;
      acc_t acc[kChannelChunk];
      JDRL_UNROLL
      for (int j = 0; j < kChannelChunk; ++j) acc[j] = acc_t(0);
      for (int ey = own_y0; ey <= own_y1; ++ey) {
        JDRL_NO_UNROLL
        for (int dy = 0; dy < size; ++dy) {
          const int py = ey - (dy - radius);
          if (py < 0 || py >= p.height) continue;
          for (int ex = own_x0; ex <= own_x1; ++ex) {
            JDRL_UNROLL
            for (int dx = 0; dx < (kRadius > 0 ? 2 * kRadius + 1 : size); ++dx) {
              const int px = ex - (dx - radius);
              if (px < 0 || px >= p.width) continue;
              const acc_t w = static_cast<acc_t>(
                  kernels[static_cast<index_t>(dy * size + dx) * plane + static_cast<index_t>(py) * p.width + px]);
              const int at = (py - t.y0 + radius) * side + (px - t.x0 + radius);
              JDRL_UNROLL
              for (int j = 0; j < kChannelChunk; ++j) {
                if (j < count) acc[j] += w * tile[j * elements + at];
              }
            }
          }
        }
      }
      for (int ey = first_row; ey <= last_row; ++ey) {
        for (int ex = first_col; ex <= last_col; ++ex) {
          if (ey >= own_y0 && ey <= own_y1 && ex >= own_x0 && ex <= own_x1) continue;  // gathered above
          const int at = (ey - t.y0 + radius) * side + (ex - t.x0 + radius);
          JDRL_UNROLL
          for (int j = 0; j < kChannelChunk; ++j) {
            if (j < count) acc[j] += tile[j * elements + at];
          }
        }
      }
      JDRL_UNROLL
      for (int j = 0; j < kChannelChunk; ++j) {
        if (j < count) grad_image[static_cast<index_t>(first + j) * plane] = static_cast<scalar_t>(acc[j]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side, shared by the CUDA launcher (sv_conv_cuda.cu) and the emulation (csrc/emulation): the
// geometry, the choice of kernel and its arguments. `launch(kernel, geometry, params)` runs one
// kernel and `launch.max_shared_bytes()` says how much shared memory a block may have on its device
// (cuda::StreamTileLaunch); the tensors are contiguous, on the launcher's device, in scalar_t, and
// not empty.

template <typename scalar_t, typename acc_t>
Geometry geometry_for(const at::Tensor& image, const at::Tensor& kernels, const SvConvArgs& args,
                      int64_t max_shared_bytes, IndexWidth width_kind) {
  const int64_t item_numel = std::max(image.size(1), kernels.size(1)) * image.size(2) * image.size(3);
  return geometry(image.size(0), image.size(1), image.size(2), image.size(3), args.radius, item_numel, sizeof(acc_t),
                  max_shared_bytes, width_kind);
}

template <typename scalar_t>
Params<scalar_t> params_for(const at::Tensor& image, const at::Tensor& kernels, const SvConvArgs& args,
                            const Geometry& g) {
  Params<scalar_t> p{};
  p.image = image.data_ptr<scalar_t>();
  p.kernels = kernels.data_ptr<scalar_t>();
  p.batch = image.size(0);
  p.channels = static_cast<int>(image.size(1));
  p.height = static_cast<int>(image.size(2));
  p.width = static_cast<int>(image.size(3));
  p.radius = args.radius;
  p.channel_chunk = g.channel_chunk;
  p.replicate = args.replicate;
  return p;
}

template <typename scalar_t, typename acc_t, typename Launch>
void run_forward(const at::Tensor& image, const at::Tensor& kernels, const at::Tensor& out, const SvConvArgs& args,
                 Launch&& launch, IndexWidth width_kind = IndexWidth::kFitting) {
  const Geometry g = geometry_for<scalar_t, acc_t>(image, kernels, args, launch.max_shared_bytes(), width_kind);
  Params<scalar_t> p = params_for<scalar_t>(image, kernels, args, g);
  p.out = out.data_ptr<scalar_t>();
  if constexpr (kSpecializes<acc_t>) {
    if (g.specialized) {
      launch(&forward_kernel<scalar_t, acc_t, int32_t, kSpecializedRadius>, g, p);
      return;
    }
  }
  if (g.index32) {
    launch(&forward_kernel<scalar_t, acc_t, int32_t, 0>, g, p);
  } else {
    launch(&forward_kernel<scalar_t, acc_t, int64_t, 0>, g, p);
  }
}

// Writes every element of grad_image and grad_kernels.
template <typename scalar_t, typename acc_t, typename Launch>
void run_backward(const at::Tensor& grad, const at::Tensor& image, const at::Tensor& kernels,
                  const at::Tensor& grad_image, const at::Tensor& grad_kernels, const SvConvArgs& args,
                  Launch&& launch, IndexWidth width_kind = IndexWidth::kFitting) {
  const Geometry g = geometry_for<scalar_t, acc_t>(image, kernels, args, launch.max_shared_bytes(), width_kind);
  Params<scalar_t> p = params_for<scalar_t>(image, kernels, args, g);
  p.grad = grad.data_ptr<scalar_t>();
  p.out = grad_image.data_ptr<scalar_t>();
  p.grad_kernels = grad_kernels.data_ptr<scalar_t>();
  if constexpr (kSpecializes<acc_t>) {
    if (g.specialized) {
      if (p.channels <= g.channel_chunk) {
        launch(&grad_kernels_kernel<scalar_t, acc_t, int32_t, kSpecializedRadius>, g, p);
      } else {
        launch(&grad_kernels_kernel<scalar_t, acc_t, int32_t, 0>, g, p);
      }
      launch(&grad_image_kernel<scalar_t, acc_t, int32_t, kSpecializedRadius>, g, p);
      return;
    }
  }
  if (g.index32) {
    launch(&grad_kernels_kernel<scalar_t, acc_t, int32_t, 0>, g, p);
    launch(&grad_image_kernel<scalar_t, acc_t, int32_t, 0>, g, p);
  } else {
    launch(&grad_kernels_kernel<scalar_t, acc_t, int64_t, 0>, g, p);
    launch(&grad_image_kernel<scalar_t, acc_t, int64_t, 0>, g, p);
  }
}

}  // namespace sv_conv_kernels
}  // namespace jdrl
