// combine_forward / combine_backward: validation and the route to a backend.
#include "fsa/ops.hpp"
#include "reference/ops.hpp"
#include "route.hpp"
#include "validate.hpp"

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
  FSA_RETURN_IF_ERROR(detail::check_no_overlap(
      {{"o", o}}, {{"gates", gates}, {"o_cmp", o_cmp}, {"o_slc", o_slc}, {"o_swa", o_swa}}));
  constexpr const char* kOp = "combine_forward";
  return detail::route(
      kOp, o_cmp.device, [&] { ref::combine_forward(config, gates, o_cmp, o_slc, o_swa, o); },
      [&] { return FSA_CUDA_BACKEND(kOp, o_cmp.device, cuda::combine_forward(config, gates, o_cmp, o_slc, o_swa, o)); });
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
  FSA_RETURN_IF_ERROR(detail::check_no_overlap(
      {{"d_gates", d_gates}, {"d_o_cmp", d_o_cmp}, {"d_o_slc", d_o_slc}, {"d_o_swa", d_o_swa}},
      {{"gates", gates}, {"o_cmp", o_cmp}, {"o_slc", o_slc}, {"o_swa", o_swa}, {"d_o", d_o}}));
  constexpr const char* kOp = "combine_backward";
  return detail::route(
      kOp, o_cmp.device,
      [&] { ref::combine_backward(config, gates, o_cmp, o_slc, o_swa, d_o, d_gates, d_o_cmp, d_o_slc, d_o_swa); },
      [&] {
        return FSA_CUDA_BACKEND(kOp, o_cmp.device, cuda::combine_backward(config, gates, o_cmp, o_slc, o_swa, d_o,
                                                                          d_gates, d_o_cmp, d_o_slc, d_o_swa));
      });
}

}  // namespace fsa
