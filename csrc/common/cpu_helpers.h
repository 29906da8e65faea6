// Small helpers of the CPU kernels: how finely rows are split between threads, and the orbit table.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/pixel_math.h"

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

// The orbits' polar positions for m levels (fill_orbit_table of pixel_math.h), built once per call.
template <typename scalar_t>
std::vector<OrbitPolar<scalar_t>> orbit_table(int levels) {
  std::vector<OrbitPolar<scalar_t>> table(orbit_count(levels));
  fill_orbit_table<scalar_t>(levels, table.data());
  return table;
}

}  // namespace cpu
}  // namespace jdrl
