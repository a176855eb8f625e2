// Random inputs of the whole NSA layer, shared by the CPU and GPU layer tests.
#pragma once

#include <cmath>
#include <vector>

#include "test_util.hpp"

namespace fsa::test {

struct LayerCase {
  std::vector<std::int64_t> seqlens;
  int hq = 4, hkv = 2, dqk = 8, dv = 6;
  DType dtype = DType::kFloat64;
  NsaConfig config;
};

// Small hyperparameters so that a few hundred tokens exercise every rule: several compressed
// tokens, several selection blocks with a real top-k choice, and a window shorter than a sequence.
inline NsaConfig small_config() {
  NsaConfig c;
  c.cmp_len = 8;
  c.cmp_stride = 4;
  c.block_size = 32;
  c.topk = 3;
  c.init_blocks = 1;
  c.local_blocks = 1;
  c.window = 16;
  return c;
}

struct LayerTensors {
  HostTensor cu, q, k, v, w_k, pe_k, w_v, gates;

  LayerTensors(const LayerCase& lc, std::mt19937_64& rng) {
    std::int64_t n = 0;
    for (std::int64_t s : lc.seqlens) n += s;
    const std::int64_t l = lc.config.cmp_len;
    cu = make_cu_seqlens(lc.seqlens);
    q = HostTensor(lc.dtype, {n, lc.hq, lc.dqk});
    k = HostTensor(lc.dtype, {n, lc.hkv, lc.dqk});
    v = HostTensor(lc.dtype, {n, lc.hkv, lc.dv});
    q.fill_normal(rng);
    k.fill_normal(rng);
    v.fill_normal(rng);
    if (lc.config.compression == CompressionKind::kLinear) {
      w_k = HostTensor(lc.dtype, {lc.hkv, l * lc.dqk, lc.dqk});
      w_v = HostTensor(lc.dtype, {lc.hkv, l * lc.dv, lc.dv});
      w_k.fill_normal(rng, 1.0 / std::sqrt(static_cast<double>(l * lc.dqk)));
      w_v.fill_normal(rng, 1.0 / std::sqrt(static_cast<double>(l * lc.dv)));
    }
    pe_k = HostTensor(lc.dtype, {lc.hkv, l, lc.dqk});
    pe_k.fill_normal(rng, 0.5);
    gates = lc.config.gate_mode == GateMode::kPerHead ? HostTensor(lc.dtype, {n, lc.hq, 3})
                                                      : HostTensor(lc.dtype, {n, 3});
    gates.fill_uniform(rng, 0.05, 0.95);
  }

  NsaLayerInputs inputs() const {
    NsaLayerInputs in;
    in.q = q.view();
    in.k = k.view();
    in.v = v.view();
    in.cu_seqlens = cu.view();
    in.w_k = w_k.numel() > 0 && !w_k.sizes().empty() ? w_k.view() : TensorView{};
    in.pe_k = pe_k.view();
    in.w_v = w_v.numel() > 0 && !w_v.sizes().empty() ? w_v.view() : TensorView{};
    in.gates = gates.view();
    return in;
  }
};

}  // namespace fsa::test
