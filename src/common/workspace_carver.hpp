// The one way the library lays out a byte buffer (a caller's workspace, the saved buffer of the
// layer, a plan): consecutive pieces, each 256-byte aligned. With no base it only counts, so one
// layout function both sizes a buffer (from shapes alone) and then carves it:
//
//   Layout layout_of(WorkspaceCarver& c, const Shape& s) { return {c.take<float>(n), ...}; }
//   WorkspaceCarver sizing;             layout_of(sizing, s);  sizing.bytes() -> the query
//   WorkspaceCarver carve(ws.data);     Layout l = layout_of(carve, s);
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "fsa/types.hpp"
#include "fsa/workspace.hpp"

namespace fsa::detail {

inline constexpr std::size_t align_workspace(std::size_t bytes) {
  return (bytes + kWorkspaceAlignment - 1) / kWorkspaceAlignment * kWorkspaceAlignment;
}

class WorkspaceCarver {
 public:
  WorkspaceCarver() = default;  // sizing only
  explicit WorkspaceCarver(void* base, Device device = Device::cpu())
      : base_(static_cast<unsigned char*>(base)), device_(device) {}

  // `bytes` bytes (nullptr while sizing, or for 0 bytes).
  void* take_bytes(std::size_t bytes) {
    void* at = base_ != nullptr && bytes > 0 ? base_ + offset_ : nullptr;
    offset_ += align_workspace(bytes);
    return at;
  }
  template <class T>
  T* take(std::int64_t count) {
    return static_cast<T*>(take_bytes(static_cast<std::size_t>(count > 0 ? count : 0) * sizeof(T)));
  }
  // A contiguous tensor on the carver's device.
  TensorView take_tensor(DType dtype, std::initializer_list<std::int64_t> sizes) {
    std::int64_t count = 1;
    for (const std::int64_t s : sizes) count *= s;
    void* data = take_bytes(static_cast<std::size_t>(count) * dtype_size(dtype));
    return TensorView::contiguous(data, dtype, sizes, device_);
  }
  // A sub-workspace for a callee (its own *_workspace_bytes); {nullptr, bytes} while sizing.
  Workspace take_workspace(std::size_t bytes) { return {take_bytes(bytes), bytes}; }

  std::size_t bytes() const { return offset_; }
  bool sizing() const { return base_ == nullptr; }

 private:
  unsigned char* base_ = nullptr;
  Device device_{};
  std::size_t offset_ = 0;
};

}  // namespace fsa::detail
