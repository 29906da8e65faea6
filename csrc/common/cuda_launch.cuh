// Host-side launch helpers of the CUDA kernels: the launches on a stream, the accumulation dtype of
// the float scratch tensors. The kernel-side helpers are in common/cuda_kernel_support.cuh.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>

#include <cstdint>

#include "common/cuda_kernel_support.cuh"

namespace jdrl {
namespace cuda {

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

// Launches a kernel of the tiled ops (reblur, sv_conv) on a stream: `geometry` has the grid, block and
// dynamic shared memory of the launch (reblur_kernels::Geometry, sv_conv_kernels::Geometry), the
// kernel takes one parameter struct. Opts the kernel in to more than the default 48 KB of shared
// memory where the geometry needs it (the emulation has its own launch).
struct StreamTileLaunch {
  cudaStream_t stream;
  // The opt-in limit of shared memory per block on the current device (48 KB before Volta).
  int64_t max_shared_bytes() const {
    int bytes = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, c10::cuda::current_device()));
    return bytes;
  }
  template <typename Kernel, typename Geometry, typename Params>
  void operator()(Kernel kernel, const Geometry& g, const Params& params) const {
    if (static_cast<int64_t>(g.shared_bytes) > kDefaultSharedBytes) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(g.shared_bytes)));
    }
    kernel<<<g.grid, g.block, g.shared_bytes, stream>>>(params);
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
