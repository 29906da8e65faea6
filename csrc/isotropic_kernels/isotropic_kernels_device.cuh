// The CUDA kernels of isotropic_kernels, compiled by nvcc for the device (isotropic_kernels_cuda.cu) and by the host
// compiler under common/cuda_host_emulation.h (csrc/emulation), which runs them in the tests.
#pragma once

#include <cstdint>

#include "common/cuda_kernel_support.cuh"
#include "common/pixel_math.h"

namespace jdrl {
namespace isotropic_device {

template <typename scalar_t, typename acc_t>
__global__ void isotropic_kernels_forward_kernel(const scalar_t* __restrict__ seeds,
                                                 const OrbitPolar<acc_t>* __restrict__ table,
                                                 acc_t* __restrict__ slot_scratch, scalar_t* __restrict__ kernels,
                                                 int64_t batch, int64_t plane, int radius, bool disk) {
  const int64_t taps = static_cast<int64_t>(2 * radius + 1) * (2 * radius + 1);
  const int64_t slots = cuda::slot_count();
  acc_t* probs = slot_scratch + cuda::thread_slot();  // probs[o * slots]
  JDRL_GRID_STRIDE_LOOP(index, batch * plane) {
    const int64_t b = index / plane, pixel = index - b * plane;
    acc_t pixel_scratch[2];
    isotropic_kernel_span<scalar_t, acc_t>(seeds + b * (radius + 1) * plane + pixel, plane, 1, radius, disk, table,
                                           probs, slots, pixel_scratch, kernels + b * taps * plane + pixel, plane);
  }
}

// grad_seeds is in acc_t: a float32 scratch tensor for float16/bfloat16 inputs.
template <typename scalar_t, typename acc_t>
__global__ void isotropic_kernels_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ seeds,
                                                  const OrbitPolar<acc_t>* __restrict__ table,
                                                  acc_t* __restrict__ slot_scratch, acc_t* __restrict__ grad_seeds,
                                                  int64_t batch, int64_t plane, int radius, bool disk) {
  const int64_t taps = static_cast<int64_t>(2 * radius + 1) * (2 * radius + 1);
  const int64_t orbits = orbit_count(radius + 1);
  const int64_t slots = cuda::slot_count();
  acc_t* probs = slot_scratch + cuda::thread_slot();  // probs[o * slots], then orbit_grad[o * slots]
  acc_t* orbit_grad = probs + orbits * slots;
  JDRL_GRID_STRIDE_LOOP(index, batch * plane) {
    const int64_t b = index / plane, pixel = index - b * plane;
    const int64_t seed_base = b * (radius + 1) * plane + pixel;
    acc_t pixel_scratch[3];
    isotropic_kernel_span_backward<scalar_t, acc_t>(grad + b * taps * plane + pixel, plane, seeds + seed_base, plane, 1,
                                                    radius, disk, table, probs, slots, orbit_grad, slots,
                                                    pixel_scratch, grad_seeds + seed_base);
  }
}

}  // namespace isotropic_device
}  // namespace jdrl
