// The whole NSA attention layer (docs/semantics.md sections 1-7 composed as in section 2's order):
// compress pre-RoPE k, v -> rotate q, k, compressed k -> compressed attention -> selection ->
// selected attention and sliding window -> gated combination.
#pragma once

#include <cstddef>
#include <cstdint>

#include "fsa/config.hpp"
#include "fsa/ops.hpp"
#include "fsa/status.hpp"
#include "fsa/types.hpp"
#include "fsa/workspace.hpp"

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

// How the layer runs on the GPU (ignored on the CPU). The same options must be given to
// nsa_saved_bytes, nsa_forward, nsa_backward and the workspace queries of one problem.
struct NsaLayerOptions {
  SlcOptions selected{};  // path, deterministic backward, workspace_cap (the cap of every step)
};

// Bytes of the opaque buffer (uint8 [bytes], on the inputs' device) that nsa_forward fills and
// nsa_backward reads: compressed keys and values, each branch's output and LSE, topk_idx and, on
// the GPU, the selected-attention plan (built once by the forward, reused by the backward).
// Depends on shapes only.
std::size_t nsa_saved_bytes(const NsaConfig& config, const NsaLayerShape& shape, const NsaLayerOptions& options = {});

// Workspace (workspace.hpp) of nsa_forward, with (`with_saved`) or without a saved buffer
// (inference: the saved tensors then live in the workspace), and of nsa_backward. It holds the
// rotated q and k, the backward's per-branch gradients and the largest step's scratch; 0 on the
// CPU.
std::size_t nsa_forward_workspace_bytes(const NsaConfig& config, const NsaLayerShape& shape, bool with_saved,
                                        const NsaLayerOptions& options = {});
std::size_t nsa_backward_workspace_bytes(const NsaConfig& config, const NsaLayerShape& shape,
                                         const NsaLayerOptions& options = {});

// o [N, Hq, Dv]. `saved` may be undefined for inference (nothing is kept for the backward). o,
// saved and the backward's gradients may not share memory with the inputs (ops.hpp conventions).
Status nsa_forward(const NsaConfig& config, const NsaLayerInputs& inputs, const TensorView& o,
                   const TensorView& saved, const NsaLayerOptions& options = {}, const Workspace& workspace = {});
// Gradients of nsa_forward given d_o [N, Hq, Dv] and the `saved` buffer it filled.
Status nsa_backward(const NsaConfig& config, const NsaLayerInputs& inputs, const TensorView& saved,
                    const TensorView& d_o, const NsaLayerGrads& grads, const NsaLayerOptions& options = {},
                    const Workspace& workspace = {});

}  // namespace fsa
