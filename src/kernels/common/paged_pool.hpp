// A paged key/value pool and its per-sequence page table, shared by host and device (trivially
// copyable, members of the kernels' __grid_constant__ parameters). Strides are in elements. The
// inference kernels (kernels/decode) address the cache through them, and so do the training's
// compressed attention and block selection when they serve a long prefill chunk (PrefixedKeys).
#pragma once

#include <cstdint>

namespace fsa::cuda::common {

// A paged pool [pages, page_rows, H, D].
struct PagedPool {
  void* data;
  std::int64_t page_stride, row_stride, head_stride;
  std::int64_t pages;  // pool pages: table entries outside [0, pages) are never dereferenced
  int page_rows;       // rows (tokens) per page
};

// A per-sequence page table [nseq, width] (int32): entry [b][j] is the pool page of the sequence's
// j-th page.
struct PageTable {
  const std::int32_t* data;
  std::int64_t seq_stride, col_stride;
  std::int64_t width;
};

// Queries after a cached prefix, keys in a paged pool (nsa_prefill's long chunks). With prefix null
// (training) every query token's position is its index in its sequence and the kernel reads its
// keys as contiguous rows. Otherwise sequence b's first query is at position prefix[b] and its key i
// (a position, or a compressed token index) is row locate(table, k, b, i) of k and v.
struct PrefixedKeys {
  const std::int32_t* prefix = nullptr;  // [nseq]: cache_seqlens
  std::int64_t prefix_stride = 0;
  PageTable table{};
  PagedPool k{}, v{};
};

}  // namespace fsa::cuda::common
