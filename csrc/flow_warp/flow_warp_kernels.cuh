// The CUDA kernels of flow_warp and their launch, compiled by nvcc for the device (flow_warp_cuda.cu)
// and by the host compiler under common/cuda_host_emulation.h (csrc/emulation), which runs them in
// the tests.
//
// One thread per output pixel over a grid-stride loop, through the bilinear functions of
// common/pixel_math.h. index_t is int32_t when every element count (and the grid-stride counter)
// fits in 32 bits, the common case, so that the per-pixel divisions and the tap addresses are 32-bit
// arithmetic; int64_t for larger tensors.
//
// The image gradient stays a scatter (atomicAdd): a flow may send any pixel anywhere, so a gather
// would have to find, for each image pixel, the output pixels whose four taps touch it, which takes
// either a search over the whole image or an inverted index (a sort of all B*H*W samples by tap,
// itself several passes over memory); the scatter does 4 atomic adds per channel and pixel, mostly
// to distinct, nearby addresses (a smooth flow), in one pass.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>

#include "common/cuda_kernel_support.cuh"
#include "common/pixel_math.h"

namespace jdrl {
namespace flow_warp_kernels {

template <typename scalar_t, typename acc_t, typename index_t>
__global__ void flow_warp_forward_kernel(const scalar_t* __restrict__ image, const scalar_t* __restrict__ flow,
                                         scalar_t* __restrict__ out, index_t batch, index_t channels, index_t height,
                                         index_t width, bool border) {
  const index_t plane = height * width;
  const index_t count = batch * plane;
  const index_t stride = static_cast<index_t>(blockDim.x) * gridDim.x;
  for (index_t index = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < count; index += stride) {
    const index_t b = index / plane, pixel = index - b * plane;
    const index_t y = pixel / width, x = pixel - y * width;
    const scalar_t* pixel_flow = flow + b * 2 * plane + pixel;
    const BilinearTaps<acc_t, index_t> taps = bilinear_taps<acc_t, index_t>(
        y, x, static_cast<acc_t>(pixel_flow[0]), static_cast<acc_t>(pixel_flow[plane]), height, width, border);
    for (index_t c = 0; c < channels; ++c) {
      const index_t base = (b * channels + c) * plane;
      out[base + pixel] = static_cast<scalar_t>(bilinear_sample<scalar_t, acc_t>(image + base, height, width, taps));
    }
  }
}

// Per output pixel p: the flow gradient of p (a gather over the channels, written once), and
// grad[c, p] times each bilinear weight scattered onto the four taps of p's sample (atomicAdd; see
// the top of the file for why not a gather).
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void flow_warp_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ image,
                                          const scalar_t* __restrict__ flow, acc_t* __restrict__ grad_image,
                                          scalar_t* __restrict__ grad_flow, index_t batch, index_t channels,
                                          index_t height, index_t width, bool border) {
  const index_t plane = height * width;
  const index_t count = batch * plane;
  const index_t stride = static_cast<index_t>(blockDim.x) * gridDim.x;
  for (index_t index = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < count; index += stride) {
    const index_t b = index / plane, pixel = index - b * plane;
    const index_t y = pixel / width, x = pixel - y * width;
    const index_t flow_base = b * 2 * plane + pixel;
    const BilinearTaps<acc_t, index_t> taps = bilinear_taps<acc_t, index_t>(
        y, x, static_cast<acc_t>(flow[flow_base]), static_cast<acc_t>(flow[flow_base + plane]), height, width, border);
    acc_t tap_weights[4];
    bilinear_weights(taps, tap_weights);
    acc_t sum_x = 0, sum_y = 0;
    for (index_t c = 0; c < channels; ++c) {
      const index_t base = (b * channels + c) * plane;
      const acc_t g = static_cast<acc_t>(grad[base + pixel]);
      acc_t d_sx, d_sy;
      bilinear_coordinate_grad<scalar_t, acc_t>(image + base, height, width, taps, &d_sx, &d_sy);
      sum_x += g * d_sx;
      sum_y += g * d_sy;
JDRL_UNROLL
      for (int i = 0; i < 2; ++i) {
JDRL_UNROLL
        for (int j = 0; j < 2; ++j) {
          const index_t ty = taps.y0 + i, tx = taps.x0 + j;
          // A NaN coordinate parks its taps outside the image: nothing to scatter, as on the CPU.
          if (tap_inside(ty, tx, height, width))
            atomicAdd(grad_image + base + ty * width + tx, tap_weights[2 * i + j] * g);
        }
      }
    }
    grad_flow[flow_base] = static_cast<scalar_t>(sum_x * taps.dsx_dflow);
    grad_flow[flow_base + plane] = static_cast<scalar_t>(sum_y * taps.dsy_dflow);
  }
}

// ---------------------------------------------------------------------------------------------
// Host side, shared by the CUDA launcher (flow_warp_cuda.cu) and the emulation (csrc/emulation):
// the geometry, the index type and the kernel arguments. `launch(kernel, pixel_grid, args...)` runs
// one kernel; the tensors are contiguous, on the launcher's device, in scalar_t.

// Which index type a launch uses: int32_t where it fits, else int64_t; kInt64 forces the 64-bit
// kernels (the emulated tests, to cover them at small sizes).
enum class IndexWidth { kFitting, kInt64 };

// Every element offset of a flow_warp launch is below the flow's or the image's element count, and
// the grid-stride counter goes up to the pixel count plus one grid of threads.
inline bool fits_int32(const at::Tensor& image, const at::Tensor& flow, const cuda::PixelGrid& g) {
  const int64_t threads = static_cast<int64_t>(g.grid.x) * g.block.x;
  const int64_t largest = std::max<int64_t>(image.numel(), flow.numel()) + threads;
  return largest <= std::numeric_limits<int32_t>::max();
}

template <typename scalar_t, typename acc_t, typename index_t, typename Launch>
void launch_forward(const at::Tensor& image, const at::Tensor& flow, const at::Tensor& out, bool border,
                    const cuda::PixelGrid& g, Launch&& launch) {
  launch(&flow_warp_forward_kernel<scalar_t, acc_t, index_t>, g, image.data_ptr<scalar_t>(),
         flow.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), static_cast<index_t>(image.size(0)),
         static_cast<index_t>(image.size(1)), static_cast<index_t>(image.size(2)),
         static_cast<index_t>(image.size(3)), border);
}

// Writes the warped image into `out` (same shape as `image`, not empty).
template <typename scalar_t, typename acc_t, typename Launch>
void run_forward(const at::Tensor& image, const at::Tensor& flow, const at::Tensor& out, bool border,
                 Launch&& launch, IndexWidth width = IndexWidth::kFitting) {
  const cuda::PixelGrid g = cuda::pixel_grid(image.size(0) * image.size(2) * image.size(3));
  if (width == IndexWidth::kFitting && fits_int32(image, flow, g)) {
    launch_forward<scalar_t, acc_t, int32_t>(image, flow, out, border, g, launch);
  } else {
    launch_forward<scalar_t, acc_t, int64_t>(image, flow, out, border, g, launch);
  }
}

template <typename scalar_t, typename acc_t, typename index_t, typename Launch>
void launch_backward(const at::Tensor& grad, const at::Tensor& image, const at::Tensor& flow,
                     const at::Tensor& grad_image, const at::Tensor& grad_flow, bool border, const cuda::PixelGrid& g,
                     Launch&& launch) {
  launch(&flow_warp_backward_kernel<scalar_t, acc_t, index_t>, g, grad.data_ptr<scalar_t>(),
         image.data_ptr<scalar_t>(), flow.data_ptr<scalar_t>(), grad_image.data_ptr<acc_t>(),
         grad_flow.data_ptr<scalar_t>(), static_cast<index_t>(image.size(0)), static_cast<index_t>(image.size(1)),
         static_cast<index_t>(image.size(2)), static_cast<index_t>(image.size(3)), border);
}

// Returns (grad_image in acc_t, grad_flow); the image is not empty. The scatter target starts at
// zero; the flow gradient is written for every pixel.
template <typename scalar_t, typename acc_t, typename Launch>
std::tuple<at::Tensor, at::Tensor> run_backward(const at::Tensor& grad, const at::Tensor& image,
                                                const at::Tensor& flow, bool border, Launch&& launch,
                                                IndexWidth width = IndexWidth::kFitting) {
  at::Tensor grad_image = at::zeros(image.sizes(), image.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  at::Tensor grad_flow = at::empty(flow.sizes(), flow.options());
  const cuda::PixelGrid g = cuda::pixel_grid(image.size(0) * image.size(2) * image.size(3));
  if (width == IndexWidth::kFitting && fits_int32(image, flow, g)) {
    launch_backward<scalar_t, acc_t, int32_t>(grad, image, flow, grad_image, grad_flow, border, g, launch);
  } else {
    launch_backward<scalar_t, acc_t, int64_t>(grad, image, flow, grad_image, grad_flow, border, g, launch);
  }
  return {grad_image, grad_flow};
}

}  // namespace flow_warp_kernels
}  // namespace jdrl
