// The reference backend behind the public entry points: load the (validated) host tensors into
// contiguous arrays of the compute type (fp64 for fp64 inputs, else fp32), run the op, store.
#pragma once

#include "fsa/config.hpp"
#include "fsa/status.hpp"
#include "fsa/types.hpp"

namespace fsa::ref {

void compressed_cu_seqlens(const NsaConfig& config, const TensorView& cu_seqlens, const TensorView& cu_cmp);
void compress_forward(const NsaConfig& config, const TensorView& x, const TensorView& cu_seqlens,
                      const TensorView& cu_cmp, const TensorView& weight, const TensorView& pos_emb,
                      const TensorView& y);
void compress_backward(const NsaConfig& config, const TensorView& x, const TensorView& cu_seqlens,
                       const TensorView& cu_cmp, const TensorView& weight, const TensorView& pos_emb,
                       const TensorView& dy, const TensorView& dx, const TensorView& d_weight,
                       const TensorView& d_pos_emb);
void rope(const RopeConfig& rope, const TensorView& x, const TensorView& cu, int position_stride, const TensorView& y,
          bool inverse);
void cmp_attn_forward(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp, const TensorView& v_cmp,
                      const TensorView& cu_seqlens, const TensorView& cu_cmp, const TensorView& o,
                      const TensorView& lse);
void cmp_attn_backward(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp,
                       const TensorView& v_cmp, const TensorView& cu_seqlens, const TensorView& cu_cmp,
                       const TensorView& o, const TensorView& lse, const TensorView& d_o, const TensorView& dq,
                       const TensorView& dk_cmp, const TensorView& dv_cmp);
void select_blocks(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp, const TensorView& lse_cmp,
                   const TensorView& cu_seqlens, const TensorView& cu_cmp, const TensorView& topk_idx);
void slc_attn_forward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                      const TensorView& topk_idx, const TensorView& cu_seqlens, const TensorView& o,
                      const TensorView& lse);
void slc_attn_backward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                       const TensorView& topk_idx, const TensorView& cu_seqlens, const TensorView& o,
                       const TensorView& lse, const TensorView& d_o, const TensorView& dq, const TensorView& dk,
                       const TensorView& dv);
void swa_forward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                 const TensorView& cu_seqlens, const TensorView& o, const TensorView& lse);
void swa_backward(const NsaConfig& config, const TensorView& q, const TensorView& k, const TensorView& v,
                  const TensorView& cu_seqlens, const TensorView& o, const TensorView& lse, const TensorView& d_o,
                  const TensorView& dq, const TensorView& dk, const TensorView& dv);
void combine_forward(const NsaConfig& config, const TensorView& gates, const TensorView& o_cmp,
                     const TensorView& o_slc, const TensorView& o_swa, const TensorView& o);
void combine_backward(const NsaConfig& config, const TensorView& gates, const TensorView& o_cmp,
                      const TensorView& o_slc, const TensorView& o_swa, const TensorView& d_o,
                      const TensorView& d_gates, const TensorView& d_o_cmp, const TensorView& d_o_slc,
                      const TensorView& d_o_swa);

}  // namespace fsa::ref
