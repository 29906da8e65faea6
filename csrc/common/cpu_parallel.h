// How finely the CPU kernels split their rows between threads.
#pragma once

#include <algorithm>
#include <cstdint>

namespace jdrl {
namespace cpu {

// Rows per task, so that a task holds about `pixels_per_task` pixels: at::parallel_for runs a range
// no larger than one task on the calling thread, which keeps small images from paying for a
// parallel region that costs more than their work.
inline int64_t rows_per_task(int64_t width, int64_t pixels_per_task) {
  return std::max<int64_t>(1, (pixels_per_task + width - 1) / std::max<int64_t>(width, 1));
}

// Pixels per task for the ops whose per-pixel work is heavy (a kernel or a radial kernel per
// pixel) and for flow_warp, whose per-pixel work is a few loads.
constexpr int64_t kHeavyPixelsPerTask = 1024;
constexpr int64_t kLightPixelsPerTask = 16384;

}  // namespace cpu
}  // namespace jdrl
