// The orbit table of common/pixel_math.h on the device, for the CUDA kernels of reblur and
// isotropic_kernels: computed once per call by the function the CPU kernels use.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>

#include <cstdint>

#include "common/pixel_math.h"

namespace jdrl {
namespace cuda {

// The orbits' polar positions, computed once per call on the device by the function the CPU uses.
template <typename acc_t>
__global__ void orbit_table_kernel(int levels, OrbitPolar<acc_t>* table) {
  if (blockIdx.x == 0 && threadIdx.x == 0) fill_orbit_table<acc_t>(levels, table);
}

template <typename acc_t>
inline at::Tensor orbit_table_on_device(int levels, const at::Tensor& like, cudaStream_t stream) {
  const int64_t bytes = static_cast<int64_t>(orbit_count(levels)) * static_cast<int64_t>(sizeof(OrbitPolar<acc_t>));
  at::Tensor table = at::empty({bytes}, like.options().dtype(at::kByte));
  orbit_table_kernel<acc_t>
      <<<1, 1, 0, stream>>>(levels, reinterpret_cast<OrbitPolar<acc_t>*>(table.data_ptr<uint8_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return table;
}

template <typename acc_t>
inline const OrbitPolar<acc_t>* table_pointer(const at::Tensor& table) {
  return reinterpret_cast<const OrbitPolar<acc_t>*>(table.data_ptr<uint8_t>());
}

}  // namespace cuda
}  // namespace jdrl
