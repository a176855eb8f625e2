// Gated combination (docs/semantics.md section 7) and the gradient sum of the whole layer:
// memory-bound elementwise kernels over rows (token, head) of Dv elements, moved as 16-byte
// vectors.
//
// Forward: one thread per 8-element vector, o = g0 o_cmp + g1 o_slc + g2 o_swa in fp32.
// Backward: one warp per gate triple (a (token, head) row for per-head gates, a token's Hq rows for
// shared ones): lanes walk the vectors, write d_o_b = g_b d_o and sum o_b . d_o in fp32; the
// warp's shuffle reduction has a fixed order, so d_gates is bitwise reproducible (no atomics).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "cuda/runtime.hpp"
#include "cuda/backend.hpp"
#include "kernels/common/convert.cuh"
#include "kernels/common/dependent_launch.cuh"
#include "kernels/common/launch_checks.hpp"
#include "kernels/combine/gated_sum.cuh"

namespace fsa::cuda {

namespace {

constexpr int kVec = 8;  // elements per 16-byte vector
constexpr int kThreads = 256;

// Rows (token, head) of a [N, H, D] view; an undefined view has data == nullptr.
struct Rows {
  void* data = nullptr;
  std::int64_t token_stride = 0, head_stride = 0;

  static Rows of(const TensorView& t) {
    if (!t.defined()) return {};
    return {t.data, t.stride(0), t.stride(1)};
  }
  template <class Element>
  __device__ Element* at(std::int64_t token, int head) const {
    return static_cast<Element*>(data) + token * token_stride + head * head_stride;
  }
};

struct CombineParams {
  Rows gates;  // [N, Hq, 3] (head_stride 0 for shared gates [N, 3])
  Rows branch[3];
  Rows d_branch[3];
  Rows o, d_o, d_gates;
  std::int64_t tokens;
  int heads, dim;
  bool shared_gates;
};

template <class Element>
struct Vec8 {
  float v[kVec];
  __device__ void load(const Element* p) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const Element* e = reinterpret_cast<const Element*>(&raw);
#pragma unroll
    for (int i = 0; i < kVec; ++i) v[i] = common::Convert<Element>::to_float(e[i]);
  }
  __device__ void store(Element* p) const {
    uint4 raw;
    Element* e = reinterpret_cast<Element*>(&raw);
#pragma unroll
    for (int i = 0; i < kVec; ++i) e[i] = common::Convert<Element>::from_float(v[i]);
    *reinterpret_cast<uint4*>(p) = raw;
  }
};

template <class Element>
__global__ void __launch_bounds__(kThreads) combine_forward_kernel(const __grid_constant__ CombineParams p) {
  common::await_prior_grids();  // before any global access: launched by launch_dependent
  using Cvt = common::Convert<Element>;
  const int vecs = p.dim / kVec;
  const long long total = p.tokens * p.heads * vecs;
  for (long long i = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * kThreads) {
    const long long row = i / vecs;
    const int col = static_cast<int>(i % vecs) * kVec;
    const long long t = row / p.heads;
    const int h = static_cast<int>(row % p.heads);
    const Element* g = p.gates.at<Element>(t, h);
    const float gate[3] = {Cvt::to_float(g[0]), Cvt::to_float(g[1]), Cvt::to_float(g[2])};
    Vec8<Element> out, x[3];
#pragma unroll
    for (int b = 0; b < 3; ++b) x[b].load(p.branch[b].at<Element>(t, h) + col);
#pragma unroll
    for (int e = 0; e < kVec; ++e) out.v[e] = combine::gated_sum(gate, x[0].v[e], x[1].v[e], x[2].v[e]);
    out.store(p.o.at<Element>(t, h) + col);
  }
}

template <class Element>
__global__ void __launch_bounds__(kThreads) combine_backward_kernel(const __grid_constant__ CombineParams p) {
  using Cvt = common::Convert<Element>;
  const int lane = threadIdx.x % 32;
  const int vecs = p.dim / kVec;
  const int heads_per_unit = p.shared_gates ? p.heads : 1;
  const long long units = p.shared_gates ? p.tokens : p.tokens * p.heads;
  const long long warps = static_cast<long long>(gridDim.x) * (kThreads / 32);
  for (long long unit = (static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x) / 32; unit < units;
       unit += warps) {
    const long long t = p.shared_gates ? unit : unit / p.heads;
    const int head0 = p.shared_gates ? 0 : static_cast<int>(unit % p.heads);
    const Element* g = p.gates.at<Element>(t, head0);
    const float gate[3] = {Cvt::to_float(g[0]), Cvt::to_float(g[1]), Cvt::to_float(g[2])};
    float dot[3] = {0.0f, 0.0f, 0.0f};
    for (int i = lane; i < heads_per_unit * vecs; i += 32) {
      const int h = head0 + i / vecs, col = (i % vecs) * kVec;
      Vec8<Element> d_o;
      d_o.load(p.d_o.at<Element>(t, h) + col);
#pragma unroll
      for (int b = 0; b < 3; ++b) {
        if (p.d_gates.data != nullptr) {
          Vec8<Element> x;
          x.load(p.branch[b].at<Element>(t, h) + col);
#pragma unroll
          for (int e = 0; e < kVec; ++e) dot[b] = fmaf(x.v[e], d_o.v[e], dot[b]);
        }
        if (p.d_branch[b].data != nullptr) {
          Vec8<Element> d;
#pragma unroll
          for (int e = 0; e < kVec; ++e) d.v[e] = gate[b] * d_o.v[e];
          d.store(p.d_branch[b].at<Element>(t, h) + col);
        }
      }
    }
    if (p.d_gates.data == nullptr) continue;
#pragma unroll
    for (int b = 0; b < 3; ++b)
#pragma unroll
      for (int mask = 16; mask > 0; mask /= 2) dot[b] += __shfl_xor_sync(0xffffffffu, dot[b], mask);
    if (lane == 0) {
      Element* dg = p.d_gates.at<Element>(t, head0);
#pragma unroll
      for (int b = 0; b < 3; ++b) dg[b] = Cvt::from_float(dot[b]);
    }
  }
}

template <class Element>
__global__ void __launch_bounds__(kThreads) add_into_kernel(Rows dst, Rows src, std::int64_t rows, int heads,
                                                            int dim) {
  const int vecs = dim / kVec;
  const long long total = rows * heads * vecs;
  for (long long i = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * kThreads) {
    const long long row = i / vecs;
    const int col = static_cast<int>(i % vecs) * kVec;
    const long long t = row / heads;
    const int h = static_cast<int>(row % heads);
    Vec8<Element> a, b;
    a.load(dst.at<Element>(t, h) + col);
    b.load(src.at<Element>(t, h) + col);
#pragma unroll
    for (int e = 0; e < kVec; ++e) a.v[e] += b.v[e];
    a.store(dst.at<Element>(t, h) + col);
  }
}

// Enough CTAs to fill the device several times over; the kernels stride over the rest.
unsigned grid_for(long long threads) {
  const long long ctas = (threads + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::clamp<long long>(ctas, 1, 132LL * 16));
}

Status check_vectors(const char* op, const TensorView& x) {
  if (x.size(2) % kVec == 0) return Status::ok();
  return FSA_ERROR(StatusCode::kNotImplemented, std::string("o_cmp: ") + op + " on CUDA needs Dv a multiple of " +
                                                    std::to_string(kVec) + ", got " + std::to_string(x.size(2)));
}

CombineParams params_of(const NsaConfig& config, const TensorView& gates, const TensorView& o_cmp,
                        const TensorView& o_slc, const TensorView& o_swa) {
  CombineParams p{};
  p.shared_gates = config.gate_mode == GateMode::kShared;
  p.gates = {gates.data, gates.stride(0), p.shared_gates ? 0 : gates.stride(1)};
  p.branch[0] = Rows::of(o_cmp);
  p.branch[1] = Rows::of(o_slc);
  p.branch[2] = Rows::of(o_swa);
  p.tokens = o_cmp.size(0);
  p.heads = static_cast<int>(o_cmp.size(1));
  p.dim = static_cast<int>(o_cmp.size(2));
  return p;
}

}  // namespace

Status combine_forward(const NsaConfig& config, const TensorView& gates, const TensorView& o_cmp,
                       const TensorView& o_slc, const TensorView& o_swa, const TensorView& o) {
  constexpr const char* kOp = "combine_forward";
  FSA_RETURN_IF_ERROR(check_vectors(kOp, o_cmp));
  FSA_RETURN_IF_ERROR(
      common::check_rows_aligned(kOp, {{"o_cmp", o_cmp}, {"o_slc", o_slc}, {"o_swa", o_swa}, {"o", o}}));
  CombineParams p = params_of(config, gates, o_cmp, o_slc, o_swa);
  p.o = Rows::of(o);
  if (p.tokens * p.heads == 0) return Status::ok();
  const DeviceGuard guard(o_cmp.device.index);
  cudaStream_t stream = current_stream();
  return common::dispatch_dtype(kOp, "o_cmp", o_cmp.dtype, [&]<class Element>() -> Status {
    return common::launch_dependent<&combine_forward_kernel<Element>>(
        "combine_forward_kernel", grid_for(p.tokens * p.heads * (p.dim / kVec)), kThreads, 0, stream, p);
  });
}

Status combine_backward(const NsaConfig& config, const TensorView& gates, const TensorView& o_cmp,
                        const TensorView& o_slc, const TensorView& o_swa, const TensorView& d_o,
                        const TensorView& d_gates, const TensorView& d_o_cmp, const TensorView& d_o_slc,
                        const TensorView& d_o_swa) {
  constexpr const char* kOp = "combine_backward";
  FSA_RETURN_IF_ERROR(check_vectors(kOp, o_cmp));
  FSA_RETURN_IF_ERROR(common::check_rows_aligned(kOp, {{"o_cmp", o_cmp}, {"o_slc", o_slc}, {"o_swa", o_swa},
                                                       {"d_o", d_o}, {"d_o_cmp", d_o_cmp}, {"d_o_slc", d_o_slc},
                                                       {"d_o_swa", d_o_swa}}));
  CombineParams p = params_of(config, gates, o_cmp, o_slc, o_swa);
  p.d_o = Rows::of(d_o);
  p.d_branch[0] = Rows::of(d_o_cmp);
  p.d_branch[1] = Rows::of(d_o_slc);
  p.d_branch[2] = Rows::of(d_o_swa);
  if (d_gates.defined()) p.d_gates = {d_gates.data, d_gates.stride(0), p.shared_gates ? 0 : d_gates.stride(1)};
  if (p.tokens * p.heads == 0) return Status::ok();
  const DeviceGuard guard(o_cmp.device.index);
  cudaStream_t stream = current_stream();
  const long long units = p.shared_gates ? p.tokens : p.tokens * p.heads;
  return common::dispatch_dtype(kOp, "o_cmp", o_cmp.dtype, [&]<class Element>() -> Status {
    combine_backward_kernel<Element><<<grid_for(units * 32), kThreads, 0, stream>>>(p);
    FSA_CHECK_LAUNCH("combine_backward_kernel", stream);
    return Status::ok();
  });
}

Status add_into(const TensorView& dst, const TensorView& src) {
  constexpr const char* kOp = "add_into";
  if (dst.size(2) % kVec != 0)
    return FSA_ERROR(StatusCode::kNotImplemented, std::string("dst: ") + kOp + " on CUDA needs D a multiple of " +
                                                      std::to_string(kVec) + ", got " + std::to_string(dst.size(2)));
  FSA_RETURN_IF_ERROR(common::check_rows_aligned(kOp, {{"dst", dst}, {"src", src}}));
  const std::int64_t rows = dst.size(0);
  const int heads = static_cast<int>(dst.size(1)), dim = static_cast<int>(dst.size(2));
  if (rows * heads == 0) return Status::ok();
  const DeviceGuard guard(dst.device.index);
  cudaStream_t stream = current_stream();
  return common::dispatch_dtype(kOp, "dst", dst.dtype, [&]<class Element>() -> Status {
    add_into_kernel<Element><<<grid_for(rows * heads * (dim / kVec)), kThreads, 0, stream>>>(
        Rows::of(dst), Rows::of(src), rows, heads, dim);
    FSA_CHECK_LAUNCH("add_into_kernel", stream);
    return Status::ok();
  });
}

}  // namespace fsa::cuda
