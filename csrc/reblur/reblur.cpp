// reblur: schema and argument checks (SPEC section 4).
#include "reblur/reblur.h"

#include <torch/library.h>

#include "common/checks.h"
#include "common/pixel_math.h"

namespace jdrl {

ReblurArgs check_reblur(const at::Tensor& image, const at::Tensor& seeds, const at::Tensor& weights,
                        c10::string_view support, c10::string_view padding_mode) {
  check_image_like(image, "image");
  check_image_like(seeds, "seeds", "(B, S(m), H, W)");
  check_image_like(weights, "weights", "(B, m, H, W)");
  check_same_kind(image, "image", seeds, "seeds");
  check_same_kind(image, "image", weights, "weights");
  check_same_bhw(image, "image", seeds, "seeds");
  check_same_bhw(image, "image", weights, "weights");
  const int64_t levels = weights.size(1);
  TORCH_CHECK_VALUE(levels >= 1, "weights must have m >= 1 channels (level 0 is the identity), got shape ",
                    weights.sizes());
  TORCH_CHECK_VALUE(levels <= 64, "weights has m = ", levels, " levels; at most 64 are supported");
  const int64_t expected = seed_channels(static_cast<int>(levels));
  TORCH_CHECK_VALUE(seeds.size(1) == expected, "seeds has ", seeds.size(1), " channels but weights has m = ", levels,
                    " levels, which need S(m) = (m-1)(m+2)/2 = ", expected, " seed channels");
  return {static_cast<int>(levels), parse_support_is_disk(support), parse_conv_padding_is_replicate(padding_mode)};
}

}  // namespace jdrl

TORCH_LIBRARY_FRAGMENT(jdrl_ext, m) {
  m.def(
      "reblur(Tensor image, Tensor seeds, Tensor weights, *, str support=\"window\", "
      "str padding_mode=\"replicate\") -> Tensor");
  m.def(
      "_reblur_backward(Tensor grad, Tensor image, Tensor seeds, Tensor weights, str support, str padding_mode) "
      "-> (Tensor, Tensor, Tensor)");
}
