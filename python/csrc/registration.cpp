// The op schemas of the `fsa` torch library and their CPU kernels. Autograd formulas and fake
// (meta) implementations are registered from Python (python/fsa/_autograd.py, _fake.py).
#include <torch/library.h>

#include <string>

#include "ops.hpp"

namespace {

// The config scalars of the whole layer, in LayerArgs order.
const std::string kLayerConfigSchema =
    "int cmp_len, int cmp_stride, int block_size, int topk, int init_blocks, int local_blocks, int window, "
    "float scale, str compression, str aggregation, bool rope, float rope_theta, bool llama3_scaling, "
    "float llama3_factor, float llama3_low_freq_factor, float llama3_high_freq_factor, "
    "int llama3_original_max_position";
const std::string kRopeSchema =
    "int position_stride, float theta, bool llama3_scaling, float llama3_factor, float llama3_low_freq_factor, "
    "float llama3_high_freq_factor, int llama3_original_max_position";
const std::string kLayerTensorsSchema =
    "Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, Tensor? w_k, Tensor? pe_k, Tensor? w_v, Tensor gates";

}  // namespace

TORCH_LIBRARY(fsa, m) {
  // Every op is functional (fresh outputs, no aliasing, no mutation) and traceable by torch.compile.
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  const auto def = [&m, &tags](const std::string& schema) { m.def(schema.c_str(), tags); };
  def("compressed_cu_seqlens(Tensor cu_seqlens, int cmp_len, int cmp_stride) -> Tensor");
  def("compress_forward(Tensor x, Tensor cu_seqlens, Tensor cu_cmp, Tensor? weight, Tensor? pos_emb, "
      "int cmp_len, int cmp_stride) -> Tensor");
  def("compress_backward(Tensor x, Tensor cu_seqlens, Tensor cu_cmp, Tensor? weight, Tensor? pos_emb, Tensor dy, "
      "int cmp_len, int cmp_stride) -> (Tensor dx, Tensor d_weight, Tensor d_pos_emb)");
  def("rope_forward(Tensor x, Tensor cu, " + kRopeSchema + ") -> Tensor");
  def("rope_backward(Tensor dy, Tensor cu, " + kRopeSchema + ") -> Tensor");
  def("cmp_attn_forward(Tensor q, Tensor k_cmp, Tensor v_cmp, Tensor cu_seqlens, Tensor cu_cmp, int cmp_len, "
      "int cmp_stride, float scale) -> (Tensor o, Tensor lse)");
  def("cmp_attn_backward(Tensor q, Tensor k_cmp, Tensor v_cmp, Tensor cu_seqlens, Tensor cu_cmp, Tensor o, "
      "Tensor lse, Tensor d_o, int cmp_len, int cmp_stride, float scale) -> (Tensor dq, Tensor dk_cmp, "
      "Tensor dv_cmp)");
  def("select_blocks(Tensor q, Tensor k_cmp, Tensor lse_cmp, Tensor cu_seqlens, Tensor cu_cmp, int cmp_len, "
      "int cmp_stride, int block_size, int topk, int init_blocks, int local_blocks, float scale, "
      "str aggregation) -> Tensor");
  def("slc_attn_forward(Tensor q, Tensor k, Tensor v, Tensor topk_idx, Tensor cu_seqlens, int block_size, "
      "float scale, str path=\"auto\", int dense_threshold=0, bool deterministic=False) -> (Tensor o, Tensor lse)");
  def("slc_attn_backward(Tensor q, Tensor k, Tensor v, Tensor topk_idx, Tensor cu_seqlens, Tensor o, Tensor lse, "
      "Tensor d_o, int block_size, float scale, str path=\"auto\", int dense_threshold=0, bool deterministic=False) "
      "-> (Tensor dq, Tensor dk, Tensor dv)");
  def("swa_forward(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, int window, float scale) "
      "-> (Tensor o, Tensor lse)");
  def("swa_backward(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, Tensor o, Tensor lse, Tensor d_o, "
      "int window, float scale) -> (Tensor dq, Tensor dk, Tensor dv)");
  def("combine_forward(Tensor gates, Tensor o_cmp, Tensor o_slc, Tensor o_swa) -> Tensor");
  def("combine_backward(Tensor gates, Tensor o_cmp, Tensor o_slc, Tensor o_swa, Tensor d_o) "
      "-> (Tensor d_gates, Tensor d_o_cmp, Tensor d_o_slc, Tensor d_o_swa)");
  def("nsa_forward(" + kLayerTensorsSchema + ", " + kLayerConfigSchema + ") -> (Tensor o, Tensor saved)");
  def("nsa_backward(" + kLayerTensorsSchema + ", Tensor saved, Tensor d_o, " + kLayerConfigSchema +
      ") -> (Tensor dq, Tensor dk, Tensor dv, Tensor dw_k, Tensor dpe_k, Tensor dw_v, Tensor d_gates)");
  // No tensor arguments: one kernel for every dispatch key.
  const std::string saved_bytes_schema =
      "nsa_saved_bytes(int tokens, int num_seqs, int heads_q, int heads_kv, int head_dim_qk, int head_dim_v, "
      "ScalarType dtype, Device device, " +
      kLayerConfigSchema + ") -> int";
  m.def(saved_bytes_schema.c_str(), TORCH_FN(fsa::torch_ext::nsa_saved_bytes));
}

TORCH_LIBRARY_IMPL(fsa, CPU, m) {
  using namespace fsa::torch_ext;
  m.impl("compressed_cu_seqlens", TORCH_FN(compressed_cu_seqlens));
  m.impl("compress_forward", TORCH_FN(compress_forward));
  m.impl("compress_backward", TORCH_FN(compress_backward));
  m.impl("rope_forward", TORCH_FN(rope_forward));
  m.impl("rope_backward", TORCH_FN(rope_backward));
  m.impl("cmp_attn_forward", TORCH_FN(cmp_attn_forward));
  m.impl("cmp_attn_backward", TORCH_FN(cmp_attn_backward));
  m.impl("select_blocks", TORCH_FN(select_blocks));
  m.impl("slc_attn_forward", TORCH_FN(slc_attn_forward));
  m.impl("slc_attn_backward", TORCH_FN(slc_attn_backward));
  m.impl("swa_forward", TORCH_FN(swa_forward));
  m.impl("swa_backward", TORCH_FN(swa_backward));
  m.impl("combine_forward", TORCH_FN(combine_forward));
  m.impl("combine_backward", TORCH_FN(combine_backward));
  m.impl("nsa_forward", TORCH_FN(nsa_forward));
  m.impl("nsa_backward", TORCH_FN(nsa_backward));
}
