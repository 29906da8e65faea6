#pragma once

#include <ATen/core/Tensor.h>

namespace jdrl {

struct IsotropicKernelsArgs {
  int radius;
  bool disk;
};

// Checks the arguments shared by the CPU and CUDA kernels; returns the radius and the support.
IsotropicKernelsArgs check_isotropic_kernels(const at::Tensor& seeds, c10::string_view support);

}  // namespace jdrl
