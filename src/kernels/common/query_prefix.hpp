// Queries after a cached prefix (nsa_prefill's long chunks), shared by host and device (a member
// of the flash and selection kernels' __grid_constant__ parameters). With a null prefix (training)
// query token t of a sequence is at position t; otherwise sequence b's token t is at position
// prefix[b] + t, its keys gathered out of the cache into contiguous rows beforehand
// (kernels/decode/decode_gather.cu), so that the kernels read them as they read training keys.
#pragma once

#include <cstdint>

namespace fsa::cuda::common {

struct QueryPrefix {
  const std::int32_t* prefix = nullptr;  // [nseq]
  std::int64_t stride = 0;
};

#if defined(__CUDACC__)
// Sequence b's first query position: prefix[b] (a negative length counts as 0), or 0 without one.
__device__ __forceinline__ long long prefix_of(const QueryPrefix& q, int b) {
  if (q.prefix == nullptr) return 0;
  const long long p = q.prefix[b * q.stride];
  return p > 0 ? p : 0;
}
#endif

}  // namespace fsa::cuda::common
