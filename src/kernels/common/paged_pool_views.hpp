// The kernels' view of a paged cache (paged_pool.hpp) from its tensors, on the host: shapes and
// pointers only, nothing read from the device.
#pragma once

#include <cstdint>

#include "cuda/backend.hpp"
#include "kernels/common/paged_pool.hpp"

namespace fsa::cuda::common {

// A pool [pages, page_rows, H, D].
inline PagedPool pool_view(const TensorView& t) {
  const std::int64_t rows = t.size(1);
  return {t.data, t.stride(0), t.stride(1), t.stride(2), t.size(0), static_cast<int>(rows), make_fast_divisor(rows)};
}

// A table [nseq, width] of int32.
inline PageTable table_view(const TensorView& t) {
  return {t.ptr<const std::int32_t>(), t.stride(0), t.stride(1), t.size(1)};
}

}  // namespace fsa::cuda::common
