// CUDA kernels of the `fsa` torch library (op_table.hpp): the same ops as on the CPU (the fsa API
// dispatches on the tensors' device), run on the device of the op's first tensor and on torch's
// current stream of that device, so they order correctly with the surrounding torch work and can
// be captured in CUDA graphs. Ops without a CUDA kernel yet raise NotImplementedError from the fsa
// API's Status.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <type_traits>

#include "fsa/runtime.hpp"
#include "named_op.hpp"
#include "op_table.hpp"
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
#define FSA_IMPLEMENT_(name, arguments, scalars, returns) m.impl(#name, on_current_stream<&FSA_NAMED_OP(name)>());
  FSA_OPS(FSA_IMPLEMENT_)
#undef FSA_IMPLEMENT_
}
