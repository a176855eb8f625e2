// Thin wrappers of the sm90a warpgroup tensor-core instructions (wgmma.mma_async) and the shared
// memory layout they read, for the Hopper kernels. A warpgroup is 4 consecutive warps (128
// threads); one wgmma m64nNk16 multiplies a 64 x 16 A tile by a 16 x N B tile into 64 x N fp32
// accumulators. Per warp the accumulator layout is the mma.sync C fragment (warp w of the group
// holds rows 16w..16w+15; lane: rows lane/4 and lane/4 + 8, columns 2*(lane%4) (+1) of every
// 8-column tile), so accumulators are float[N/8][4] exactly as in mma_sm80.cuh, and an A operand
// taken from registers has the mma.sync A-fragment layout (c_to_a of warp_tile_mma.cuh).
//
// Shared operands use the 128-byte swizzle: a [rows x D] tile of 16-bit elements is cut in panels
// of 64 columns; panel c holds columns 64c..64c+63 of every row, 128 bytes per row, and the 16-byte
// chunk j of row r sits at chunk j ^ (r % 8). Panels start on 1024-byte boundaries (the swizzle
// is a function of the address bits). In descriptor terms:
//   operand stored [mn][k] ("K-major": Q and K in S = Q K^T): 8-row groups SBO = 1024 bytes apart,
//     a k step of 16 adds 32 bytes within the panel; LBO unused;
//   operand stored [k][mn] ("MN-major", transposed B: V in O = P V): 8-row k groups SBO = 1024
//     bytes apart, 64-column panels LBO = rows * 128 bytes apart.
// The rules of use: fence() before the first wgmma of a batch whose registers were written by
// ordinary instructions, commit_group() after the batch, wait_group<n>() before the accumulators
// are read; shared memory written by ordinary stores or cp.async needs fence_async_shared() (and a
// barrier) before a wgmma reads it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/common/mma_sm80.cuh"
#include "kernels/common/tile_copy.cuh"
#include "kernels/common/wgmma_operands.cuh"

// wgmma exists in the sm_90a feature set only; other targets compile the kernels that use it to a trap.
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FSA_HAS_WGMMA 1
#else
#define FSA_HAS_WGMMA 0
#endif

namespace fsa::cuda::wgmma {

constexpr int kPanelCols = 64;      // 16-bit elements per 128-byte swizzled row
constexpr int kPanelRowBytes = 128;

// The first 1024-byte boundary at or after `smem` (dynamic shared memory, allocated 1024 bytes
// larger): the swizzle is a function of the address bits, so swizzled tiles start there.
__device__ __forceinline__ unsigned char* swizzle_aligned(unsigned char* smem) {
  return smem + (1024 - mma::shared_address(smem) % 1024) % 1024;
}

// Byte offset of element (row, col) in a swizzled [rows x cols] tile (col a multiple of 8 for a
// whole 16-byte chunk).
__host__ __device__ constexpr int swizzled_offset(int rows, int row, int col) {
  return (col / kPanelCols) * rows * kPanelRowBytes + row * kPanelRowBytes +
         ((((col % kPanelCols) / 8) ^ (row % 8)) * 16);
}

// Issues the cp.async copies of a [kRows x kCols] tile of 16-bit elements into the swizzled layout
// at `dst` (1024-byte aligned): row r from source(r), zero-filled where source(r) is null. All
// kThreads threads take part; the caller commits, waits, fences (fence_async_shared) and syncs.
template <int kRows, int kCols, int kThreads, class Element, class Source>
__device__ __forceinline__ void copy_tile_swizzled_async(Element* dst, Source source) {
  static_assert(sizeof(Element) == 2 && kCols % kPanelCols == 0, "whole panels of 16-bit elements");
  constexpr int kVectors = kCols / 8;
  for (int idx = threadIdx.x; idx < kRows * kVectors; idx += kThreads) {
    const int row = idx / kVectors, vec = idx % kVectors;
    const Element* src = source(row);
    void* to = reinterpret_cast<unsigned char*>(dst) + swizzled_offset(kRows, row, vec * 8);
    if (src != nullptr) {
      common::cp_async_16(to, reinterpret_cast<const uint4*>(src) + vec);
    } else {
      *reinterpret_cast<uint4*>(to) = make_uint4(0, 0, 0, 0);
    }
  }
}

// The same for rows at a constant stride (row r at src + r * row_stride elements), rows at or past
// valid_rows zero-filled by cp.async's source size 0. Every thread copies one fixed 16-byte column
// of rows kThreads / (kCols / 8) apart, so its swizzle phase and shared stride are constants: a few
// instructions per vector (the general copy above spends ~30 on index arithmetic and a branch).
template <int kRows, int kCols, int kThreads, class Element>
__device__ __forceinline__ void copy_rows_swizzled_async(Element* dst, const Element* src, long long row_stride,
                                                         int valid_rows) {
  constexpr int kVectors = kCols / 8;
  static_assert(kThreads % kVectors == 0 && (kRows * kVectors) % kThreads == 0, "whole rows per pass");
  constexpr int kRowStep = kThreads / kVectors;
  static_assert(kRowStep % 8 == 0, "a thread's rows share their swizzle phase (row % 8)");
  const int vec = threadIdx.x % kVectors, row0 = threadIdx.x / kVectors;
  const std::uint32_t to = mma::shared_address(dst) + swizzled_offset(kRows, row0, vec * 8);
  const Element* from = src + row0 * row_stride + vec * 8;
  const long long step = kRowStep * row_stride;
#pragma unroll
  for (int i = 0; i < kRows * kVectors / kThreads; ++i) {
    const bool valid = row0 + i * kRowStep < valid_rows;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(to + i * kRowStep * kPanelRowBytes),
                 "l"(valid ? from : src), "r"(valid ? 16 : 0)
                 : "memory");
    from += step;
  }
}

// Matrix descriptor of a 128-byte-swizzled operand starting at `smem` (bits: start address >> 4 at
// 0, LBO >> 4 at 16, SBO >> 4 at 32, swizzle mode 1 = 128 bytes at 62).
// descriptor_at takes the shared-window address itself.
__device__ __forceinline__ std::uint64_t descriptor_at(std::uint32_t address, std::uint32_t lbo_bytes,
                                                       std::uint32_t sbo_bytes) {
  return static_cast<std::uint64_t>((address & 0x3ffff) >> 4) |
         (static_cast<std::uint64_t>((lbo_bytes >> 4) & 0x3fff) << 16) |
         (static_cast<std::uint64_t>((sbo_bytes >> 4) & 0x3fff) << 32) | (1ull << 62);
}
__device__ __forceinline__ std::uint64_t descriptor(const void* smem, std::uint32_t lbo_bytes,
                                                    std::uint32_t sbo_bytes) {
  return descriptor_at(mma::shared_address(smem), lbo_bytes, sbo_bytes);
}

// The descriptor `desc` moved by `bytes` (start address field, in 16-byte units; shared addresses
// stay below 2^18, so the 14-bit field does not carry).
__device__ __forceinline__ std::uint64_t advance(std::uint64_t desc, std::uint32_t bytes) {
  return desc + (bytes >> 4);
}

__device__ __forceinline__ void fence() {
#if FSA_HAS_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void commit_group() {
#if FSA_HAS_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int kPending>
__device__ __forceinline__ void wait_group() {
#if FSA_HAS_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
#endif
}
// Orders this thread's earlier generic-proxy shared-memory writes (st.shared, cp.async) before later
// async-proxy reads (wgmma operands).
__device__ __forceinline__ void fence_async_shared() {
#if FSA_HAS_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// Ties the accumulators to this point of the instruction stream: the compiler may not move reads
// or writes of them across it (placed after wait_group, and before a batch that reads them).
template <int kN>
__device__ __forceinline__ void fence_operands(float (&d)[kN / 8][4]) {
#pragma unroll
  for (int j = 0; j < kN / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[j][e])::"memory");
}

#define FSA_WGMMA_STR(x) #x
// A and B from shared memory: operands after the N/2 accumulators are desc_a, desc_b, accumulate,
// tnsp_a, tnsp_b.
#define FSA_WGMMA_SS(n, type, ia, ib, iacc, itnspa, itnspb)                                                \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" FSA_WGMMA_STR(iacc) ", 0;\n"                            \
               "wgmma.mma_async.sync.aligned.m64n" FSA_WGMMA_STR(n) "k16.f32." type "." type " "            \
               FSA_WGMMA_D##n ", %" FSA_WGMMA_STR(ia) ", %" FSA_WGMMA_STR(ib) ", p, 1, 1, %"                 \
               FSA_WGMMA_STR(itnspa) ", %" FSA_WGMMA_STR(itnspb) ";\n}\n"                                   \
               : FSA_WGMMA_OUT##n(d)                                                                        \
               : "l"(desc_a), "l"(desc_b), "r"(accumulate), "n"(kTransposeA), "n"(kTransposeB))
// A from registers (a[0..3]): operands after the accumulators are a0..a3, desc_b, accumulate, tnsp_b.
#define FSA_WGMMA_RS(n, type, ia0, ia1, ia2, ia3, ib, iacc, itnsp)                                         \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" FSA_WGMMA_STR(iacc) ", 0;\n"                            \
               "wgmma.mma_async.sync.aligned.m64n" FSA_WGMMA_STR(n) "k16.f32." type "." type " "            \
               FSA_WGMMA_D##n ", {%" FSA_WGMMA_STR(ia0) ", %" FSA_WGMMA_STR(ia1) ", %" FSA_WGMMA_STR(ia2) ", %" \
               FSA_WGMMA_STR(ia3) "}, %" FSA_WGMMA_STR(ib) ", p, 1, 1, %"                                 \
               FSA_WGMMA_STR(itnsp) ";\n}\n"                                                                \
               : FSA_WGMMA_OUT##n(d)                                                                        \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate), "n"(kTransposeB))

// d (+)= A B with A and B in shared memory; accumulate = 0 overwrites d. kTransposeB: B stored
// [k][n] (MN-major) instead of [n][k]; kTransposeA: A stored [k][m] instead of [m][k].
template <class Element, int kN, int kTransposeB, int kTransposeA = 0>
__device__ __forceinline__ void mma_ss(float (&d)[kN / 8][4], std::uint64_t desc_a, std::uint64_t desc_b,
                                       int accumulate) {
#if FSA_HAS_WGMMA
  constexpr bool kBf16 = std::is_same_v<Element, __nv_bfloat16>;
  static_assert(kBf16 || std::is_same_v<Element, __half>, "bf16 or fp16");
  static_assert(kN == 16 || kN == 32 || kN == 64 || kN == 128 || kN == 256, "instantiated widths");
  if constexpr (kN == 16) {
    if constexpr (kBf16) FSA_WGMMA_SS(16, "bf16", 8, 9, 10, 11, 12);
    else FSA_WGMMA_SS(16, "f16", 8, 9, 10, 11, 12);
  } else if constexpr (kN == 32) {
    if constexpr (kBf16) FSA_WGMMA_SS(32, "bf16", 16, 17, 18, 19, 20);
    else FSA_WGMMA_SS(32, "f16", 16, 17, 18, 19, 20);
  } else if constexpr (kN == 64) {
    if constexpr (kBf16) FSA_WGMMA_SS(64, "bf16", 32, 33, 34, 35, 36);
    else FSA_WGMMA_SS(64, "f16", 32, 33, 34, 35, 36);
  } else if constexpr (kN == 128) {
    if constexpr (kBf16) FSA_WGMMA_SS(128, "bf16", 64, 65, 66, 67, 68);
    else FSA_WGMMA_SS(128, "f16", 64, 65, 66, 67, 68);
  } else {
    if constexpr (kBf16) FSA_WGMMA_SS(256, "bf16", 128, 129, 130, 131, 132);
    else FSA_WGMMA_SS(256, "f16", 128, 129, 130, 131, 132);
  }
#endif
}

// d (+)= A B with A in registers (the mma.sync A fragment of each warp's 16 rows) and B in shared memory.
template <class Element, int kN, int kTransposeB>
__device__ __forceinline__ void mma_rs(float (&d)[kN / 8][4], const std::uint32_t (&a)[4], std::uint64_t desc_b,
                                       int accumulate) {
#if FSA_HAS_WGMMA
  constexpr bool kBf16 = std::is_same_v<Element, __nv_bfloat16>;
  static_assert(kBf16 || std::is_same_v<Element, __half>, "bf16 or fp16");
  static_assert(kN == 64 || kN == 128 || kN == 256, "instantiated widths");
  if constexpr (kN == 64) {
    if constexpr (kBf16) FSA_WGMMA_RS(64, "bf16", 32, 33, 34, 35, 36, 37, 38);
    else FSA_WGMMA_RS(64, "f16", 32, 33, 34, 35, 36, 37, 38);
  } else if constexpr (kN == 128) {
    if constexpr (kBf16) FSA_WGMMA_RS(128, "bf16", 64, 65, 66, 67, 68, 69, 70);
    else FSA_WGMMA_RS(128, "f16", 64, 65, 66, 67, 68, 69, 70);
  } else {
    if constexpr (kBf16) FSA_WGMMA_RS(256, "bf16", 128, 129, 130, 131, 132, 133, 134);
    else FSA_WGMMA_RS(256, "f16", 128, 129, 130, 131, 132, 133, 134);
  }
#endif
}

#undef FSA_WGMMA_SS
#undef FSA_WGMMA_RS
#undef FSA_WGMMA_STR

}  // namespace fsa::cuda::wgmma
