#pragma once

#include <ATen/core/Tensor.h>

namespace jdrl {

struct SvConvArgs {
  int radius;
  bool replicate;
};

// Checks the arguments shared by the CPU and CUDA kernels; returns R = (K - 1) / 2 and the padding.
SvConvArgs check_sv_conv(const at::Tensor& image, const at::Tensor& kernels, c10::string_view padding_mode);

}  // namespace jdrl
