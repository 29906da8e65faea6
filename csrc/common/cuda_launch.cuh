// Launch scaffolding shared by the CUDA kernels: one thread per output pixel, a grid-stride loop
// with 64-bit indices (B * H * W can pass 2^31), per-thread scratch slots, and the accumulation
// dtype of the float scratch tensors.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>

#include <cstdint>

namespace jdrl {
namespace cuda {

constexpr int kThreadsPerBlock = 256;
// The grid-stride loop covers any amount of work; capping the grid keeps the block count far from
// the 2^31 - 1 limit of gridDim.x.
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

inline unsigned int blocks_for(int64_t work) {
  const int64_t blocks = (work + kThreadsPerBlock - 1) / kThreadsPerBlock;
  return static_cast<unsigned int>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

// Blocks for a kernel whose threads each own a slot of a scratch tensor (reused along the
// grid-stride loop): as many as can be resident on the current device at once, no more, so that
// the scratch does not grow with the image.
template <typename Kernel>
unsigned int resident_blocks_for(Kernel kernel, int64_t work) {
  int multiprocessors = 0, per_multiprocessor = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_multiprocessor, kernel, kThreadsPerBlock, 0));
  const int64_t resident = static_cast<int64_t>(multiprocessors) * (per_multiprocessor > 0 ? per_multiprocessor : 1);
  const int64_t blocks = blocks_for(work);
  return static_cast<unsigned int>(blocks < resident ? blocks : resident);
}

// A thread's slot in a per-thread scratch tensor, and the number of slots (threads in the grid).
__device__ __forceinline__ int64_t thread_slot() { return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t slot_count() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// float32 for float16, bfloat16 and float32; float64 for float64 (at::opmath_type's choice).
inline at::ScalarType accumulate_dtype(at::ScalarType dtype) { return dtype == at::kDouble ? at::kDouble : at::kFloat; }

// A tensor that was accumulated in the accumulation dtype, returned in the inputs' dtype.
inline at::Tensor in_dtype(const at::Tensor& accumulated, at::ScalarType dtype) {
  return accumulated.scalar_type() == dtype ? accumulated : accumulated.to(dtype);
}

}  // namespace cuda
}  // namespace jdrl

// for (int64_t index = first thread's; index < count; index += threads in the grid)
#define JDRL_GRID_STRIDE_LOOP(index, count)                                                          \
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < (count); \
       index += static_cast<int64_t>(blockDim.x) * gridDim.x)
