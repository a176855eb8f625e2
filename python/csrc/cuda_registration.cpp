// CUDA kernels of the `fsa` torch library: the same ops as on the CPU (the fsa API dispatches on
// the tensors' device), run on the device of the op's first tensor and on torch's current stream
// of that device, so they order correctly with the surrounding torch work and can be captured in
// CUDA graphs. Ops without a CUDA kernel yet raise NotImplementedError from the fsa API's Status.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <type_traits>

#include "fsa/runtime.hpp"
#include "ops.hpp"

namespace fsa::torch_ext {

namespace {

template <class Arg>
void remember_device(std::optional<c10::Device>& device, const Arg& arg) {
  if constexpr (std::is_same_v<std::decay_t<Arg>, at::Tensor>) {
    if (!device && arg.defined() && arg.is_cuda()) device = arg.device();
  }
}

template <class Fn, Fn* op>
struct OnCurrentStream;

// Wraps an op: sets the device of its first CUDA tensor and points the fsa API at torch's current
// stream there for the duration of the call.
template <class Result, class... Args, Result (*op)(Args...)>
struct OnCurrentStream<Result(Args...), op> {
  static Result call(Args... args) {
    std::optional<c10::Device> device;
    (remember_device(device, args), ...);
    TORCH_CHECK(device.has_value(), "fsa: CUDA kernel called without a CUDA tensor");
    const c10::cuda::CUDAGuard guard(*device);
    const CudaStreamScope stream(c10::cuda::getCurrentCUDAStream(device->index()).stream());
    return op(std::forward<Args>(args)...);
  }
};

template <auto* op>
constexpr auto on_current_stream() {
  using Fn = std::remove_pointer_t<decltype(op)>;
  return TORCH_FN((OnCurrentStream<Fn, op>::call));
}

}  // namespace

}  // namespace fsa::torch_ext

TORCH_LIBRARY_IMPL(fsa, CUDA, m) {
  using namespace fsa::torch_ext;
  m.impl("compressed_cu_seqlens", on_current_stream<&compressed_cu_seqlens>());
  m.impl("compress_forward", on_current_stream<&compress_forward>());
  m.impl("compress_backward", on_current_stream<&compress_backward>());
  m.impl("rope_forward", on_current_stream<&rope_forward>());
  m.impl("rope_backward", on_current_stream<&rope_backward>());
  m.impl("cmp_attn_forward", on_current_stream<&cmp_attn_forward>());
  m.impl("cmp_attn_backward", on_current_stream<&cmp_attn_backward>());
  m.impl("select_blocks", on_current_stream<&select_blocks>());
  m.impl("slc_attn_forward", on_current_stream<&slc_attn_forward>());
  m.impl("slc_attn_backward", on_current_stream<&slc_attn_backward>());
  m.impl("swa_forward", on_current_stream<&swa_forward>());
  m.impl("swa_backward", on_current_stream<&swa_backward>());
  m.impl("combine_forward", on_current_stream<&combine_forward>());
  m.impl("combine_backward", on_current_stream<&combine_backward>());
  m.impl("nsa_forward", on_current_stream<&nsa_forward>());
  m.impl("nsa_backward", on_current_stream<&nsa_backward>());
}
