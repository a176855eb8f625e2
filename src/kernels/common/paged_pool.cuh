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

// Row `index` (a token position, or a compressed token index) of sequence b through `table`, its
// page the table's entry unchecked against the pool (checked_pool_row checks it): a kernel that
// stores the row for later copies issues the table load early and stores late, without waiting on
// a check. Index int (the paged training kernels' keys): 32-bit division; long long: 64-bit (the
// decode kernels, whose register budgets were measured with it).
template <class Index>
__device__ __forceinline__ PageRow table_entry(const PageTable& table, const PagedPool& pool, int b, Index index) {
  if (index < 0 || pool.page_rows <= 0) return {-1, 0};
  const Index column = index / pool.page_rows;
  if (column >= table.width) return {-1, 0};
  return {table.data[b * table.seq_stride + column * table.col_stride], static_cast<int>(index % pool.page_rows)};
}

// The same with the page checked: page -1 outside the pool.
__device__ __forceinline__ PageRow locate(const PageTable& table, const PagedPool& pool, int b, long long index) {
  const PageRow at = table_entry<long long>(table, pool, b, index);
  return at.page >= 0 && at.page < pool.pages ? at : PageRow{-1, 0};
}

// The first element of head `head` of a located row, or null for a row without a page.
template <class Element>
__device__ __forceinline__ Element* pool_row(const PagedPool& pool, PageRow at, int head) {
  if (at.page < 0) return nullptr;
  return static_cast<Element*>(pool.data) + at.page * pool.page_stride + at.row * pool.row_stride +
         head * pool.head_stride;
}

// pool_row of a table_entry's row, its page checked against the pool here.
template <class Element>
__device__ __forceinline__ Element* checked_pool_row(const PagedPool& pool, PageRow at, int head) {
  return pool_row<Element>(pool, at.page < pool.pages ? at : PageRow{-1, 0}, head);
}

// Head `head` of key `index` of sequence b in one of a PrefixedKeys' pools (keys.k or keys.v), or
// null for a key without a page.
template <class Element>
__device__ __forceinline__ Element* paged_key_row(const PrefixedKeys& keys, const PagedPool& pool, int b,
                                                  long long index, int head) {
  return pool_row<Element>(pool, locate(keys.table, pool, b, index), head);
}

// Sequence b's first query position: prefix[b] (a negative length, a caller error, counts as 0), or
// 0 without a prefix (training).
__device__ __forceinline__ long long prefix_of(const PrefixedKeys& keys, int b) {
  if (keys.prefix == nullptr) return 0;
  const long long p = keys.prefix[b * keys.prefix_stride];
  return p > 0 ? p : 0;
}

}  // namespace fsa::cuda::common
