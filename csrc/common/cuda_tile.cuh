// The shared-memory image tile of the tiled CUDA kernels (reblur, sv_conv): a block of kTile x kTile
// threads owns a kTile x kTile tile of output pixels, one per thread, and loads the image (or the
// output gradient) around it, the tile and a halo of R pixels on each side, into shared memory, with
// the border padding applied once, at load. Compiled by nvcc and, under common/cuda_host_emulation.h,
// by the host compiler (the emulated tests).
#pragma once

#include "common/cuda_kernel_support.cuh"

namespace jdrl {
namespace cuda {

constexpr int kTile = 16;  // a block is kTile x kTile threads
constexpr int kTileThreads = kTile * kTile;

// The extended image at (y, x) of one (H, W) plane: "replicate" clamps the coordinates, zeros reads 0
// outside (SPEC 3's Ie).
template <typename scalar_t, typename acc_t, typename index_t>
__device__ __forceinline__ acc_t padded_value(const scalar_t* __restrict__ plane_data, int height, int width, int y,
                                              int x, bool replicate) {
  if (replicate) {
    y = y < 0 ? 0 : (y >= height ? height - 1 : y);
    x = x < 0 ? 0 : (x >= width ? width - 1 : x);
  } else if (y < 0 || y >= height || x < 0 || x >= width) {
    return acc_t(0);
  }
  return static_cast<acc_t>(plane_data[static_cast<index_t>(y) * width + x]);
}

// Loads channels [0, count) of `source` (a (count, H, W) view, `plane` apart) around the block's
// tile into `tile`: element (i, j) of plane k is the extended image at (y0 - R + i, x0 - R + j)
// (padded_value). Every thread of the block calls it. With `side` a compile-time constant (a
// specialized radius) the divisions below are by constants.
template <typename scalar_t, typename acc_t, typename index_t>
__device__ __forceinline__ void load_tile(const scalar_t* __restrict__ source, index_t plane, int count, int height,
                                          int width, int y0, int x0, int radius, int side, bool replicate,
                                          acc_t* __restrict__ tile) {
  const int elements = side * side;
  for (int e = threadIdx.y * kTile + threadIdx.x; e < count * elements; e += kTileThreads) {
    const int k = e / elements;
    const int within = e - k * elements;
    const int i = within / side;
    tile[e] = padded_value<scalar_t, acc_t, index_t>(source + static_cast<index_t>(k) * plane, height, width,
                                                     y0 - radius + i, x0 - radius + (within - i * side), replicate);
  }
}


}  // namespace cuda
}  // namespace jdrl
