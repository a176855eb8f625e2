// The whole NSA attention layer (spec sections 1-7 composed as in section 2's order):
// compress pre-RoPE k, v -> rotate q, k, compressed k -> compressed attention -> selection ->
// selected attention and sliding window -> gated combination.
#pragma once

#include <cstddef>
#include <cstdint>

#include "fsa/config.hpp"
#include "fsa/status.hpp"
#include "fsa/types.hpp"

namespace fsa {

struct NsaLayerInputs {
  TensorView q;           // [N, Hq, Dqk], pre-RoPE
  TensorView k;           // [N, Hkv, Dqk], pre-RoPE
  TensorView v;           // [N, Hkv, Dv]
  TensorView cu_seqlens;  // int32 [nseq+1]
  TensorView w_k;         // [Hkv, l*Dqk, Dqk] for kLinear; undefined for kMean
  TensorView pe_k;        // [Hkv, l, Dqk] positional embedding of keys; may be undefined
  TensorView w_v;         // [Hkv, l*Dv, Dv] for kLinear; undefined for kMean
  TensorView gates;       // [N, Hq, 3] or [N, 3] (config.gate_mode), values already activated
};

// Gradients of every input; any may be undefined to skip it (cu_seqlens has none).
struct NsaLayerGrads {
  TensorView dq, dk, dv, dw_k, dpe_k, dw_v, d_gates;
};

// The problem's shape, enough to size the saved-activation buffer without touching data.
struct NsaLayerShape {
  std::int64_t tokens = 0;  // N
  int num_seqs = 0;         // nseq
  int heads_q = 0, heads_kv = 0, head_dim_qk = 0, head_dim_v = 0;
  DType dtype = DType::kBFloat16;
  Device device{};

  static NsaLayerShape of(const NsaLayerInputs& inputs);
};

// Bytes of the opaque buffer (uint8 [bytes], on the inputs' device) that nsa_forward fills and
// nsa_backward reads. Depends on shapes only.
std::size_t nsa_saved_bytes(const NsaConfig& config, const NsaLayerShape& shape);

// o [N, Hq, Dv]. `saved` may be undefined for inference (nothing is kept for the backward).
Status nsa_forward(const NsaConfig& config, const NsaLayerInputs& inputs, const TensorView& o,
                   const TensorView& saved);
// Gradients of nsa_forward given d_o [N, Hq, Dv] and the `saved` buffer it filled.
Status nsa_backward(const NsaConfig& config, const NsaLayerInputs& inputs, const TensorView& saved,
                    const TensorView& d_o, const NsaLayerGrads& grads);

}  // namespace fsa
