// Parameters of the RoPE kernel, shared by host and device (trivially copyable, passed as a
// __grid_constant__ argument).
#pragma once

#include <cstdint>

namespace fsa::cuda {

struct RopeParams {
  static constexpr int kMaxPairs = 128;  // D <= 256

  const void* x;
  void* y;
  std::int64_t x_row_stride, x_head_stride;
  std::int64_t y_row_stride, y_head_stride;
  const std::int32_t* cu;  // [num_seqs + 1]
  std::int64_t cu_stride;
  int num_seqs;
  std::int64_t rows;
  int heads, pairs;         // pairs = D / 2
  int position_stride;
  float sign;               // +1 forward, -1 backward (rotation by the negative angle)
  int paired;               // pairs even, strides even, pointers 4-byte aligned: two pairs per thread
  // Computed on the host by the same function as the CPU reference, so both backends rotate by
  // bit-identical frequencies.
  float frequency[kMaxPairs];
};

}  // namespace fsa::cuda
