// Compression of windows of l raw tokens into compressed tokens (docs/semantics.md section 1),
// forward and backward.
#include <algorithm>
#include <array>
#include <vector>

#include "parallel.hpp"
#include "reference.hpp"
#include "vec.hpp"

namespace fsa::ref {

namespace {

// Compressed tokens per work item of the token-tiled loops: each weight row (or d_weight row) is
// applied to a whole tile while it is in L1. One thread at N = 8192, H = 2, D = Dout = 128, tiles of
// 1 / 4 / 16 measured forward 0.051 / 0.040 / 0.047 s and d_weight 0.09 / 0.06 / 0.06 s.
constexpr std::int64_t kTokensPerTile = 4;
// Raw rows per dx work item: enough items to balance threads over one long sequence.
constexpr std::int64_t kRowsPerItem = 256;

// Window inputs of compressed token i of a sequence for one head: x rows i*s .. i*s+l-1 plus the
// positional embedding, laid out [l*D] so that element j*D+d meets weight row j*D+d.
template <class T>
void gather_window(const T* x, const T* pos_emb, std::int64_t first_row, int heads, int g, int l, int dim, T* out) {
  for (int j = 0; j < l; ++j) {
    const T* xrow = x + ((first_row + j) * heads + g) * dim;
    T* dst = out + static_cast<std::int64_t>(j) * dim;
    std::copy(xrow, xrow + dim, dst);
    if (pos_emb != nullptr) axpy(T(1), pos_emb + (static_cast<std::int64_t>(g) * l + j) * dim, dst, dim);
  }
}

}  // namespace

template <class T>
void compress_forward(const NsaConfig& config, const Varlen& seqs, const Varlen& cmp, int heads, int dim,
                      int dim_out, const T* x, const T* weight, const T* pos_emb, T* y) {
  const int l = config.cmp_len, s = config.cmp_stride;
  const std::int64_t window = static_cast<std::int64_t>(l) * dim;
  // Work items: (sequence, head, tile of compressed tokens); each owns its y rows.
  std::vector<std::array<std::int64_t, 3>> items;
  for (int b = 0; b < seqs.num_seqs(); ++b)
    for (int g = 0; g < heads; ++g)
      for (std::int64_t i0 = 0; i0 < cmp.length(b); i0 += kTokensPerTile) items.push_back({b, g, i0});

  parallel_for(static_cast<std::int64_t>(items.size()), [&](std::int64_t item) {
    const int b = static_cast<int>(items[item][0]);
    const int g = static_cast<int>(items[item][1]);
    const std::int64_t i0 = items[item][2];
    const std::int64_t tile = std::min(kTokensPerTile, cmp.length(b) - i0);
    std::vector<T> inputs(static_cast<std::size_t>(tile * window));
    std::vector<T> acc(static_cast<std::size_t>(tile * dim_out), T(0));
    for (std::int64_t u = 0; u < tile; ++u)
      gather_window(x, pos_emb, seqs.start(b) + (i0 + u) * s, heads, g, l, dim, inputs.data() + u * window);
    if (weight != nullptr) {
      const T* w = weight + static_cast<std::int64_t>(g) * window * dim_out;
      for (std::int64_t r = 0; r < window; ++r)
        for (std::int64_t u = 0; u < tile; ++u)
          axpy(inputs[static_cast<std::size_t>(u * window + r)], w + r * dim_out, acc.data() + u * dim_out, dim_out);
    } else {
      for (std::int64_t u = 0; u < tile; ++u)
        for (int j = 0; j < l; ++j)
          axpy(T(1) / T(l), inputs.data() + u * window + static_cast<std::int64_t>(j) * dim, acc.data() + u * dim_out,
               dim);
    }
    for (std::int64_t u = 0; u < tile; ++u) {
      T* yrow = y + ((cmp.start(b) + i0 + u) * heads + g) * dim_out;
      std::copy(acc.begin() + u * dim_out, acc.begin() + (u + 1) * dim_out, yrow);
    }
  });
}

template <class T>
void compress_backward(const NsaConfig& config, const Varlen& seqs, const Varlen& cmp, int heads, int dim,
                       int dim_out, const T* x, const T* weight, const T* pos_emb, const T* dy, T* dx,
                       T* d_weight, T* d_pos_emb) {
  const int l = config.cmp_len, s = config.cmp_stride;
  const std::int64_t window = static_cast<std::int64_t>(l) * dim;
  const T inv_l = T(1) / T(l);

  // Gradient of each window's inputs, [Ncmp, H, l*D] (linear only: for mean it is dy / l in every
  // slot). As a product with W^T it runs as axpy over contiguous rows of l*D: dx took 0.07 s this
  // way against 0.37 s with one dot of W[j*D+d, :] . dy per raw element (N = 8192, H = 2,
  // D = Dout = 128, 2 threads).
  std::vector<T> window_grads;
  if (weight != nullptr) {
    std::vector<T> weight_t(static_cast<std::size_t>(heads * dim_out * window));
    parallel_for(static_cast<std::int64_t>(heads) * dim_out, [&](std::int64_t item) {
      const std::int64_t g = item / dim_out, e = item % dim_out;
      for (std::int64_t r = 0; r < window; ++r)
        weight_t[static_cast<std::size_t>(item * window + r)] = weight[(g * window + r) * dim_out + e];
    });
    window_grads.assign(static_cast<std::size_t>(cmp.total() * heads * window), T(0));
    std::vector<std::array<std::int64_t, 3>> items;
    for (int b = 0; b < seqs.num_seqs(); ++b)
      for (int g = 0; g < heads; ++g)
        for (std::int64_t i0 = 0; i0 < cmp.length(b); i0 += kTokensPerTile) items.push_back({b, g, i0});
    parallel_for(static_cast<std::int64_t>(items.size()), [&](std::int64_t item) {
      const int b = static_cast<int>(items[item][0]);
      const int g = static_cast<int>(items[item][1]);
      const std::int64_t first = cmp.start(b) + items[item][2];
      const std::int64_t last = std::min(cmp.start(b) + cmp.length(b), first + kTokensPerTile);
      for (int e = 0; e < dim_out; ++e) {
        const T* wt_row = weight_t.data() + (static_cast<std::int64_t>(g) * dim_out + e) * window;
        for (std::int64_t i = first; i < last; ++i)
          axpy(dy[(i * heads + g) * dim_out + e], wt_row, window_grads.data() + (i * heads + g) * window,
               static_cast<int>(window));
      }
    });
  }

  // dx: items (sequence, head, chunk of raw rows) own their dx rows; each raw row gathers from the
  // up to l/s windows that cover it.
  std::fill(dx, dx + seqs.total() * heads * dim, T(0));
  std::vector<std::array<std::int64_t, 3>> row_items;
  for (int b = 0; b < seqs.num_seqs(); ++b)
    if (cmp.length(b) > 0)
      for (int g = 0; g < heads; ++g)
        for (std::int64_t p0 = 0; p0 < seqs.length(b); p0 += kRowsPerItem) row_items.push_back({b, g, p0});
  parallel_for(static_cast<std::int64_t>(row_items.size()), [&](std::int64_t item) {
    const int b = static_cast<int>(row_items[item][0]);
    const int g = static_cast<int>(row_items[item][1]);
    const std::int64_t p_end = std::min(seqs.length(b), row_items[item][2] + kRowsPerItem);
    for (std::int64_t p = row_items[item][2]; p < p_end; ++p) {
      const std::int64_t first_window = p >= l ? (p - l + s) / s : 0;  // ceil((p - l + 1) / s)
      const std::int64_t last_window = std::min(cmp.length(b) - 1, p / s);
      T* dxrow = dx + ((seqs.start(b) + p) * heads + g) * dim;
      for (std::int64_t i = first_window; i <= last_window; ++i) {
        const std::int64_t compressed_row = (cmp.start(b) + i) * heads + g;
        const std::int64_t j = p - i * s;
        if (weight != nullptr) {
          axpy(T(1), window_grads.data() + compressed_row * window + j * dim, dxrow, dim);
        } else {
          axpy(inv_l, dy + compressed_row * dim_out, dxrow, dim);
        }
      }
    }
  });

  // d_weight sums over every compressed token of every sequence: items (head, window offset j)
  // own the D x Dout block of rows j*D .. j*D+D-1 and walk all tokens in tiles.
  if (d_weight != nullptr && weight != nullptr) {
    std::vector<std::array<std::int64_t, 2>> tokens;  // (first raw row, compressed row), global
    for (int b = 0; b < seqs.num_seqs(); ++b)
      for (std::int64_t i = 0; i < cmp.length(b); ++i) tokens.push_back({seqs.start(b) + i * s, cmp.start(b) + i});
    const auto token_count = static_cast<std::int64_t>(tokens.size());
    parallel_for(static_cast<std::int64_t>(heads) * l, [&](std::int64_t item) {
      const std::int64_t g = item / l, j = item % l;
      T* block = d_weight + (g * window + j * dim) * dim_out;
      std::fill(block, block + static_cast<std::int64_t>(dim) * dim_out, T(0));
      const T* pe = pos_emb != nullptr ? pos_emb + (g * l + j) * dim : nullptr;
      for (std::int64_t u0 = 0; u0 < token_count; u0 += kTokensPerTile) {
        const std::int64_t u_end = std::min(token_count, u0 + kTokensPerTile);
        for (int d = 0; d < dim; ++d) {
          const T offset = pe != nullptr ? pe[d] : T(0);
          T* block_row = block + static_cast<std::int64_t>(d) * dim_out;
          for (std::int64_t u = u0; u < u_end; ++u) {
            const auto [raw_row, compressed_row] = tokens[static_cast<std::size_t>(u)];
            axpy(x[((raw_row + j) * heads + g) * dim + d] + offset, dy + (compressed_row * heads + g) * dim_out,
                 block_row, dim_out);
          }
        }
      }
    });
  }

  // The positional embedding enters every window alike, so its gradient only needs the sum of dy
  // over all compressed tokens: d_pe[j*D+d] = W[j*D+d, :] . sum_i dy[i] (linear) or sum_i dy[i] / l.
  if (d_pos_emb != nullptr) {
    parallel_for(heads, [&](std::int64_t g) {
      std::vector<T> dy_sum(static_cast<std::size_t>(dim_out), T(0));
      for (int b = 0; b < seqs.num_seqs(); ++b)
        for (std::int64_t i = 0; i < cmp.length(b); ++i)
          axpy(T(1), dy + ((cmp.start(b) + i) * heads + g) * dim_out, dy_sum.data(), dim_out);
      T* dpe = d_pos_emb + g * window;
      for (std::int64_t r = 0; r < window; ++r)
        dpe[r] = weight != nullptr ? dot(weight + (g * window + r) * dim_out, dy_sum.data(), dim_out)
                                   : inv_l * dy_sum[static_cast<std::size_t>(r % dim)];
    });
  }
}

template void compress_forward<float>(const NsaConfig&, const Varlen&, const Varlen&, int, int, int, const float*,
                                      const float*, const float*, float*);
template void compress_forward<double>(const NsaConfig&, const Varlen&, const Varlen&, int, int, int, const double*,
                                       const double*, const double*, double*);
template void compress_backward<float>(const NsaConfig&, const Varlen&, const Varlen&, int, int, int, const float*,
                                       const float*, const float*, const float*, float*, float*, float*);
template void compress_backward<double>(const NsaConfig&, const Varlen&, const Varlen&, int, int, int,
                                        const double*, const double*, const double*, const double*, double*, double*,
                                        double*);

}  // namespace fsa::ref
