#include "test_util.hpp"

#include <cmath>
#include <cstring>
#include <limits>

#include "reference/tensor_io.hpp"

namespace fsa::test {

HostTensor::HostTensor(DType dtype, std::vector<std::int64_t> sizes) : dtype_(dtype), sizes_(std::move(sizes)) {
  bytes_.assign(static_cast<std::size_t>(numel()) * dtype_size(dtype_) + 1, 0);  // +1: never a null data()
}

std::int64_t HostTensor::numel() const {
  std::int64_t n = 1;
  for (std::int64_t s : sizes_) n *= s;
  return n;
}

TensorView HostTensor::view() const {
  return TensorView::contiguous(const_cast<unsigned char*>(bytes_.data()), dtype_, sizes_);
}

double HostTensor::get(std::int64_t i) const {
  const unsigned char* p = bytes_.data();
  switch (dtype_) {
    case DType::kBFloat16: { std::uint16_t b; std::memcpy(&b, p + 2 * i, 2); return ref::bf16_to_float(b); }
    case DType::kFloat16: { std::uint16_t b; std::memcpy(&b, p + 2 * i, 2); return ref::half_to_float(b); }
    case DType::kFloat32: { float f; std::memcpy(&f, p + 4 * i, 4); return f; }
    case DType::kFloat64: { double f; std::memcpy(&f, p + 8 * i, 8); return f; }
    case DType::kInt32: { std::int32_t v; std::memcpy(&v, p + 4 * i, 4); return v; }
    case DType::kUInt8: return p[i];
  }
  return 0;
}

void HostTensor::set(std::int64_t i, double value) {
  unsigned char* p = bytes_.data();
  switch (dtype_) {
    case DType::kBFloat16: { std::uint16_t b = ref::float_to_bf16(static_cast<float>(value)); std::memcpy(p + 2 * i, &b, 2); break; }
    case DType::kFloat16: { std::uint16_t b = ref::float_to_half(static_cast<float>(value)); std::memcpy(p + 2 * i, &b, 2); break; }
    case DType::kFloat32: { float f = static_cast<float>(value); std::memcpy(p + 4 * i, &f, 4); break; }
    case DType::kFloat64: std::memcpy(p + 8 * i, &value, 8); break;
    case DType::kInt32: { std::int32_t v = static_cast<std::int32_t>(value); std::memcpy(p + 4 * i, &v, 4); break; }
    case DType::kUInt8: p[i] = static_cast<unsigned char>(value); break;
  }
}

std::vector<double> HostTensor::to_double() const {
  std::vector<double> out(static_cast<std::size_t>(numel()));
  for (std::int64_t i = 0; i < numel(); ++i) out[static_cast<std::size_t>(i)] = get(i);
  return out;
}

void HostTensor::from_double(const std::vector<double>& values) {
  for (std::int64_t i = 0; i < numel(); ++i) set(i, values[static_cast<std::size_t>(i)]);
}

void HostTensor::fill_normal(std::mt19937_64& rng, double stddev) {
  std::normal_distribution<double> dist(0.0, stddev);
  for (std::int64_t i = 0; i < numel(); ++i) set(i, dist(rng));
}

void HostTensor::fill_uniform(std::mt19937_64& rng, double lo, double hi) {
  std::uniform_real_distribution<double> dist(lo, hi);
  for (std::int64_t i = 0; i < numel(); ++i) set(i, dist(rng));
}

void HostTensor::fill(double value) {
  for (std::int64_t i = 0; i < numel(); ++i) set(i, value);
}

void HostTensor::poison() {
  if (dtype_ == DType::kInt32 || dtype_ == DType::kUInt8) {
    std::memset(bytes_.data(), 0x7f, bytes_.size());
  } else {
    fill(std::numeric_limits<double>::quiet_NaN());
  }
}

HostTensor make_cu_seqlens(const std::vector<std::int64_t>& lengths) {
  HostTensor cu(DType::kInt32, {static_cast<std::int64_t>(lengths.size()) + 1});
  std::int64_t total = 0;
  cu.set(0, 0);
  for (std::size_t b = 0; b < lengths.size(); ++b) {
    total += lengths[b];
    cu.set(static_cast<std::int64_t>(b) + 1, static_cast<double>(total));
  }
  return cu;
}

HostTensor make_cu_cmp(const NsaConfig& config, const HostTensor& cu_seqlens) {
  HostTensor cu_cmp(DType::kInt32, cu_seqlens.sizes());
  const Status s = compressed_cu_seqlens(config, cu_seqlens.view(), cu_cmp.view());
  EXPECT_TRUE(s.is_ok()) << s.to_string();
  return cu_cmp;
}

std::mt19937_64 rng_for_test(std::uint64_t salt) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = info ? std::string(info->test_suite_name()) + "." + info->name() : "none";
  std::uint64_t h = 1469598103934665603ull ^ salt;
  for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return std::mt19937_64(h);
}

double rel_frobenius(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

bool all_finite(const std::vector<double>& v) {
  for (double x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

std::vector<double> finite_difference(HostTensor& x, const std::function<double()>& loss, double eps) {
  std::vector<double> grad(static_cast<std::size_t>(x.numel()));
  for (std::int64_t i = 0; i < x.numel(); ++i) {
    const double x0 = x.get(i);
    x.set(i, x0 + eps);
    const double up = loss();
    x.set(i, x0 - eps);
    const double down = loss();
    x.set(i, x0);
    grad[static_cast<std::size_t>(i)] = (up - down) / (2 * eps);
  }
  return grad;
}

double weighted_sum(const HostTensor& y, const HostTensor& w) {
  double s = 0;
  for (std::int64_t i = 0; i < y.numel(); ++i) s += y.get(i) * w.get(i);
  return s;
}

void expect_invalid(const Status& status, const std::string& needle) {
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.to_string();
  EXPECT_NE(status.message().find(needle), std::string::npos)
      << "message does not name '" << needle << "': " << status.to_string();
}

}  // namespace fsa::test
