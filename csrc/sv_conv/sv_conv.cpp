// sv_conv: schema and argument checks (SPEC section 3).
#include "sv_conv/sv_conv.h"

#include <torch/library.h>

#include "common/checks.h"

namespace jdrl {

SvConvArgs check_sv_conv(const at::Tensor& image, const at::Tensor& kernels, c10::string_view padding_mode) {
  check_image_like(image, "image");
  check_image_like(kernels, "kernels", "(B, K*K, H, W)");
  check_same_kind(image, "image", kernels, "kernels");
  check_same_bhw(image, "image", kernels, "kernels");
  const int size = kernel_size_of(kernels);
  return {(size - 1) / 2, parse_conv_padding_is_replicate(padding_mode)};
}

}  // namespace jdrl

TORCH_LIBRARY_FRAGMENT(jdrl_ext, m) {
  m.def("sv_conv(Tensor image, Tensor kernels, *, str padding_mode=\"replicate\") -> Tensor");
  m.def("_sv_conv_backward(Tensor grad, Tensor image, Tensor kernels, str padding_mode) -> (Tensor, Tensor)");
}
