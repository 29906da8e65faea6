// The CUDA kernels of flow_warp, compiled by nvcc for the device (flow_warp_cuda.cu) and by the host
// compiler under common/cuda_host_emulation.h (csrc/emulation), which runs them in the tests.
#pragma once

#include <cstdint>

#include "common/cuda_kernel_support.cuh"
#include "common/pixel_math.h"

namespace jdrl {
namespace flow_warp_kernels {

template <typename scalar_t, typename acc_t>
__global__ void flow_warp_forward_kernel(const scalar_t* __restrict__ image, const scalar_t* __restrict__ flow,
                                         scalar_t* __restrict__ out, int64_t batch, int64_t channels, int64_t height,
                                         int64_t width, bool border) {
  const int64_t plane = height * width;
  JDRL_GRID_STRIDE_LOOP(index, batch * plane) {
    const int64_t b = index / plane, pixel = index - b * plane;
    const int64_t y = pixel / width, x = pixel - y * width;
    const scalar_t* pixel_flow = flow + b * 2 * plane + pixel;
    const BilinearTaps<acc_t> taps = bilinear_taps<acc_t>(y, x, static_cast<acc_t>(pixel_flow[0]),
                                                          static_cast<acc_t>(pixel_flow[plane]), height, width, border);
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t base = (b * channels + c) * plane;
      out[base + pixel] = static_cast<scalar_t>(bilinear_sample<scalar_t, acc_t>(image + base, height, width, taps));
    }
  }
}

// Per output pixel p: the flow gradient of p (a gather over the channels, written once), and
// grad[c, p] times each bilinear weight scattered onto the four taps of p's sample (atomicAdd).
template <typename scalar_t, typename acc_t>
__global__ void flow_warp_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ image,
                                          const scalar_t* __restrict__ flow, acc_t* __restrict__ grad_image,
                                          scalar_t* __restrict__ grad_flow, int64_t batch, int64_t channels,
                                          int64_t height, int64_t width, bool border) {
  const int64_t plane = height * width;
  JDRL_GRID_STRIDE_LOOP(index, batch * plane) {
    const int64_t b = index / plane, pixel = index - b * plane;
    const int64_t y = pixel / width, x = pixel - y * width;
    const int64_t flow_base = b * 2 * plane + pixel;
    const BilinearTaps<acc_t> taps = bilinear_taps<acc_t>(
        y, x, static_cast<acc_t>(flow[flow_base]), static_cast<acc_t>(flow[flow_base + plane]), height, width, border);
    acc_t tap_weights[4];
    bilinear_weights(taps, tap_weights);
    acc_t sum_x = 0, sum_y = 0;
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t base = (b * channels + c) * plane;
      const acc_t g = static_cast<acc_t>(grad[base + pixel]);
      acc_t d_sx, d_sy;
      bilinear_coordinate_grad<scalar_t, acc_t>(image + base, height, width, taps, &d_sx, &d_sy);
      sum_x += g * d_sx;
      sum_y += g * d_sy;
JDRL_UNROLL
      for (int i = 0; i < 2; ++i) {
JDRL_UNROLL
        for (int j = 0; j < 2; ++j) {
          const int64_t ty = taps.y0 + i, tx = taps.x0 + j;
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

}  // namespace flow_warp_kernels
}  // namespace jdrl
