// Argument checks shared by the entry points. Each returns a Status whose message starts with the
// argument's name and says what was expected and what was passed.
#pragma once

#include <cstdint>
#include <exception>
#include <initializer_list>
#include <string>
#include <vector>

#include "fsa/config.hpp"
#include "fsa/layer.hpp"
#include "fsa/status.hpp"
#include "fsa/types.hpp"
#include "fsa/workspace.hpp"

namespace fsa::detail {

// One expected dimension: a value (or kAnyDim) and the symbol printed in messages ("N", "Hq").
struct Dim {
  static constexpr std::int64_t kAnyDim = -1;
  std::int64_t value = kAnyDim;
  const char* symbol = "";
};

// A tensor argument with its name.
struct Arg {
  const char* name;
  const TensorView& view;
};

// Defined, the expected rank and sizes, last dim contiguous, non-negative and non-overlapping
// strides, non-null data when non-empty.
Status check_tensor(const Arg& arg, std::initializer_list<Dim> dims);
// Checks dtype membership: floating tensors must be bf16/fp16 (any device) or fp32/fp64 (CPU).
Status check_float_dtype(const Arg& arg);
Status check_dtype(const Arg& arg, DType expected);
Status check_same_dtype(const Arg& arg, const Arg& reference);
Status check_same_device(const Arg& arg, const Arg& reference);
// int32 [nseq+1]; on the CPU also the values: cu[0] = 0, non-decreasing, cu[nseq] = total.
// (On a GPU the values are not read: that would synchronise with the host.) total < 0: any total;
// exact = false: cu[nseq] <= total (compressed tensors sized by max_compressed_tokens).
Status check_cu_seqlens(const Arg& arg, std::int64_t total, const char* total_symbol, bool exact = true);
// cu_cmp must match cu_seqlens under the config; on the CPU the values are compared, and the
// compressed tensors must hold cu_cmp[nseq] rows.
Status check_cu_cmp(const Arg& cu_cmp, const TensorView& cu_seqlens, const NsaConfig& config,
                    std::int64_t compressed_rows);

// The head counts and dims of an attention call, taken from q, k, v.
struct AttnDims {
  std::int64_t tokens = 0;
  int heads_q = 0, heads_kv = 0, dim_qk = 0, dim_v = 0;
  int group() const { return heads_q / heads_kv; }
};
// q [N, Hq, Dqk], k [Nk, Hkv, Dqk], v [Nk, Hkv, Dv]; Hq % Hkv == 0; same dtype and device.
// kv_rows is N for raw keys, kAnyDim for compressed keys.
Status check_qkv(const Arg& q, const Arg& k, const Arg& v, std::int64_t kv_rows, AttnDims* dims);

Status not_implemented_on(Device device, const char* op);

// Outputs may not share memory with an input, with another output or with the workspace: the op
// would overwrite what it still reads, or two of its results would land in one place (nothing the
// caller gave may be overwritten). Proven for dense tensors (elements without gaps, in any dim
// order), whose byte ranges are exactly their elements; strided views, such as slices of one fused
// qkv buffer, are let through rather than refused on a range test that cannot tell. Undefined and
// empty tensors take no part. `in_place` names the one (output, input) pair the op allows to be the
// very same tensor (RoPE), or is {nullptr, nullptr}.
struct InPlace {
  const char* output = nullptr;
  const char* input = nullptr;
};
Status check_no_overlap(const std::vector<Arg>& outputs, const std::vector<Arg>& inputs,
                        const Workspace& workspace = {}, InPlace in_place = {});

}  // namespace fsa::detail

namespace fsa::detail {

// Same dtype, device and sizes as `reference` (an output or gradient shaped like an input).
Status check_like(const Arg& arg, const Arg& reference);
// lse: fp32 [Hq, N] on the device of `reference`.
Status check_lse(const Arg& lse, std::int64_t heads_q, std::int64_t tokens, const Arg& reference);

// The whole layer's inputs (layer.hpp): config, q, k, v, cu_seqlens (values on the CPU), the
// compression parameters the config asks for, gates; fills `dims`.
Status check_layer_inputs(const NsaConfig& config, const NsaLayerInputs& inputs, AttnDims* dims);
// An output (or its gradient) of the layer: [N, Hq, Dv], q's dtype and device.
Status check_layer_output(const Arg& out, const Arg& q, const AttnDims& dims);

// Runs a reference-backend call, turning an escaped exception (out of memory) into a Status.
template <class Fn>
Status run_reference(const char* op, Fn&& fn) {
  try {
    fn();
    return Status::ok();
  } catch (const std::exception& e) {
    return FSA_ERROR(StatusCode::kInternal, std::string(op) + ": CPU reference failed: " + e.what());
  }
}

}  // namespace fsa::detail
