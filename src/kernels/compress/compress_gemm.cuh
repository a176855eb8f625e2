// The tile GEMM shared by the linear compression kernels: a CTA of 4 warps computes a 64 x kN
// fp32 tile over K chunks of 64, two cp.async stages deep. Each warp owns 16 rows and all kN
// columns (acc stays in registers). The caller supplies how a chunk's A and B tiles are gathered
// (row by row, from anywhere: overlapping windows, packed sequences) and writes the epilogue.
#pragma once

#include <cstddef>

#include "kernels/common/tile_copy.cuh"
#include "kernels/common/warp_tile_mma.cuh"

namespace fsa::cuda::compress {

constexpr int kGemmThreads = 128;
constexpr int kTileM = 64;
constexpr int kTileK = 64;

// A tiles are 64 x 64 in either orientation ([m][k], or [k][m] when kATransposed); B tiles are
// [k][n] (kBKMajor) or [n][k].
template <class Element, int kN, bool kBKMajor>
struct GemmSmem {
  static constexpr int kLdA = kTileK + common::kPadHalf;
  static constexpr int kLdB = kBKMajor ? kN + common::kPadHalf : kTileK + common::kPadHalf;
  static constexpr int kBRows = kBKMajor ? kTileK : kN;
  static constexpr std::size_t kAStage = common::align_up(sizeof(Element) * kTileM * kLdA);
  static constexpr std::size_t kBStage = common::align_up(sizeof(Element) * kBRows * kLdB);
  static constexpr std::size_t kStage = kAStage + kBStage;
  static constexpr std::size_t kBytes = 2 * kStage;
};

// acc = sum over chunks c < chunks of A_c * B_c. load_chunk(c, a_tile, b_tile) issues the copies
// of chunk c (common::copy_tile_async) into one stage; this loop commits, waits and synchronises.
template <class Element, int kN, bool kATransposed, bool kBKMajor, class LoadChunk>
__device__ __forceinline__ void gemm_mainloop(float (&acc)[kN / 8][4], unsigned char* smem, int chunks,
                                              LoadChunk load_chunk) {
  using S = GemmSmem<Element, kN, kBKMajor>;
  auto a_tile = [&](int stage) { return reinterpret_cast<Element*>(smem + stage * S::kStage); };
  auto b_tile = [&](int stage) { return reinterpret_cast<Element*>(smem + stage * S::kStage + S::kAStage); };
  common::zero_acc<kN>(acc);
  if (chunks > 0) load_chunk(0, a_tile(0), b_tile(0));
  common::cp_async_commit();
  const int row0 = (threadIdx.x / 32) * 16;
  for (int c = 0; c < chunks; ++c) {
    // The other stage was last read in iteration c - 1, which ended with a barrier.
    if (c + 1 < chunks) load_chunk(c + 1, a_tile((c + 1) & 1), b_tile((c + 1) & 1));
    common::cp_async_commit();
    common::cp_async_wait<1>();  // chunk c has landed (only chunk c + 1 may be in flight)
    __syncthreads();
    common::warp_tile_mma<Element, kTileK, kN, kATransposed, kBKMajor>(acc, a_tile(c & 1), S::kLdA, row0,
                                                                       b_tile(c & 1), S::kLdB, 0);
    __syncthreads();
  }
}

}  // namespace fsa::cuda::compress
