// compressed_cu_seqlens: cu_cmp from cu_seqlens, on the tensors' device.
#include "dispatch.hpp"
#include "fsa/ops.hpp"
#include "reference/ops.hpp"
#include "validate.hpp"
#ifdef FSA_WITH_CUDA
#include "kernels/varlen/compressed_cu_seqlens.hpp"
#endif

namespace fsa {

using detail::Arg;

Status compressed_cu_seqlens(const NsaConfig& config, const TensorView& cu_seqlens, const TensorView& cu_cmp) {
  FSA_RETURN_IF_ERROR(config.validate());
  const Arg cu{"cu_seqlens", cu_seqlens}, out{"cu_cmp", cu_cmp};
  FSA_RETURN_IF_ERROR(detail::check_cu_seqlens(cu, -1, ""));
  FSA_RETURN_IF_ERROR(detail::check_dtype(out, DType::kInt32));
  FSA_RETURN_IF_ERROR(detail::check_same_device(out, cu));
  FSA_RETURN_IF_ERROR(detail::check_tensor(out, {{cu_seqlens.size(0), "nseq+1"}}));
  if (detail::on_cpu(cu_seqlens))
    return detail::run_reference("compressed_cu_seqlens", [&] { ref::compressed_cu_seqlens(config, cu_seqlens, cu_cmp); });
#ifdef FSA_WITH_CUDA
  return cuda::compressed_cu_seqlens(config, cu_seqlens, cu_cmp);
#else
  return detail::not_implemented_on(cu_seqlens.device, "compressed_cu_seqlens");
#endif
}

}  // namespace fsa
