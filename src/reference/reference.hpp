// The CPU reference backend: every NSA op of docs/semantics.md, forward and backward, on contiguous
// row-major host arrays of T = float or double. It is the test oracle and the no-GPU path.
// Tensors are [rows, heads, dim] unless said otherwise; lse is [Hq, N].
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "fsa/config.hpp"

namespace fsa::ref {

// Row offsets of a packed batch (a host copy of cu_seqlens or cu_cmp).
struct Varlen {
  std::vector<std::int32_t> cu{0};

  int num_seqs() const { return static_cast<int>(cu.size()) - 1; }
  std::int64_t start(int b) const { return cu[static_cast<std::size_t>(b)]; }
  std::int64_t length(int b) const { return cu[static_cast<std::size_t>(b) + 1] - cu[static_cast<std::size_t>(b)]; }
  std::int64_t total() const { return cu.back(); }
};

// The compressed tokens' offsets (docs/semantics.md section 1).
Varlen compressed_varlen(const Varlen& seqs, const NsaConfig& config);

// Rows of a packed batch and the positions they stand at: row t of sequence b of `rows` is position
// first[b] + t of its sequence. The layer's rows start their sequences (starting()); the new tokens
// of an inference call (inference.hpp) start after their sequence's cached tokens.
struct RowPositions {
  const Varlen* rows = nullptr;
  std::vector<std::int64_t> first;  // one per sequence

  static RowPositions starting(const Varlen& rows) {
    return {&rows, std::vector<std::int64_t>(static_cast<std::size_t>(rows.num_seqs()), 0)};
  }
  std::int64_t position(int b, std::int64_t t) const { return first[static_cast<std::size_t>(b)] + t; }
};

struct HeadDims {
  int hq = 1, hkv = 1, dqk = 1, dv = 1;
  int group() const { return hq / hkv; }
};

// ---- Compression -------------------------------------------------------------------------------
// x [N, H, D] -> y [Ncmp, H, Dout]; weight [H, l*D, Dout] or null (mean, Dout = D);
// pos_emb [H, l, D] or null.
template <class T>
void compress_forward(const NsaConfig& config, const Varlen& seqs, const Varlen& cmp, int heads, int dim,
                      int dim_out, const T* x, const T* weight, const T* pos_emb, T* y);
// Overwrites dx [N, H, D]; d_weight and d_pos_emb when non-null.
template <class T>
void compress_backward(const NsaConfig& config, const Varlen& seqs, const Varlen& cmp, int heads, int dim,
                       int dim_out, const T* x, const T* weight, const T* pos_emb, const T* dy, T* dx,
                       T* d_weight, T* d_pos_emb);

// ---- RoPE --------------------------------------------------------------------------------------
// Rotates x [rows, H, D] at position (row - cu[b]) * position_stride; `inverse` rotates by the
// negative angle (the backward). y may alias x. The angles are fp32, from rope_frequency
// (common/rope_frequency.hpp) as on the GPU.
template <class T>
void rope_apply(const RopeConfig& rope, const Varlen& rows, int position_stride, int heads, int dim, const T* x,
                T* y, bool inverse);
// The same at position rows.position(b, row - cu[b]) * position_stride.
template <class T>
void rope_apply(const RopeConfig& rope, const RowPositions& rows, int position_stride, int heads, int dim, const T* x,
                T* y, bool inverse);

// ---- Attention over per-query key ranges ---------------------------------------------------------
// Every attention of NSA is softmax attention of query (t, h) over a set of key positions of its own
// sequence, given as sorted disjoint ranges of local key rows: compressed [0, visible), selected
// (one range per block), window [t-w, t+1).
struct KeyRange {
  std::int64_t begin, end;
};
struct AttentionProblem {
  const Varlen* q_seqs = nullptr;   // query rows
  const Varlen* kv_seqs = nullptr;  // key/value rows (raw or compressed)
  HeadDims dims;
  double scale = 1.0;
  // Fills `ranges` (cleared by the caller) for local query t of sequence b in kv group g.
  std::function<void(int b, std::int64_t t, int g, std::vector<KeyRange>& ranges)> keys;
};
// o [N, Hq, Dv]; lse [Hq, N] (natural log, -inf and o = 0 for an empty key set).
template <class T>
void attention_forward(const AttentionProblem& p, const T* q, const T* k, const T* v, T* o, T* lse);
// Overwrites dq, dk, dv.
template <class T>
void attention_backward(const AttentionProblem& p, const T* q, const T* k, const T* v, const T* o, const T* lse,
                        const T* d_o, T* dq, T* dk, T* dv);

// Key sets of the three branches.
AttentionProblem compressed_attention_problem(const NsaConfig& config, const Varlen& seqs, const Varlen& cmp,
                                              HeadDims dims, double scale);
// topk [Hkv, N, width]; the problem keeps a pointer to it.
AttentionProblem selected_attention_problem(const NsaConfig& config, const Varlen& seqs, HeadDims dims, double scale,
                                            const std::int32_t* topk, int width);
AttentionProblem window_attention_problem(const NsaConfig& config, const Varlen& seqs, HeadDims dims, double scale);
// The same key sets for queries that stand anywhere in their sequences (the rows of q, o, lse and
// topk follow `queries`); the keys are the rows of `cmp` or of the whole sequences `seqs`.
AttentionProblem compressed_attention_problem(const NsaConfig& config, const RowPositions& queries, const Varlen& cmp,
                                              HeadDims dims, double scale);
AttentionProblem selected_attention_problem(const NsaConfig& config, const RowPositions& queries, const Varlen& seqs,
                                            HeadDims dims, double scale, const std::int32_t* topk, int width);
AttentionProblem window_attention_problem(const NsaConfig& config, const RowPositions& queries, const Varlen& seqs,
                                          HeadDims dims, double scale);

// The valid blocks of one topk row, sanitised as docs/semantics.md section 5 says: sorted, unique,
// in [0, min(bq(t), nblk(n) - 1)].
std::vector<std::int32_t> sanitize_blocks(const std::int32_t* row, int width, std::int64_t t, std::int64_t n,
                                          int block_size);

// ---- Block selection ---------------------------------------------------------------------------
// Block scores S[t, g, j] for j in 0..bq(t) of one query row (docs/semantics.md section 4,
// steps 1-3).
template <class T>
std::vector<T> block_scores(const NsaConfig& config, const Varlen& seqs, const Varlen& cmp, HeadDims dims,
                            double scale, const T* q, const T* k_cmp, const T* lse_cmp, int b, std::int64_t t, int g);
// topk [Hkv, N, K] (docs/semantics.md section 4 steps 4-5).
template <class T>
void select_blocks(const NsaConfig& config, const Varlen& seqs, const Varlen& cmp, HeadDims dims, double scale,
                   const T* q, const T* k_cmp, const T* lse_cmp, std::int32_t* topk);
// The same for queries that stand anywhere in their sequences: q, lse_cmp and topk follow `queries`.
template <class T>
void select_blocks(const NsaConfig& config, const RowPositions& queries, const Varlen& cmp, HeadDims dims,
                   double scale, const T* q, const T* k_cmp, const T* lse_cmp, std::int32_t* topk);
// Steps 4-5 for one row given its scores (size bq+1): the chosen blocks, ascending, -1 padded to K.
template <class T>
void choose_blocks(const NsaConfig& config, std::int64_t query_block, const std::vector<T>& scores,
                   std::int32_t* out_row);

// ---- The branches of the layer ------------------------------------------------------------------
// docs/semantics.md sections 3-6 composed as the layer runs them: compressed attention, selection,
// selected and sliding-window attention of the queries `queries` (rows of q_rot and of every
// output) over the whole sequences `seqs` (rows of k_rot, v) and their compressed tokens `cmp` (rows
// of k_cmp, v_cmp). Keys are rotated; the scale is config.softmax_scale(Dqk).
template <class T>
struct BranchOutputs {
  std::vector<T> o_cmp, lse_cmp, o_slc, lse_slc, o_swa, lse_swa;  // [N, Hq, Dv] and [Hq, N]
  std::vector<std::int32_t> topk;                                  // [Hkv, N, K]
};
template <class T>
BranchOutputs<T> branches_forward(const NsaConfig& config, const RowPositions& queries, const Varlen& seqs,
                                  const Varlen& cmp, HeadDims dims, const T* q_rot, const T* k_rot, const T* v,
                                  const T* k_cmp, const T* v_cmp);

// ---- Gated combination -------------------------------------------------------------------------
// gates [N, Hq, 3] or, when shared, [N, 3].
template <class T>
void combine_forward(std::int64_t n, int hq, int dv, bool shared_gates, const T* gates, const T* o_cmp,
                     const T* o_slc, const T* o_swa, T* o);
template <class T>
void combine_backward(std::int64_t n, int hq, int dv, bool shared_gates, const T* gates, const T* o_cmp,
                      const T* o_slc, const T* o_swa, const T* d_o, T* d_gates, T* d_o_cmp, T* d_o_slc,
                      T* d_o_swa);

}  // namespace fsa::ref
