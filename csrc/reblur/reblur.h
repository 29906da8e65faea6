#pragma once

#include <ATen/core/Tensor.h>

namespace jdrl {

struct ReblurArgs {
  int levels;  // m, read from weights
  bool disk;
  bool replicate;
};

// Checks the arguments shared by the CPU and CUDA kernels; returns m and the options.
ReblurArgs check_reblur(const at::Tensor& image, const at::Tensor& seeds, const at::Tensor& weights,
                        c10::string_view support, c10::string_view padding_mode);

}  // namespace jdrl
