// Gated combination of the three branches (docs/semantics.md section 7).
#include <algorithm>

#include "parallel.hpp"
#include "reference.hpp"
#include "vec.hpp"

namespace fsa::ref {

namespace {
constexpr std::int64_t kTokensPerItem = 256;
}

template <class T>
void combine_forward(std::int64_t n, int hq, int dv, bool shared_gates, const T* gates, const T* o_cmp,
                     const T* o_slc, const T* o_swa, T* o) {
  parallel_for((n + kTokensPerItem - 1) / kTokensPerItem, [&](std::int64_t item) {
    const std::int64_t t_end = std::min(n, (item + 1) * kTokensPerItem);
    for (std::int64_t t = item * kTokensPerItem; t < t_end; ++t)
      for (int h = 0; h < hq; ++h) {
        const T* g = gates + (shared_gates ? t : t * hq + h) * 3;
        const std::int64_t row = (t * hq + h) * dv;
        for (int e = 0; e < dv; ++e) o[row + e] = g[0] * o_cmp[row + e] + g[1] * o_slc[row + e] + g[2] * o_swa[row + e];
      }
  });
}

template <class T>
void combine_backward(std::int64_t n, int hq, int dv, bool shared_gates, const T* gates, const T* o_cmp,
                      const T* o_slc, const T* o_swa, const T* d_o, T* d_gates, T* d_o_cmp, T* d_o_slc,
                      T* d_o_swa) {
  const T* branches[3] = {o_cmp, o_slc, o_swa};
  T* d_branches[3] = {d_o_cmp, d_o_slc, d_o_swa};
  // Items own whole tokens, so a shared gate's sum over heads stays inside one item.
  parallel_for((n + kTokensPerItem - 1) / kTokensPerItem, [&](std::int64_t item) {
    const std::int64_t t_end = std::min(n, (item + 1) * kTokensPerItem);
    for (std::int64_t t = item * kTokensPerItem; t < t_end; ++t) {
      if (d_gates != nullptr && shared_gates) d_gates[t * 3] = d_gates[t * 3 + 1] = d_gates[t * 3 + 2] = T(0);
      for (int h = 0; h < hq; ++h) {
        const std::int64_t gate = (shared_gates ? t : t * hq + h) * 3;
        const std::int64_t row = (t * hq + h) * dv;
        for (int b = 0; b < 3; ++b) {
          if (d_gates != nullptr) {
            const T grad = dot(branches[b] + row, d_o + row, dv);
            d_gates[gate + b] = shared_gates ? d_gates[gate + b] + grad : grad;
          }
          if (d_branches[b] != nullptr)
            for (int e = 0; e < dv; ++e) d_branches[b][row + e] = gates[gate + b] * d_o[row + e];
        }
      }
    }
  });
}

template void combine_forward<float>(std::int64_t, int, int, bool, const float*, const float*, const float*,
                                     const float*, float*);
template void combine_forward<double>(std::int64_t, int, int, bool, const double*, const double*, const double*,
                                      const double*, double*);
template void combine_backward<float>(std::int64_t, int, int, bool, const float*, const float*, const float*,
                                      const float*, const float*, float*, float*, float*, float*);
template void combine_backward<double>(std::int64_t, int, int, bool, const double*, const double*, const double*,
                                       const double*, const double*, double*, double*, double*, double*);

}  // namespace fsa::ref
