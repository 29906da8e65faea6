// Argument checks shared by every op's CPU and CUDA entry points. Each message names the argument
// and the shapes or values seen, so that a user can tell which tensor is wrong.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <string>

namespace jdrl {

inline void check_image_like(const at::Tensor& t, const char* name, const char* layout = "(B, C, H, W)") {
  TORCH_CHECK_VALUE(t.dim() == 4, name, " must be a 4-D tensor ", layout, ", got shape ", t.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name, " must have a floating dtype, got ", t.scalar_type());
  // float8 is a floating type too, but no kernel is built for it: without this the CUDA dispatch
  // macro's own error would not say which argument is wrong (same message as jdrl_ext/_ops.py).
  const at::ScalarType dtype = t.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat || dtype == at::kDouble, name,
                   " must be float16, bfloat16, float32 or float64, got ", dtype);
}

inline void check_same_kind(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name) {
  TORCH_CHECK_VALUE(a.device() == b.device(), a_name, " and ", b_name, " must be on the same device, got ", a.device(),
                    " and ", b.device());
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), a_name, " and ", b_name, " must have the same dtype, got ",
                   a.scalar_type(), " and ", b.scalar_type());
}

// Batch, height and width must agree exactly: no broadcasting.
inline void check_same_bhw(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name) {
  TORCH_CHECK_VALUE(a.size(0) == b.size(0) && a.size(2) == b.size(2) && a.size(3) == b.size(3), a_name, " ", a.sizes(),
                    " and ", b_name, " ", b.sizes(), " must have the same batch, height and width");
}

inline void check_cpu_dtype(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
                   ": the CPU kernels take float32 or float64, got ", t.scalar_type(),
                   " (float16 and bfloat16 run on CUDA)");
}

inline void check_grad(const at::Tensor& grad, const at::Tensor& like, const char* name) {
  TORCH_CHECK_VALUE(grad.sizes() == like.sizes(), name, " must have shape ", like.sizes(), ", got ", grad.sizes());
  check_same_kind(grad, name, like, "the forward input");
}

// support="window" (corner taps in the softmax with logit 0) or "disk" (corner taps weigh 0).
inline bool parse_support_is_disk(c10::string_view support) {
  if (support == "window") return false;
  if (support == "disk") return true;
  TORCH_CHECK_VALUE(false, "support must be 'window' or 'disk', got '", std::string(support), "'");
  return false;
}

// padding_mode of the convolutions: "replicate" (clamped coordinates) or "zeros".
inline bool parse_conv_padding_is_replicate(c10::string_view padding_mode) {
  if (padding_mode == "replicate") return true;
  if (padding_mode == "zeros") return false;
  TORCH_CHECK_VALUE(false, "padding_mode must be 'replicate' or 'zeros', got '", std::string(padding_mode), "'");
  return false;
}

// padding_mode of flow_warp: "border" (clamped sample coordinate) or "zeros".
inline bool parse_warp_padding_is_border(c10::string_view padding_mode) {
  if (padding_mode == "border") return true;
  if (padding_mode == "zeros") return false;
  TORCH_CHECK_VALUE(false, "padding_mode must be 'border' or 'zeros', got '", std::string(padding_mode), "'");
  return false;
}

// K from a (B, K*K, H, W) kernels tensor: K must be odd and K*K exactly the channel count.
inline int kernel_size_of(const at::Tensor& kernels) {
  const int64_t taps = kernels.size(1);
  int64_t k = 0;
  while ((k + 1) * (k + 1) <= taps) ++k;
  TORCH_CHECK_VALUE(k * k == taps, "kernels must have K*K channels for a square K x K kernel, got ", taps,
                    " channels (shape ", kernels.sizes(), ")");
  TORCH_CHECK_VALUE(k % 2 == 1, "kernels must have an odd kernel size K, got K = ", k, " (", taps, " channels)");
  return static_cast<int>(k);
}

}  // namespace jdrl
