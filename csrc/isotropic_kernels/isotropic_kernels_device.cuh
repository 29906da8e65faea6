// The CUDA kernels of isotropic_kernels, compiled by nvcc for the device (isotropic_kernels_cuda.cu) and by the host
// compiler under common/cuda_host_emulation.h (csrc/emulation), which runs them in the tests.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/ScalarType.h>

#include <cstdint>

#include "common/cuda_kernel_support.cuh"
#include "common/pixel_math.h"
#include "isotropic_kernels/isotropic_kernels.h"

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

// ---------------------------------------------------------------------------------------------
// Host side, shared by the CUDA launcher (isotropic_kernels_cuda.cu) and the emulation
// (csrc/emulation): the geometry, the slot scratch and the kernel arguments. The tensors are
// contiguous, on the launcher's device, and not empty. `launch` provides:
//   launch(kernel, pixel_grid, args...)                 runs one kernel;
//   launch.resident_blocks(kernel)                      the blocks the device holds at once;
//   launch.template orbit_table<acc_t>(levels, like)    a byte tensor of orbit_count(levels)
//                                                       OrbitPolar<acc_t>, filled, on like's device.

// One slot per thread of the grid, `arrays` arrays of orbit values in each (reused along the
// grid-stride loop, so the scratch does not grow with the image).
template <typename acc_t>
at::Tensor slot_scratch_for(int arrays, const IsotropicKernelsArgs& args, const cuda::PixelGrid& g,
                            const at::Tensor& like) {
  const int64_t orbits = orbit_count(args.radius + 1);
  return at::empty({arrays * orbits * static_cast<int64_t>(g.grid.x) * cuda::kThreadsPerBlock},
                   like.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
}

template <typename acc_t>
const OrbitPolar<acc_t>* orbit_table_pointer(const at::Tensor& table) {
  return reinterpret_cast<const OrbitPolar<acc_t>*>(table.data_ptr<uint8_t>());
}

// Writes every element of `kernels`, (B, K*K, H, W).
template <typename scalar_t, typename acc_t, typename Launch>
void run_forward(const at::Tensor& seeds, const at::Tensor& kernels, const IsotropicKernelsArgs& args,
                 Launch&& launch) {
  const int64_t batch = seeds.size(0), plane = seeds.size(2) * seeds.size(3);
  const auto kernel = &isotropic_kernels_forward_kernel<scalar_t, acc_t>;
  const cuda::PixelGrid g = cuda::pixel_grid(batch * plane, launch.resident_blocks(kernel));
  const at::Tensor slot_scratch = slot_scratch_for<acc_t>(1, args, g, seeds);
  const at::Tensor table = launch.template orbit_table<acc_t>(args.radius + 1, seeds);
  launch(kernel, g, seeds.data_ptr<scalar_t>(), orbit_table_pointer<acc_t>(table), slot_scratch.data_ptr<acc_t>(),
         kernels.data_ptr<scalar_t>(), batch, plane, args.radius, args.disk);
}

// Writes every element of grad_seeds (in acc_t, the shape of seeds).
template <typename scalar_t, typename acc_t, typename Launch>
void run_backward(const at::Tensor& grad, const at::Tensor& seeds, const at::Tensor& grad_seeds,
                  const IsotropicKernelsArgs& args, Launch&& launch) {
  const int64_t batch = seeds.size(0), plane = seeds.size(2) * seeds.size(3);
  const auto kernel = &isotropic_kernels_backward_kernel<scalar_t, acc_t>;
  const cuda::PixelGrid g = cuda::pixel_grid(batch * plane, launch.resident_blocks(kernel));
  // Two arrays of orbit values per thread slot: softmax values and gradients.
  const at::Tensor slot_scratch = slot_scratch_for<acc_t>(2, args, g, seeds);
  const at::Tensor table = launch.template orbit_table<acc_t>(args.radius + 1, seeds);
  launch(kernel, g, grad.data_ptr<scalar_t>(), seeds.data_ptr<scalar_t>(), orbit_table_pointer<acc_t>(table),
         slot_scratch.data_ptr<acc_t>(), grad_seeds.data_ptr<acc_t>(), batch, plane, args.radius, args.disk);
}

}  // namespace isotropic_device
}  // namespace jdrl
