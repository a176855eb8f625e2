// Tiling of the mma.sync flash-attention forward (flash_fwd_kernel.cuh), also the decode kernels'
// attention (kernels/decode/decode_attn_kernel.cuh): 64 query rows in 4 warps of 16, 64-key tiles,
// output columns over two warp groups above Dv = 128.
#pragma once

#include <cstddef>

#include "kernels/common/tile_copy.cuh"

namespace fsa::cuda::flash {

template <class Element, int kDqk_, int kDv_>
struct FwdTraits {
  static constexpr int kDqk = kDqk_;
  static constexpr int kDv = kDv_;
  static_assert(kDqk % 16 == 0 && kDv % 16 == 0, "head dims in steps of 16 for mma.m16n8k16");
  static constexpr int kRows = 64;  // query rows per CTA: 4 warps x 16
  static constexpr int kKeys = 64;  // keys per tile
  static constexpr int kColSplit = kDv > 128 ? 2 : 1;
  static constexpr int kDvPart = kDv / kColSplit;  // output columns per warp
  static_assert(kDvPart % 16 == 0, "output tiles go in pairs");
  static constexpr int kThreads = 128 * kColSplit;
  // Fully unrolled, Dqk = 192/256 kept too many K fragments live (as in the selected attention).
  static constexpr int kQkUnroll = kDqk > 128 ? 2 : kDqk / 16;
  static constexpr int kLdQk = kDqk + common::kPadHalf;
  static constexpr int kLdV = kDv + common::kPadHalf;
  static constexpr std::size_t kQOffset = 0;
  static constexpr std::size_t kKOffset = kQOffset + common::align_up(sizeof(Element) * kRows * kLdQk);
  static constexpr std::size_t kVOffset = kKOffset + common::align_up(sizeof(Element) * kKeys * kLdQk);
  static constexpr std::size_t kSmemBytes = kVOffset + common::align_up(sizeof(Element) * kKeys * kLdV);
};

}  // namespace fsa::cuda::flash
