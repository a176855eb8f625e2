// Device-side addressing of a paged pool (paged_pool.hpp): where row `index` of sequence b lives.
// Every table entry is bounds-checked, so a bad entry (which the host cannot see without reading
// device memory) costs a zero row, never a stray access.
#pragma once

#include <cstdint>

#include "kernels/common/paged_pool.hpp"

namespace fsa::cuda::common {

// A pool row: page -1 when the index has no valid page (outside the table or the pool).
struct PageRow {
  int page;
  int row;
};

// Row `index` (a token position, or a compressed token index) of sequence b through `table`: page
// -1 when the index has no valid page (outside the table, or its entry outside the pool).
// Sequence lengths are int32, so an index at or past 2^31 has no row; below it the page size divides
// as a multiply-high (fast_divisor.hpp), not a 64-bit division routine.
__device__ __forceinline__ PageRow locate(const PageTable& table, const PagedPool& pool, int b, long long index) {
  if (index < 0 || index >= (1LL << 31) || pool.rows_divisor.multiplier == 0) return {-1, 0};
  const std::uint32_t n = static_cast<std::uint32_t>(index);
  const std::uint32_t column = fast_divide(n, pool.rows_divisor);
  if (column >= table.width) return {-1, 0};
  const int page = table.data[b * table.seq_stride + column * table.col_stride];
  const int row = static_cast<int>(n - column * static_cast<std::uint32_t>(pool.page_rows));
  return page >= 0 && page < pool.pages ? PageRow{page, row} : PageRow{-1, 0};
}

// The first element of head `head` of a located row, or null for a row without a page.
template <class Element>
__device__ __forceinline__ Element* pool_row(const PagedPool& pool, PageRow at, int head) {
  if (at.page < 0) return nullptr;
  return static_cast<Element*>(pool.data) + at.page * pool.page_stride + at.row * pool.row_stride +
         head * pool.head_stride;
}

}  // namespace fsa::cuda::common
