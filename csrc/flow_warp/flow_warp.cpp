// flow_warp: schema and argument checks (SPEC section 5).
#include "flow_warp/flow_warp.h"

#include <torch/library.h>

#include "common/checks.h"

namespace jdrl {

bool check_flow_warp(const at::Tensor& image, const at::Tensor& flow, c10::string_view padding_mode) {
  check_image_like(image, "image");
  check_image_like(flow, "flow", "(B, 2, H, W)");
  TORCH_CHECK_VALUE(flow.size(1) == 2, "flow must have 2 channels (x, y), got shape ", flow.sizes());
  check_same_kind(image, "image", flow, "flow");
  check_same_bhw(image, "image", flow, "flow");
  return parse_warp_padding_is_border(padding_mode);
}

}  // namespace jdrl

TORCH_LIBRARY_FRAGMENT(jdrl_ext, m) {
  m.def("flow_warp(Tensor image, Tensor flow, *, str padding_mode=\"border\") -> Tensor");
  m.def("_flow_warp_backward(Tensor grad, Tensor image, Tensor flow, str padding_mode) -> (Tensor, Tensor)");
}
