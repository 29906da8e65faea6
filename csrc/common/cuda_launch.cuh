// Host-side launch helpers of the CUDA kernels: the occupancy query, the accumulation dtype of the
// float scratch tensors. The kernel-side helpers are in common/cuda_kernel_support.cuh.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>

#include <cstdint>

#include "common/cuda_kernel_support.cuh"

namespace jdrl {
namespace cuda {

// The blocks of `kernel` (kThreadsPerBlock threads, no dynamic shared memory) that the current
// device holds at once.
template <typename Kernel>
int64_t resident_blocks(Kernel kernel) {
  int multiprocessors = 0, per_multiprocessor = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_multiprocessor, kernel, kThreadsPerBlock, 0));
  return static_cast<int64_t>(multiprocessors) * (per_multiprocessor > 0 ? per_multiprocessor : 1);
}

// Launches a kernel of one thread per pixel (cuda::PixelGrid, no dynamic shared memory) on a
// stream: the `launch` of the ops' run_forward/run_backward (the emulation has its own).
struct StreamPixelLaunch {
  cudaStream_t stream;
  template <typename Kernel, typename... Args>
  void operator()(Kernel kernel, const PixelGrid& g, Args... args) const {
    kernel<<<g.grid, g.block, 0, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

// float32 for float16, bfloat16 and float32; float64 for float64 (at::opmath_type's choice).
inline at::ScalarType accumulate_dtype(at::ScalarType dtype) { return dtype == at::kDouble ? at::kDouble : at::kFloat; }

// A tensor that was accumulated in the accumulation dtype, returned in the inputs' dtype.
inline at::Tensor in_dtype(const at::Tensor& accumulated, at::ScalarType dtype) {
  return accumulated.scalar_type() == dtype ? accumulated : accumulated.to(dtype);
}

}  // namespace cuda
}  // namespace jdrl
