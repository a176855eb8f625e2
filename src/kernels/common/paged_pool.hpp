// A paged key/value pool and its per-sequence page table, shared by host and device (trivially
// copyable, members of the kernels' __grid_constant__ parameters). Strides are in elements. The
// inference kernels (kernels/decode) and the KV-outer selected attention of a long prefill chunk
// (kernels/slc_attn) address the cache through them.
#pragma once

#include <cstdint>

#include "kernels/common/fast_divisor.hpp"

namespace fsa::cuda::common {

// A paged pool [pages, page_rows, H, D].
struct PagedPool {
  void* data;
  std::int64_t page_stride, row_stride, head_stride;
  std::int64_t pages;  // pool pages: table entries outside [0, pages) are never dereferenced
  int page_rows;       // rows (tokens) per page
  FastDivisor rows_divisor;  // page_rows as a multiply-high division (locate's index / page_rows)
};

// A per-sequence page table [nseq, width] (int32): entry [b][j] is the pool page of the sequence's
// j-th page.
struct PageTable {
  const std::int32_t* data;
  std::int64_t seq_stride, col_stride;
  std::int64_t width;
};

}  // namespace fsa::cuda::common
