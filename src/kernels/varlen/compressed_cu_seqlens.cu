// One CTA scans the sequences in chunks of its width: each thread turns one length into a
// compressed length, a block-wide inclusive scan (CUB) gives the offsets, and a running carry links
// the chunks. nseq is small (at most a few thousand) so one CTA is enough and keeps it one launch.
#include <cub/block/block_scan.cuh>

#include "cuda/runtime.hpp"
#include "cuda/backend.hpp"

namespace fsa::cuda {

namespace {

constexpr int kThreads = 256;

struct CuCmpParams {
  const int* cu_seqlens;
  long long cu_seqlens_stride;
  int* cu_cmp;
  long long cu_cmp_stride;
  int num_seqs;
  int cmp_len, cmp_stride;
};

__global__ void __launch_bounds__(kThreads) compressed_cu_seqlens_kernel(const __grid_constant__ CuCmpParams p) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int carry;
  if (threadIdx.x == 0) {
    carry = 0;
    p.cu_cmp[0] = 0;
  }
  __syncthreads();
  for (int base = 0; base < p.num_seqs; base += kThreads) {
    const int b = base + static_cast<int>(threadIdx.x);
    int n_cmp = 0;
    if (b < p.num_seqs) {
      const int n = p.cu_seqlens[(b + 1) * p.cu_seqlens_stride] - p.cu_seqlens[b * p.cu_seqlens_stride];
      n_cmp = n >= p.cmp_len ? (n - p.cmp_len) / p.cmp_stride + 1 : 0;
    }
    int inclusive = 0, chunk_total = 0;
    Scan(scan_storage).InclusiveSum(n_cmp, inclusive, chunk_total);
    if (b < p.num_seqs) p.cu_cmp[(b + 1) * p.cu_cmp_stride] = carry + inclusive;
    __syncthreads();  // every thread has read `carry` before it moves on
    if (threadIdx.x == 0) carry += chunk_total;
    __syncthreads();
  }
}

}  // namespace

Status compressed_cu_seqlens(const NsaConfig& config, const TensorView& cu_seqlens, const TensorView& cu_cmp) {
  const DeviceGuard guard(cu_seqlens.device.index);
  cudaStream_t stream = current_stream();
  CuCmpParams p{cu_seqlens.ptr<const int>(), cu_seqlens.stride(0), cu_cmp.ptr<int>(), cu_cmp.stride(0),
                static_cast<int>(cu_seqlens.size(0) - 1), config.cmp_len, config.cmp_stride};
  compressed_cu_seqlens_kernel<<<1, kThreads, 0, stream>>>(p);
  FSA_CHECK_LAUNCH("compressed_cu_seqlens_kernel", stream);
  return Status::ok();
}

}  // namespace fsa::cuda
