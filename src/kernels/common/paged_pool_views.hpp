// The kernels' view of a paged cache (paged_pool.hpp) from its tensors, on the host: shapes and
// pointers only, nothing read from the device.
#pragma once

#include <cstdint>

#include "cuda/backend.hpp"
#include "kernels/common/paged_pool.hpp"

namespace fsa::cuda::common {

// A pool [pages, page_rows, H, D].
inline PagedPool pool_view(const TensorView& t) {
  return {t.data, t.stride(0), t.stride(1), t.stride(2), t.size(0), static_cast<int>(t.size(1))};
}

// A table [nseq, width] of int32.
inline PageTable table_view(const TensorView& t) {
  return {t.ptr<const std::int32_t>(), t.stride(0), t.stride(1), t.size(1)};
}

// A chunk's prefix, table and pools (v_pages may be undefined where the kernel reads keys only).
inline PrefixedKeys prefixed_keys(const PagedKeyInputs& keys) {
  PrefixedKeys p;
  p.prefix = keys.key_prefix.ptr<const std::int32_t>();
  p.prefix_stride = keys.key_prefix.stride(0);
  p.table = table_view(keys.block_table);
  p.k = pool_view(keys.k_pages);
  if (keys.v_pages.defined()) p.v = pool_view(keys.v_pages);
  return p;
}

}  // namespace fsa::cuda::common
