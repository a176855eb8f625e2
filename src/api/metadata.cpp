// compressed_cu_seqlens: cu_cmp from cu_seqlens, on the tensors' device.
#include "fsa/ops.hpp"
#include "reference/ops.hpp"
#include "route.hpp"
#include "validate.hpp"

namespace fsa {

using detail::Arg;

Status compressed_cu_seqlens(const NsaConfig& config, const TensorView& cu_seqlens, const TensorView& cu_cmp) {
  FSA_RETURN_IF_ERROR(config.validate());
  const Arg cu{"cu_seqlens", cu_seqlens}, out{"cu_cmp", cu_cmp};
  FSA_RETURN_IF_ERROR(detail::check_cu_seqlens(cu, -1, ""));
  FSA_RETURN_IF_ERROR(detail::check_dtype(out, DType::kInt32));
  FSA_RETURN_IF_ERROR(detail::check_same_device(out, cu));
  FSA_RETURN_IF_ERROR(detail::check_tensor(out, {{cu_seqlens.size(0), "nseq+1"}}));
  FSA_RETURN_IF_ERROR(detail::check_no_overlap({out}, {cu}));
  constexpr const char* kOp = "compressed_cu_seqlens";
  return detail::route(
      kOp, cu_seqlens.device, [&] { ref::compressed_cu_seqlens(config, cu_seqlens, cu_cmp); },
      [&] { return FSA_CUDA_BACKEND(kOp, cu_seqlens.device, cuda::compressed_cu_seqlens(config, cu_seqlens, cu_cmp)); });
}

}  // namespace fsa
