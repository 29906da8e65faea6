#pragma once

#include <ATen/core/Tensor.h>

namespace jdrl {

// Checks the arguments shared by the CPU and CUDA kernels; returns true for "border" padding.
bool check_flow_warp(const at::Tensor& image, const at::Tensor& flow, c10::string_view padding_mode);

}  // namespace jdrl
