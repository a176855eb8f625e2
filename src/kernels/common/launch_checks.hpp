// Host-side checks shared by the launchers of the kernel families: the limits every CUDA path has
// (16-byte rows), and, through the generated dispatch_table.hpp, the one place each turns runtime
// values (dtype, head dims, block size) into template arguments or checks them. Errors are
// kNotImplemented (a valid request this path does not serve) and start with the argument's name.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "fsa/status.hpp"
#include "fsa/types.hpp"
#include "kernels/common/dispatch_table.hpp"

namespace fsa::cuda::common {

// The kernels move rows as 16-byte vectors: the data pointer is 16-byte aligned and every stride
// but the last (contiguous) dim's is a multiple of 16 bytes. An undefined tensor passes.
inline Status check_rows_aligned(const char* op, const char* name, const TensorView& t) {
  if (!t.defined()) return Status::ok();
  const auto address = reinterpret_cast<std::uintptr_t>(t.data);
  const std::int64_t vector = 16 / static_cast<std::int64_t>(dtype_size(t.dtype));
  bool aligned = address % 16 == 0;
  for (int d = 0; d + 1 < t.ndim; ++d) aligned = aligned && t.stride(d) % vector == 0;
  if (aligned) return Status::ok();
  return FSA_ERROR(StatusCode::kNotImplemented,
                   std::string(name) + ": " + op +
                       " on CUDA needs 16-byte aligned rows (data pointer and strides multiples of 16 bytes)");
}

// The same check for several named tensors of one call; the first misaligned one is reported.
struct NamedView {
  const char* name;
  const TensorView& view;
};
inline Status check_rows_aligned(const char* op, std::initializer_list<NamedView> views) {
  for (const NamedView& v : views) FSA_RETURN_IF_ERROR(check_rows_aligned(op, v.name, v.view));
  return Status::ok();
}

}  // namespace fsa::cuda::common
