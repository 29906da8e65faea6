// isotropic_kernels: schema and argument checks (SPEC section 2).
#include "isotropic_kernels/isotropic_kernels.h"

#include <torch/library.h>

#include "common/checks.h"

namespace jdrl {

IsotropicKernelsArgs check_isotropic_kernels(const at::Tensor& seeds, c10::string_view support) {
  check_image_like(seeds, "seeds", "(B, r+1, H, W)");
  TORCH_CHECK_VALUE(seeds.size(1) >= 2, "seeds must have at least 2 channels (a kernel of radius r has r + 1 seeds), got ",
                    seeds.size(1), " (shape ", seeds.sizes(), ")");
  return {static_cast<int>(seeds.size(1) - 1), parse_support_is_disk(support)};
}

}  // namespace jdrl

TORCH_LIBRARY_FRAGMENT(jdrl_ext, m) {
  m.def("isotropic_kernels(Tensor seeds, *, str support=\"window\") -> Tensor");
  m.def("_isotropic_kernels_backward(Tensor grad, Tensor seeds, str support) -> Tensor");
}
