// combine_forward / combine_backward: validation and dispatch.
#include "dispatch.hpp"
#include "fsa/ops.hpp"
#include "reference/ops.hpp"
#include "validate.hpp"
#ifdef FSA_WITH_CUDA
#include "kernels/combine/combine.hpp"
#endif

namespace fsa {

using detail::Arg;
using detail::Dim;

namespace {

Status check_combine(const NsaConfig& config, const TensorView& gates, const TensorView& o_cmp,
                     const TensorView& o_slc, const TensorView& o_swa) {
  FSA_RETURN_IF_ERROR(config.validate());
  const Arg a{"o_cmp", o_cmp};
  FSA_RETURN_IF_ERROR(detail::check_float_dtype(a));
  FSA_RETURN_IF_ERROR(detail::check_tensor(a, {{Dim::kAnyDim, "N"}, {Dim::kAnyDim, "Hq"}, {Dim::kAnyDim, "Dv"}}));
  FSA_RETURN_IF_ERROR(detail::check_like({"o_slc", o_slc}, a));
  FSA_RETURN_IF_ERROR(detail::check_like({"o_swa", o_swa}, a));
  const Arg g{"gates", gates};
  FSA_RETURN_IF_ERROR(detail::check_same_dtype(g, a));
  FSA_RETURN_IF_ERROR(detail::check_same_device(g, a));
  if (config.gate_mode == GateMode::kPerHead)
    return detail::check_tensor(g, {{o_cmp.size(0), "N"}, {o_cmp.size(1), "Hq"}, {3, "3"}});
  return detail::check_tensor(g, {{o_cmp.size(0), "N"}, {3, "3"}});
}

}  // namespace

Status combine_forward(const NsaConfig& config, const TensorView& gates, const TensorView& o_cmp,
                       const TensorView& o_slc, const TensorView& o_swa, const TensorView& o) {
  FSA_RETURN_IF_ERROR(check_combine(config, gates, o_cmp, o_slc, o_swa));
  FSA_RETURN_IF_ERROR(detail::check_like({"o", o}, {"o_cmp", o_cmp}));
  if (!detail::on_cpu(o_cmp)) {
#ifdef FSA_WITH_CUDA
    return cuda::combine_forward(config, gates, o_cmp, o_slc, o_swa, o);
#else
    return detail::not_implemented_on(o_cmp.device, "combine_forward");
#endif
  }
  return detail::run_reference("combine_forward",
                               [&] { ref::combine_forward(config, gates, o_cmp, o_slc, o_swa, o); });
}

Status combine_backward(const NsaConfig& config, const TensorView& gates, const TensorView& o_cmp,
                        const TensorView& o_slc, const TensorView& o_swa, const TensorView& d_o,
                        const TensorView& d_gates, const TensorView& d_o_cmp, const TensorView& d_o_slc,
                        const TensorView& d_o_swa) {
  FSA_RETURN_IF_ERROR(check_combine(config, gates, o_cmp, o_slc, o_swa));
  const Arg a{"o_cmp", o_cmp};
  FSA_RETURN_IF_ERROR(detail::check_like({"d_o", d_o}, a));
  // Every gradient is optional: an undefined one is skipped.
  if (d_gates.defined()) FSA_RETURN_IF_ERROR(detail::check_like({"d_gates", d_gates}, {"gates", gates}));
  if (d_o_cmp.defined()) FSA_RETURN_IF_ERROR(detail::check_like({"d_o_cmp", d_o_cmp}, a));
  if (d_o_slc.defined()) FSA_RETURN_IF_ERROR(detail::check_like({"d_o_slc", d_o_slc}, a));
  if (d_o_swa.defined()) FSA_RETURN_IF_ERROR(detail::check_like({"d_o_swa", d_o_swa}, a));
  if (!detail::on_cpu(o_cmp)) {
#ifdef FSA_WITH_CUDA
    return cuda::combine_backward(config, gates, o_cmp, o_slc, o_swa, d_o, d_gates, d_o_cmp, d_o_slc, d_o_swa);
#else
    return detail::not_implemented_on(o_cmp.device, "combine_backward");
#endif
  }
  return detail::run_reference("combine_backward", [&] {
    ref::combine_backward(config, gates, o_cmp, o_slc, o_swa, d_o, d_gates, d_o_cmp, d_o_slc, d_o_swa);
  });
}

}  // namespace fsa
