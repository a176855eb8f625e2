// Host side of the masked flash-attention kernels shared by compressed attention (cmp_attn) and
// sliding-window attention (swa): the params of the tensors, and the forward / backward runs with
// the one place that turns the runtime dtype and head dims into template arguments. Callers set
// the mask fields (flash_params.hpp) and check the rows' alignment with their own argument names.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/backend.hpp"
#include "fsa/status.hpp"
#include "fsa/types.hpp"
#include "fsa/workspace.hpp"
#include "kernels/flash/flash_params.hpp"

namespace fsa::cuda::flash {

// q [N, Hq, Dqk], k [key_rows, Hkv, Dqk], v [key_rows, Hkv, Dv], cu_seqlens [nseq + 1], key_base
// [nseq + 1] (first key row of each sequence), o [N, Hq, Dv], lse [Hq, N].
FlashParams make_params(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& cu_seqlens,
                        const TensorView& key_base, const TensorView& o, const TensorView& lse, float scale);
// The same for a chunk after each sequence's cached prefix, its keys gathered into rows
// (nsa_prefill's long chunks, forward only; flash_params.hpp, prefix).
FlashParams make_prefixed_params(const TensorView& q, const PrefixedKeyRows& keys, const TensorView& cu_seqlens,
                                 const TensorView& o, const TensorView& lse, float scale);
// d_o like o; dq, dk, dv like q, k, v.
void set_gradients(FlashParams& p, const TensorView& d_o, const TensorView& dq, const TensorView& dk,
                   const TensorView& dv);

// o and lse of every query row.
Status forward(const char* op, const FlashParams& p, DType dtype, std::int64_t dqk, std::int64_t dv,
               cudaStream_t stream);
// dq, dk and dv (every row written; key rows past key_base[nseq] get zeros), with the fp32
// accumulators in `workspace` (flash_backward_workspace_bytes, cuda/backend.hpp).
Status backward(const char* op, FlashParams p, DType dtype, std::int64_t dqk, std::int64_t dv, cudaStream_t stream,
                const Workspace& workspace);

}  // namespace fsa::cuda::flash
