// select_blocks: validation and the route to a backend.
#include "fsa/ops.hpp"
#include "reference/ops.hpp"
#include "route.hpp"
#include "validate.hpp"

namespace fsa {

using detail::Arg;
using detail::Dim;

Status select_blocks(const NsaConfig& config, const TensorView& q, const TensorView& k_cmp,
                     const TensorView& lse_cmp, const TensorView& cu_seqlens, const TensorView& cu_cmp,
                     const TensorView& topk_idx) {
  FSA_RETURN_IF_ERROR(config.validate());
  const Arg qa{"q", q}, ka{"k_cmp", k_cmp};
  FSA_RETURN_IF_ERROR(detail::check_float_dtype(qa));
  FSA_RETURN_IF_ERROR(detail::check_tensor(qa, {{Dim::kAnyDim, "N"}, {Dim::kAnyDim, "Hq"}, {Dim::kAnyDim, "Dqk"}}));
  FSA_RETURN_IF_ERROR(detail::check_same_dtype(ka, qa));
  FSA_RETURN_IF_ERROR(detail::check_same_device(ka, qa));
  FSA_RETURN_IF_ERROR(detail::check_tensor(ka, {{Dim::kAnyDim, "Ncmp"}, {Dim::kAnyDim, "Hkv"}, {q.size(2), "Dqk"}}));
  const std::int64_t n = q.size(0), hq = q.size(1), hkv = k_cmp.size(1);
  if (hkv <= 0 || hq % hkv != 0)
    return FSA_INVALID("q: expected Hq to be a multiple of Hkv (Hq % Hkv == 0), got Hq=" + std::to_string(hq) +
                       " Hkv=" + std::to_string(hkv));
  FSA_RETURN_IF_ERROR(detail::check_lse({"lse_cmp", lse_cmp}, hq, n, qa));
  const Arg cu{"cu_seqlens", cu_seqlens};
  FSA_RETURN_IF_ERROR(detail::check_same_device(cu, qa));
  FSA_RETURN_IF_ERROR(detail::check_cu_seqlens(cu, n, "N (q.size(0))"));
  FSA_RETURN_IF_ERROR(detail::check_cu_cmp({"cu_cmp", cu_cmp}, cu_seqlens, config, k_cmp.size(0)));
  const Arg out{"topk_idx", topk_idx};
  FSA_RETURN_IF_ERROR(detail::check_dtype(out, DType::kInt32));
  FSA_RETURN_IF_ERROR(detail::check_same_device(out, qa));
  FSA_RETURN_IF_ERROR(detail::check_tensor(out, {{hkv, "Hkv"}, {n, "N"}, {config.topk, "K"}}));
  FSA_RETURN_IF_ERROR(detail::check_no_overlap(
      {out}, {qa, ka, {"lse_cmp", lse_cmp}, {"cu_seqlens", cu_seqlens}, {"cu_cmp", cu_cmp}}));
  constexpr const char* kOp = "select_blocks";
  return detail::route(
      kOp, q.device, [&] { ref::select_blocks(config, q, k_cmp, lse_cmp, cu_seqlens, cu_cmp, topk_idx); },
      [&] {
        return FSA_CUDA_BACKEND(kOp, q.device,
                                cuda::select_blocks(config, q, k_cmp, lse_cmp, cu_seqlens, cu_cmp, topk_idx));
      });
}

}  // namespace fsa
