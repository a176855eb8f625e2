// The one route from a public entry point to a backend. Every entry point validates its arguments
// (validate.hpp), then calls route(): CPU tensors run the reference backend (src/reference), CUDA
// tensors the CUDA backend (cuda/backend.hpp) with a workspace that is the caller's (checked) or,
// for an empty Workspace, the convenience allocation (StreamScratch).
#pragma once

#include <cstdint>
#include <string>

#include "fsa/status.hpp"
#include "fsa/types.hpp"
#include "fsa/workspace.hpp"
#include "cuda/backend.hpp"  // declarations only: a build without CUDA names them unevaluated
#include "validate.hpp"

// The CUDA backend's call, or (a build without CUDA) kNotImplemented naming the op and device; the
// call then stays an unevaluated operand, so its arguments count as used.
#ifdef FSA_WITH_CUDA
#define FSA_CUDA_BACKEND(op, device, call) (call)
#else
#define FSA_CUDA_BACKEND(op, device, call) \
  (static_cast<void>(sizeof(call)), ::fsa::detail::not_implemented_on((device), (op)))
#endif

namespace fsa::detail {

inline bool on_cpu(const TensorView& t) { return t.device.kind == DeviceKind::kCPU; }

// `given` against the `needed` bytes of the op's *_workspace_bytes query.
inline Status check_workspace(const char* op, const Workspace& given, std::size_t needed) {
  if (given.bytes < needed)
    return FSA_INVALID("workspace: " + std::string(op) + " needs " + std::to_string(needed) + " bytes (" +
                       std::string(op) + "_workspace_bytes), got " + std::to_string(given.bytes));
  if (given.data == nullptr && given.bytes > 0)
    return FSA_INVALID("workspace: a null data pointer with " + std::to_string(given.bytes) + " bytes");
  if (reinterpret_cast<std::uintptr_t>(given.data) % kWorkspaceAlignment != 0)
    return FSA_INVALID("workspace: expected a " + std::to_string(kWorkspaceAlignment) + "-byte aligned pointer");
  return Status::ok();
}

// Runs cpu() (reference; exceptions become a Status) on the CPU, else gpu(workspace) with the
// caller's workspace or one allocated for the call.
template <class Cpu, class Gpu>
Status route(const char* op, Device device, Cpu&& cpu, const Workspace& given, std::size_t needed, Gpu&& gpu) {
  if (device.kind == DeviceKind::kCPU) return run_reference(op, cpu);
#ifdef FSA_WITH_CUDA
  if (!given.empty() || needed == 0) {
    FSA_RETURN_IF_ERROR(check_workspace(op, given, needed));
    return gpu(given);
  }
  const cuda::StreamScratch scratch(needed, device.index);
  FSA_RETURN_IF_ERROR(scratch.status());
  return gpu(scratch.workspace());
#else
  (void)given, (void)needed, (void)gpu;
  return not_implemented_on(device, op);
#endif
}

// The same for ops without workspace.
template <class Cpu, class Gpu>
Status route(const char* op, Device device, Cpu&& cpu, Gpu&& gpu) {
  return route(op, device, cpu, Workspace{}, 0, [&](const Workspace&) { return gpu(); });
}

}  // namespace fsa::detail

// A *_workspace_bytes query: the CUDA backend's bytes for valid arguments on a GPU, else 0 (the
// CPU needs none; invalid arguments get their error from the op itself).
#ifdef FSA_WITH_CUDA
#define FSA_CUDA_QUERY(call) (call)
#else
#define FSA_CUDA_QUERY(call) (static_cast<void>(sizeof(call)), std::size_t{0})
#endif

namespace fsa::detail {

template <class Query>
std::size_t query_bytes(const Status& valid, Device device, Query&& query) {
  if (!valid.is_ok() || device.kind == DeviceKind::kCPU) return 0;
  return query();
}

// The bytes of an op whose arguments are already validated: the query on a GPU, else 0.
template <class Query>
std::size_t on_gpu_bytes(const TensorView& t, Query&& query) {
  return query_bytes(Status::ok(), t.device, query);
}

}  // namespace fsa::detail
