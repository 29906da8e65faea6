// What the kernel headers (csrc/*/*_kernels.cuh) need besides pixel_math.h: the launch constants
// and grid-stride helpers, and dynamic shared memory. Under nvcc these are the real thing; under a
// host compiler they come from common/cuda_host_emulation.h, which runs the same __global__
// functions on CPU threads (the emulated ops of csrc/emulation, tested by tests/test_cuda_emulated.py).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#else
#include "common/cuda_host_emulation.h"
#endif

namespace jdrl {
namespace cuda {

constexpr int kThreadsPerBlock = 256;
// The grid-stride loop covers any amount of work; capping the grid keeps the block count far from
// the 2^31 - 1 limit of gridDim.x.
constexpr int64_t kMaxBlocks = int64_t(1) << 20;
// Dynamic shared memory a kernel may use without opting in (cudaFuncAttributeMaxDynamicSharedMemorySize).
constexpr int64_t kDefaultSharedBytes = 48 * 1024;

inline unsigned int blocks_for(int64_t work) {
  const int64_t blocks = (work + kThreadsPerBlock - 1) / kThreadsPerBlock;
  return static_cast<unsigned int>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

// The launch of a kernel with one thread per pixel (flow_warp: over a grid-stride loop;
// isotropic_kernels: a grid of its own, blockIdx.z over the batch).
struct PixelGrid {
  dim3 grid, block;
};
inline PixelGrid pixel_grid(int64_t work) { return {dim3(blocks_for(work)), dim3(kThreadsPerBlock)}; }

#if defined(__CUDACC__)
// The block's dynamic shared memory (the third launch parameter), as an array of T.
template <typename T>
__device__ __forceinline__ T* dynamic_shared() {
  extern __shared__ __align__(16) unsigned char jdrl_dynamic_shared[];
  return reinterpret_cast<T*>(jdrl_dynamic_shared);
}
#else
template <typename T>
inline T* dynamic_shared() {
  return reinterpret_cast<T*>(emulation::current_shared_memory());
}
#endif

// `x`, hidden from the compiler (an empty asm claims to change it), so that what is computed from it
// stays where the code computes it: an address from a level's compile-time radius in reblur was
// otherwise computed ahead of the rolled loop over the levels and held in registers across it (its
// parameter backward spilled 16 bytes, ptxas sm_90).
__device__ __forceinline__ int opaque(int x) {
#if defined(__CUDA_ARCH__)
  asm volatile("" : "+r"(x));
#endif
  return x;
}

}  // namespace cuda
}  // namespace jdrl

// for (int64_t index = first thread's; index < count; index += threads in the grid)
#define JDRL_GRID_STRIDE_LOOP(index, count)                                                          \
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < (count); \
       index += static_cast<int64_t>(blockDim.x) * gridDim.x)
