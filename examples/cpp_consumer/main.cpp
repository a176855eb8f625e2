// Calls two CPU ops of the public API on caller-owned memory and checks them against
// docs/semantics.md: compressed_cu_seqlens on section 1's worked example, and sliding-window
// attention with w = 0 (section 6: each query sees only its own key, so o = v and lse = scale q.k).
// Prints "fsa_consumer: ok" and returns 0 when both hold.
#include <fsa/fsa.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

int main() {
  std::printf("fsa %s (CUDA kernels: %s)\n", fsa::version(), fsa::built_with_cuda() ? "yes" : "no");
  fsa::NsaConfig config;  // l = 32, s = 16

  // Sequences of 200, 20 and 48 tokens have 11, 0 and 2 compressed tokens.
  std::vector<std::int32_t> cu{0, 200, 220, 268}, cu_cmp(4, -1);
  fsa::Status s = fsa::compressed_cu_seqlens(config, fsa::TensorView::contiguous(cu.data(), fsa::DType::kInt32, {4}),
                                             fsa::TensorView::contiguous(cu_cmp.data(), fsa::DType::kInt32, {4}));
  if (!s) {
    std::fprintf(stderr, "compressed_cu_seqlens: %s\n", s.to_string().c_str());
    return 1;
  }
  std::printf("cu_cmp = %d %d %d %d\n", cu_cmp[0], cu_cmp[1], cu_cmp[2], cu_cmp[3]);
  bool ok = cu_cmp == std::vector<std::int32_t>{0, 11, 11, 13};

  // Two sequences (3 and 2 tokens), Hq = 2 query heads on Hkv = 1 kv head, D = 4, fp32 on the CPU.
  config.window = 0;
  const std::int64_t n = 5, hq = 2, hkv = 1, d = 4;
  std::vector<std::int32_t> cu_swa{0, 3, 5};
  std::vector<float> q(n * hq * d), k(n * hkv * d), v(n * hkv * d), o(n * hq * d), lse(hq * n);
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = std::sin(0.3f * static_cast<float>(i));
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = std::cos(0.7f * static_cast<float>(i));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = 0.25f * static_cast<float>(i);
  using fsa::TensorView;
  s = fsa::swa_forward(config, TensorView::contiguous(q.data(), fsa::DType::kFloat32, {n, hq, d}),
                       TensorView::contiguous(k.data(), fsa::DType::kFloat32, {n, hkv, d}),
                       TensorView::contiguous(v.data(), fsa::DType::kFloat32, {n, hkv, d}),
                       TensorView::contiguous(cu_swa.data(), fsa::DType::kInt32, {3}),
                       TensorView::contiguous(o.data(), fsa::DType::kFloat32, {n, hq, d}),
                       TensorView::contiguous(lse.data(), fsa::DType::kFloat32, {hq, n}));
  if (!s) {
    std::fprintf(stderr, "swa_forward: %s\n", s.to_string().c_str());
    return 1;
  }
  const float scale = config.softmax_scale(static_cast<int>(d));
  for (std::int64_t t = 0; t < n; ++t)
    for (std::int64_t h = 0; h < hq; ++h) {
      float dot = 0;
      for (std::int64_t e = 0; e < d; ++e) {
        ok = ok && std::fabs(o[(t * hq + h) * d + e] - v[t * d + e]) <= 1e-6f;
        dot += q[(t * hq + h) * d + e] * k[t * d + e];
      }
      ok = ok && std::fabs(lse[h * n + t] - scale * dot) <= 1e-5f;
    }
  std::printf("fsa_consumer: %s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
