// Division of non-negative 31-bit integers by a divisor fixed on the host, as a multiply-high and a
// shift (Granlund and Montgomery): the paged pools' row lookup (paged_pool.cuh) divides every located
// row's index by the page size, and a 64-bit `/` and `%` by a runtime value costs a software routine
// of about forty instructions, which the decode attention's warps pay on each key tile.
//
// For 1 <= d < 2^31 take l = ceil(log2 d) and m = ceil(2^(31 + l) / d). Then m d - 2^(31 + l) < d <= 2^l,
// which is the theorem's condition for floor(n / d) = floor(n m / 2^(31 + l)) at every 0 <= n < 2^31;
// m <= 2^32 - 1 for every such d (m = 2^31 at powers of two), so it fits 32 bits and n m fits 64.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FSA_FAST_DIVISOR_HD __host__ __device__ __forceinline__
#else
#define FSA_FAST_DIVISOR_HD inline
#endif

namespace fsa::cuda::common {

struct FastDivisor {
  std::uint32_t multiplier = 0;  // m; 0 for a divisor outside [1, 2^31): no division is made
  int shift = 0;                 // 31 + l
};

// The constants for divisor d; a divisor outside [1, 2^31) gives multiplier 0, which callers test.
inline FastDivisor make_fast_divisor(std::int64_t d) {
  if (d < 1 || d >= (std::int64_t{1} << 31)) return {};
  int l = 0;
  while ((std::int64_t{1} << l) < d) ++l;
  const std::uint64_t m = ((std::uint64_t{1} << (31 + l)) + static_cast<std::uint64_t>(d) - 1) / static_cast<std::uint64_t>(d);
  return {static_cast<std::uint32_t>(m), 31 + l};
}

// floor(n / d) for 0 <= n < 2^31 and a divisor made by make_fast_divisor.
FSA_FAST_DIVISOR_HD std::uint32_t fast_divide(std::uint32_t n, const FastDivisor& d) {
  return static_cast<std::uint32_t>((static_cast<std::uint64_t>(n) * d.multiplier) >> d.shift);
}

}  // namespace fsa::cuda::common
