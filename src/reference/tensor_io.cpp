#include "tensor_io.hpp"

#include <cmath>
#include <cstring>

namespace fsa {

float bf16_to_float(std::uint16_t bits) {
  const std::uint32_t u = static_cast<std::uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

std::uint16_t float_to_bf16(float value) {
  std::uint32_t u;
  std::memcpy(&u, &value, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN stays a quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);                     // round to nearest even
  return static_cast<std::uint16_t>(u >> 16);
}

float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1fu;
  const std::uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
    const float v = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -v : v;
  }
  std::uint32_t u = exponent == 31 ? (sign | 0x7f800000u | (mantissa << 13))
                                   : (sign | ((exponent + 112u) << 23) | (mantissa << 13));
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

std::uint16_t float_to_half(float value) {
  std::uint32_t x;
  std::memcpy(&x, &value, sizeof x);
  const std::uint16_t sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  const std::uint32_t a = x & 0x7fffffffu;
  if (a >= 0x7f800000u) return sign | (a > 0x7f800000u ? 0x7e00 : 0x7c00);  // NaN / inf
  if (a >= 0x477ff000u) return sign | 0x7c00;                                // >= 65520 rounds to inf
  if (a < 0x38800000u) {                                                     // below 2^-14: subnormal
    const float scaled = std::fabs(value) * 16777216.0f;                     // exact: times 2^24
    return sign | static_cast<std::uint16_t>(std::nearbyint(scaled));
  }
  std::uint32_t h = ((((a >> 23) - 112u) << 10) | ((a & 0x7fffffu) >> 13));
  const std::uint32_t rest = a & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is right
  return sign | static_cast<std::uint16_t>(h);
}

}  // namespace fsa

namespace fsa::ref {

namespace {

// Calls fn(linear_index, element_offset) for every element in row-major order.
template <class Fn>
void for_each_element(const TensorView& v, Fn&& fn) {
  std::int64_t size[4] = {1, 1, 1, 1}, stride[4] = {0, 0, 0, 0};
  const int pad = TensorView::kMaxDims - v.ndim;
  for (int d = 0; d < v.ndim; ++d) {
    size[pad + d] = v.size(d);
    stride[pad + d] = v.stride(d);
  }
  std::int64_t linear = 0;
  for (std::int64_t i0 = 0; i0 < size[0]; ++i0)
    for (std::int64_t i1 = 0; i1 < size[1]; ++i1)
      for (std::int64_t i2 = 0; i2 < size[2]; ++i2) {
        const std::int64_t base = i0 * stride[0] + i1 * stride[1] + i2 * stride[2];
        for (std::int64_t i3 = 0; i3 < size[3]; ++i3) fn(linear++, base + i3 * stride[3]);
      }
}

}  // namespace

template <class T>
std::vector<T> load(const TensorView& view) {
  if (!view.defined() || view.ndim <= 0) return {};
  std::vector<T> out(static_cast<std::size_t>(view.numel()));
  switch (view.dtype) {
    case DType::kBFloat16: {
      const auto* p = view.ptr<const std::uint16_t>();
      for_each_element(view, [&](std::int64_t i, std::int64_t off) { out[i] = static_cast<T>(bf16_to_float(p[off])); });
      break;
    }
    case DType::kFloat16: {
      const auto* p = view.ptr<const std::uint16_t>();
      for_each_element(view, [&](std::int64_t i, std::int64_t off) { out[i] = static_cast<T>(half_to_float(p[off])); });
      break;
    }
    case DType::kFloat32: {
      const auto* p = view.ptr<const float>();
      for_each_element(view, [&](std::int64_t i, std::int64_t off) { out[i] = static_cast<T>(p[off]); });
      break;
    }
    case DType::kFloat64: {
      const auto* p = view.ptr<const double>();
      for_each_element(view, [&](std::int64_t i, std::int64_t off) { out[i] = static_cast<T>(p[off]); });
      break;
    }
    case DType::kInt32: {
      const auto* p = view.ptr<const std::int32_t>();
      for_each_element(view, [&](std::int64_t i, std::int64_t off) { out[i] = static_cast<T>(p[off]); });
      break;
    }
    case DType::kUInt8: break;
  }
  return out;
}

template <class T>
void store(const std::vector<T>& values, const TensorView& view) {
  if (!view.defined() || view.ndim <= 0) return;
  switch (view.dtype) {
    case DType::kBFloat16: {
      auto* p = view.ptr<std::uint16_t>();
      for_each_element(view, [&](std::int64_t i, std::int64_t off) { p[off] = float_to_bf16(static_cast<float>(values[i])); });
      break;
    }
    case DType::kFloat16: {
      auto* p = view.ptr<std::uint16_t>();
      for_each_element(view, [&](std::int64_t i, std::int64_t off) { p[off] = float_to_half(static_cast<float>(values[i])); });
      break;
    }
    case DType::kFloat32: {
      auto* p = view.ptr<float>();
      for_each_element(view, [&](std::int64_t i, std::int64_t off) { p[off] = static_cast<float>(values[i]); });
      break;
    }
    case DType::kFloat64: {
      auto* p = view.ptr<double>();
      for_each_element(view, [&](std::int64_t i, std::int64_t off) { p[off] = static_cast<double>(values[i]); });
      break;
    }
    case DType::kInt32: {
      auto* p = view.ptr<std::int32_t>();
      for_each_element(view, [&](std::int64_t i, std::int64_t off) { p[off] = static_cast<std::int32_t>(values[i]); });
      break;
    }
    case DType::kUInt8: break;
  }
}

std::vector<std::int32_t> load_int32(const TensorView& view) { return load<std::int32_t>(view); }
void store_int32(const std::vector<std::int32_t>& values, const TensorView& view) { store(values, view); }

template std::vector<float> load<float>(const TensorView&);
template std::vector<double> load<double>(const TensorView&);
template void store<float>(const std::vector<float>&, const TensorView&);
template void store<double>(const std::vector<double>&, const TensorView&);
template std::vector<std::int32_t> load<std::int32_t>(const TensorView&);
template void store<std::int32_t>(const std::vector<std::int32_t>&, const TensorView&);

}  // namespace fsa::ref
