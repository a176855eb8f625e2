// Inference with a cache (nsa_prefill / nsa_decode) on the CPU: every new token's output, branch
// outputs and selection equal the rows of one run of the layer over the whole sequences, however
// the sequences are cut into calls (prefill chunks, decode steps of 1-8 tokens, speculative tails
// dropped); bad arguments give errors that name them and write nothing; the pool size queries.
#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "layer_case.hpp"
#include "reference/reference.hpp"
#include "selection_check.hpp"

namespace fsa::test {
namespace {

std::vector<std::int64_t> row_starts(const HostTensor& cu) {
  std::vector<std::int64_t> out;
  for (const double x : cu.to_double()) out.push_back(static_cast<std::int64_t>(x));
  return out;
}

// Copies row `from` of `src` into row `to` of `dst` (same row shape, any dtypes).
void copy_row(const HostTensor& src, std::int64_t from, HostTensor& dst, std::int64_t to) {
  const std::int64_t row = src.numel() / src.sizes()[0];
  for (std::int64_t i = 0; i < row; ++i) dst.set(to * row + i, src.get(from * row + i));
}

std::vector<std::int32_t> shuffled_ids(std::int64_t count, std::mt19937_64& rng) {
  std::vector<std::int32_t> ids(static_cast<std::size_t>(count));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  return ids;
}

// ---- A serving engine's cache ------------------------------------------------------------------------

// Pools for a fixed set of sequences as an engine lays them out: pages of both pools handed out in
// shuffled order, slots permuted, spare pages and slots, everything poisoned so that a read of a row
// never written shows as NaN in the outputs.
struct EngineCache {
  NsaCacheShape shape;
  HostTensor k_pages, v_pages, k_cmp_pages, v_cmp_pages, k_tail;
  std::vector<std::vector<std::int32_t>> pages, cmp_pages;  // per sequence
  std::vector<std::int32_t> slots;
  std::vector<std::int64_t> cached;  // tokens in the cache, per sequence
  std::int64_t max_pages = 0, max_cmp_pages = 0;

  NsaCache views() const {
    return {k_pages.view(), v_pages.view(), k_cmp_pages.view(), v_cmp_pages.view(), k_tail.view()};
  }
};

std::size_t bytes_of(const HostTensor& t) { return static_cast<std::size_t>(t.numel()) * dtype_size(t.dtype()); }

// Room for sequences of up to `capacity[b]` tokens.
EngineCache make_cache(const LayerCase& lc, int page_size, int cmp_page_size,
                       const std::vector<std::int64_t>& capacity, std::mt19937_64& rng) {
  EngineCache c;
  const auto nseq = static_cast<std::int64_t>(capacity.size());
  c.shape = {.heads_kv = lc.hkv, .head_dim_qk = lc.dqk, .head_dim_v = lc.dv, .page_size = page_size,
             .cmp_page_size = cmp_page_size, .num_slots = nseq + 2, .dtype = lc.dtype};
  std::vector<std::int64_t> pages, cmp_pages;
  for (const std::int64_t tokens : capacity) {
    pages.push_back(nsa_cache_pages(c.shape, tokens));
    cmp_pages.push_back(nsa_cache_cmp_pages(lc.config, c.shape, tokens));
    c.max_pages = std::max(c.max_pages, pages.back());
    c.max_cmp_pages = std::max(c.max_cmp_pages, cmp_pages.back());
  }
  c.shape.num_pages = std::accumulate(pages.begin(), pages.end(), std::int64_t{3});
  c.shape.num_cmp_pages = std::accumulate(cmp_pages.begin(), cmp_pages.end(), std::int64_t{3});
  const auto page_ids = shuffled_ids(c.shape.num_pages, rng), cmp_ids = shuffled_ids(c.shape.num_cmp_pages, rng);
  const auto slot_ids = shuffled_ids(c.shape.num_slots, rng);
  auto next_page = page_ids.begin(), next_cmp = cmp_ids.begin();
  for (std::int64_t b = 0; b < nseq; ++b) {
    c.pages.emplace_back(next_page, next_page + pages[static_cast<std::size_t>(b)]);
    c.cmp_pages.emplace_back(next_cmp, next_cmp + cmp_pages[static_cast<std::size_t>(b)]);
    next_page += pages[static_cast<std::size_t>(b)];
    next_cmp += cmp_pages[static_cast<std::size_t>(b)];
    c.slots.push_back(slot_ids[static_cast<std::size_t>(b)]);
  }
  c.cached.assign(capacity.size(), 0);
  const DType dt = lc.dtype;
  c.k_pages = HostTensor(dt, {c.shape.num_pages, page_size, lc.hkv, lc.dqk});
  c.v_pages = HostTensor(dt, {c.shape.num_pages, page_size, lc.hkv, lc.dv});
  c.k_cmp_pages = HostTensor(dt, {c.shape.num_cmp_pages, cmp_page_size, lc.hkv, lc.dqk});
  c.v_cmp_pages = HostTensor(dt, {c.shape.num_cmp_pages, cmp_page_size, lc.hkv, lc.dv});
  c.k_tail = HostTensor(dt, {c.shape.num_slots, nsa_cache_tail_rows(lc.config), lc.hkv, lc.dqk});
  for (HostTensor* pool : {&c.k_pages, &c.v_pages, &c.k_cmp_pages, &c.v_cmp_pages, &c.k_tail}) pool->poison();
  const NsaCacheBytes bytes = nsa_cache_bytes(lc.config, c.shape);
  EXPECT_EQ(bytes.k_pages, bytes_of(c.k_pages));
  EXPECT_EQ(bytes.v_pages, bytes_of(c.v_pages));
  EXPECT_EQ(bytes.k_cmp_pages, bytes_of(c.k_cmp_pages));
  EXPECT_EQ(bytes.v_cmp_pages, bytes_of(c.v_cmp_pages));
  EXPECT_EQ(bytes.k_tail, bytes_of(c.k_tail));
  return c;
}

// ---- One call ----------------------------------------------------------------------------------------

// The arguments of one call: the new tokens of every sequence (rows of the whole sequences'
// tensors), the batch as the engine fills it (unused table entries -1), poisoned outputs.
struct CacheCall {
  std::vector<std::int64_t> counts;
  HostTensor cu, q, k, v, gates;
  HostTensor o, o_cmp, o_slc, o_swa, topk;
  HostTensor block_table, cmp_block_table, cache_seqlens, slots;
  TensorView w_k, pe_k, w_v;

  NsaLayerInputs inputs() const { return {q.view(), k.view(), v.view(), cu.view(), w_k, pe_k, w_v, gates.view()}; }
  NsaCacheBatch batch() const {
    return {block_table.view(), cmp_block_table.view(), cache_seqlens.view(), slots.view()};
  }
  NsaInferenceBranches branches() const { return {o_cmp.view(), o_slc.view(), o_swa.view(), topk.view()}; }
};

HostTensor table_of(const std::vector<std::vector<std::int32_t>>& rows, std::int64_t width) {
  HostTensor t(DType::kInt32, {static_cast<std::int64_t>(rows.size()), width});
  t.fill(-1);
  for (std::size_t b = 0; b < rows.size(); ++b)
    for (std::size_t j = 0; j < rows[b].size(); ++j)
      t.set(static_cast<std::int64_t>(b) * width + static_cast<std::int64_t>(j), rows[b][j]);
  return t;
}

// New token j of sequence b is position cache.cached[b] + j of `whole`, or of `drafts` from
// `kept[b]` on (a speculative tail the caller will drop).
CacheCall make_call(const LayerCase& lc, const LayerTensors& whole, const EngineCache& cache,
                    const std::vector<std::int64_t>& counts, const LayerTensors* drafts = nullptr,
                    const std::vector<std::int64_t>* kept = nullptr) {
  CacheCall c;
  c.counts = counts;
  c.cu = make_cu_seqlens(counts);
  const std::int64_t n = std::accumulate(counts.begin(), counts.end(), std::int64_t{0});
  const DType dt = lc.dtype;
  c.q = HostTensor(dt, {n, lc.hq, lc.dqk});
  c.k = HostTensor(dt, {n, lc.hkv, lc.dqk});
  c.v = HostTensor(dt, {n, lc.hkv, lc.dv});
  c.gates = lc.config.gate_mode == GateMode::kPerHead ? HostTensor(dt, {n, lc.hq, 3}) : HostTensor(dt, {n, 3});
  const auto starts = row_starts(whole.cu);
  std::int64_t row = 0;
  for (std::size_t b = 0; b < counts.size(); ++b)
    for (std::int64_t j = 0; j < counts[b]; ++j, ++row) {
      const LayerTensors& src = kept != nullptr && j >= (*kept)[b] ? *drafts : whole;
      const std::int64_t from = starts[b] + cache.cached[b] + j;
      copy_row(src.q, from, c.q, row);
      copy_row(src.k, from, c.k, row);
      copy_row(src.v, from, c.v, row);
      copy_row(src.gates, from, c.gates, row);
    }
  const NsaLayerInputs params = whole.inputs();
  c.w_k = params.w_k;
  c.pe_k = params.pe_k;
  c.w_v = params.w_v;
  for (HostTensor* out : {&c.o, &c.o_cmp, &c.o_slc, &c.o_swa}) {
    *out = HostTensor(dt, {n, lc.hq, lc.dv});
    out->poison();
  }
  c.topk = HostTensor(DType::kInt32, {lc.hkv, n, lc.config.topk});
  c.topk.poison();
  c.block_table = table_of(cache.pages, cache.max_pages);
  c.cmp_block_table = table_of(cache.cmp_pages, cache.max_cmp_pages);
  c.cache_seqlens = HostTensor(DType::kInt32, {static_cast<std::int64_t>(counts.size())});
  c.slots = HostTensor(DType::kInt32, {static_cast<std::int64_t>(counts.size())});
  for (std::size_t b = 0; b < counts.size(); ++b) {
    c.cache_seqlens.set(static_cast<std::int64_t>(b), static_cast<double>(cache.cached[b]));
    c.slots.set(static_cast<std::int64_t>(b), cache.slots[b]);
  }
  return c;
}

// The outputs of every call, placed at the rows of the whole sequences.
struct Gathered {
  HostTensor o, o_cmp, o_slc, o_swa, topk;

  Gathered(const LayerCase& lc, std::int64_t tokens) {
    for (HostTensor* out : {&o, &o_cmp, &o_slc, &o_swa}) *out = HostTensor(lc.dtype, {tokens, lc.hq, lc.dv});
    topk = HostTensor(DType::kInt32, {lc.hkv, tokens, lc.config.topk});
    for (HostTensor* out : {&o, &o_cmp, &o_slc, &o_swa, &topk}) out->poison();
  }
};

// Runs one call; the outputs of the tokens it keeps (all, or kept[b]) go into `out` and the cache
// then holds those tokens.
void run_call(const LayerCase& lc, const LayerTensors& whole, EngineCache& cache,
              const std::vector<std::int64_t>& counts, bool decode, Gathered& out, const LayerTensors* drafts = nullptr,
              const std::vector<std::int64_t>* kept = nullptr) {
  const CacheCall call = make_call(lc, whole, cache, counts, drafts, kept);
  const NsaLayerInputs in = call.inputs();
  const Status s = decode ? nsa_decode(lc.config, in, cache.views(), call.batch(), call.o.view(), call.branches())
                          : nsa_prefill(lc.config, in, cache.views(), call.batch(), call.o.view(), call.branches());
  ASSERT_TRUE(s.is_ok()) << s.to_string();
  const auto starts = row_starts(whole.cu);
  const std::int64_t n = call.q.sizes()[0], tokens = out.o.sizes()[0], K = lc.config.topk;
  std::int64_t row = 0;
  for (std::size_t b = 0; b < counts.size(); ++b) {
    const std::int64_t keep = kept != nullptr ? (*kept)[b] : counts[b];
    for (std::int64_t j = 0; j < keep; ++j) {
      const std::int64_t to = starts[b] + cache.cached[b] + j;
      copy_row(call.o, row + j, out.o, to);
      copy_row(call.o_cmp, row + j, out.o_cmp, to);
      copy_row(call.o_slc, row + j, out.o_slc, to);
      copy_row(call.o_swa, row + j, out.o_swa, to);
      for (std::int64_t g = 0; g < lc.hkv; ++g)
        for (std::int64_t c = 0; c < K; ++c)
          out.topk.set((g * tokens + to) * K + c, call.topk.get((g * n + row + j) * K + c));
    }
    row += counts[b];
    cache.cached[b] += keep;
  }
}

// ---- Schedules: how the sequences are cut into calls --------------------------------------------------

using Schedule = std::vector<std::vector<std::int64_t>>;  // per call, the new tokens of each sequence

// Calls of `step` new tokens per sequence (fewer at a sequence's end, then none) until `remaining`
// is used up; `step` 0 draws each count from 0..kMaxDecodeTokens.
Schedule decode_steps(std::vector<std::int64_t> remaining, int step, std::mt19937_64& rng) {
  std::uniform_int_distribution<std::int64_t> draw(0, kMaxDecodeTokens);
  Schedule calls;
  while (std::any_of(remaining.begin(), remaining.end(), [](std::int64_t r) { return r > 0; })) {
    std::vector<std::int64_t> counts;
    for (std::int64_t& r : remaining) {
      counts.push_back(std::min(r, step > 0 ? std::int64_t{step} : draw(rng)));
      r -= counts.back();
    }
    calls.push_back(counts);
  }
  return calls;
}

// Prefill chunks of random lengths in 0..max_chunk (ends off every grid, empty chunks included).
Schedule random_chunks(std::vector<std::int64_t> remaining, std::int64_t max_chunk, std::mt19937_64& rng) {
  std::uniform_int_distribution<std::int64_t> draw(0, max_chunk);
  Schedule calls;
  while (std::any_of(remaining.begin(), remaining.end(), [](std::int64_t r) { return r > 0; })) {
    std::vector<std::int64_t> counts;
    for (std::int64_t& r : remaining) {
      counts.push_back(std::min(r, draw(rng)));
      r -= counts.back();
    }
    calls.push_back(counts);
  }
  return calls;
}

std::vector<std::int64_t> minus(const std::vector<std::int64_t>& a, const std::vector<std::int64_t>& b) {
  std::vector<std::int64_t> out;
  for (std::size_t i = 0; i < a.size(); ++i) out.push_back(a[i] - b[i]);
  return out;
}

// Runs the prefill calls, then the decode calls, on a fresh cache; the gathered outputs.
Gathered run_schedule(const LayerCase& lc, const LayerTensors& whole, int page_size, int cmp_page_size,
                      const Schedule& prefill, const Schedule& decode, std::mt19937_64& rng) {
  EngineCache cache = make_cache(lc, page_size, cmp_page_size, lc.seqlens, rng);
  Gathered out(lc, whole.q.sizes()[0]);
  for (const auto& counts : prefill) run_call(lc, whole, cache, counts, false, out);
  for (const auto& counts : decode) run_call(lc, whole, cache, counts, true, out);
  EXPECT_EQ(cache.cached, lc.seqlens);
  return out;
}

// ---- Comparison with one run of the layer ---------------------------------------------------------------

// The one-shot run: the layer composed from the public ops in fp32 (fp64 for fp64 cases) on the
// same (rounded) inputs, checked against nsa_forward itself.
struct OneShot {
  LayerCase lc;
  LayerComposition ops;
};

OneShot one_shot(const LayerCase& lc, const LayerTensors& whole) {
  OneShot r{lc, {}};
  r.lc.dtype = lc.dtype == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32;
  const LayerTensors exact = whole.converted(r.lc.dtype);
  r.ops = compose_layer(r.lc, exact);
  HostTensor o(r.lc.dtype, r.ops.o.sizes());
  FSA_EXPECT_OK(nsa_forward(r.lc.config, exact.inputs(), o.view(), TensorView{}));
  EXPECT_LT(rel_frobenius(o.to_double(), r.ops.o.to_double()), 1e-12);
  return r;
}

// How close a cached run must be: fp32 and fp64 pools hold the one-shot's values, so only the
// operation order may differ; bf16/fp16 pools round keys the one-shot keeps in fp32, within the
// tolerance of docs/semantics.md section 10, and may decide near-ties of the selection the other way.
struct Tolerance {
  double outputs;       // relative Frobenius error of each output
  double scores;        // a differing selection row: relative to the row's largest one-shot score
  double reselected;    // the most rows whose selection may differ, as a fraction
};

Tolerance tolerance_of(DType dtype) {
  switch (dtype) {
    case DType::kFloat64: return {1e-12, 1e-12, 0.0};
    case DType::kFloat32: return {1e-5, 1e-5, 0.005};
    default: return {dtype == DType::kBFloat16 ? 1e-2 : 5e-3, 5e-2, 0.02};
  }
}

// Per (kv head, token): whether the cached run selected the one-shot's blocks. A row that differs
// must still be a correct selection within tol.scores for the one-shot's fp64 block scores.
std::vector<char> compare_selection(const OneShot& ref, const HostTensor& got, const Tolerance& tol) {
  const LayerCase& lc = ref.lc;
  const NsaConfig& c = lc.config;
  ref::Varlen seqs;
  seqs.cu.clear();
  for (const std::int64_t x : row_starts(make_cu_seqlens(lc.seqlens))) seqs.cu.push_back(static_cast<std::int32_t>(x));
  const ref::Varlen cmp = ref::compressed_varlen(seqs, c);
  const ref::HeadDims dims{lc.hq, lc.hkv, lc.dqk, lc.dv};
  const auto q = ref.ops.q_rot.to_double(), k = ref.ops.k_cmp_rot.to_double(), lse = ref.ops.lse_cmp.to_double();
  const std::int64_t tokens = seqs.total(), K = c.topk;
  std::vector<char> same(static_cast<std::size_t>(lc.hkv * tokens), 1);
  std::int64_t differing = 0;
  for (int b = 0; b < seqs.num_seqs(); ++b)
    for (int g = 0; g < lc.hkv; ++g)
      for (std::int64_t t = 0; t < seqs.length(b); ++t) {
        const std::int64_t row = g * tokens + seqs.start(b) + t;
        std::vector<std::int32_t> want(static_cast<std::size_t>(K)), have(static_cast<std::size_t>(K));
        for (std::int64_t i = 0; i < K; ++i) {
          want[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(ref.ops.topk.get(row * K + i));
          have[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(got.get(row * K + i));
        }
        if (have == want) continue;
        same[static_cast<std::size_t>(row)] = 0;
        ++differing;
        EXPECT_NO_FATAL_FAILURE(check_row_invariants(c, t, have)) << "b=" << b << " g=" << g;
        const std::vector<double> scores = ref::block_scores<double>(c, seqs, cmp, dims, c.softmax_scale(lc.dqk),
                                                                     q.data(), k.data(), lse.data(), b, t, g);
        EXPECT_TRUE(is_selection_within(c, t, scores, have, tol.scores)) << "b=" << b << " g=" << g << " t=" << t;
      }
  EXPECT_LE(static_cast<double>(differing), tol.reselected * static_cast<double>(lc.hkv * tokens))
      << differing << " of " << lc.hkv * tokens << " selection rows differ";
  return same;
}

// The rows (token, head) of [tokens, Hq, Dv] tensors that `keep` allows, flattened.
std::vector<double> rows_where(const HostTensor& t, const std::vector<char>& keep, const LayerCase& lc) {
  const std::vector<double> all = t.to_double();
  const std::int64_t tokens = t.sizes()[0], G = lc.hq / lc.hkv;
  std::vector<double> out;
  for (std::int64_t r = 0; r < tokens; ++r)
    for (std::int64_t h = 0; h < lc.hq; ++h)
      if (keep[static_cast<std::size_t>((h / G) * tokens + r)])
        out.insert(out.end(), all.begin() + (r * lc.hq + h) * lc.dv, all.begin() + (r * lc.hq + h + 1) * lc.dv);
  return out;
}

void expect_close(const std::string& what, const std::vector<double>& got, const std::vector<double>& want,
                  double tol) {
  ASSERT_EQ(got.size(), want.size()) << what;
  EXPECT_TRUE(all_finite(got)) << what << ": an output row was not written, or read an unwritten cache row";
  EXPECT_LE(rel_frobenius(got, want), tol) << what;
}

void expect_matches_one_shot(const OneShot& ref, const Gathered& got, const std::string& what) {
  SCOPED_TRACE(what);
  const LayerCase& lc = ref.lc;
  const Tolerance tol = tolerance_of(got.o.dtype());
  const std::vector<char> same = compare_selection(ref, got.topk, tol);
  expect_close("o_cmp", got.o_cmp.to_double(), ref.ops.o_cmp.to_double(), tol.outputs);
  expect_close("o_swa", got.o_swa.to_double(), ref.ops.o_swa.to_double(), tol.outputs);
  // Selected attention and the output follow the selection: compared where it is the same.
  expect_close("o_slc", rows_where(got.o_slc, same, lc), rows_where(ref.ops.o_slc, same, lc), tol.outputs);
  expect_close("o", rows_where(got.o, same, lc), rows_where(ref.ops.o, same, lc), tol.outputs);
  EXPECT_TRUE(all_finite(got.o_slc.to_double()) && all_finite(got.o.to_double()));
}

// ---- Decode after a prefix -------------------------------------------------------------------------------

LayerCase small_case(DType dtype) {
  LayerCase lc;
  lc.dtype = dtype;
  lc.config = small_config();        // l = 8, s = 4, B = 32, K = 3, I = L = 1, w = 16
  lc.config.rope.theta = 500.0f;     // fast rotation so that short sequences see real angles
  return lc;
}

// The cache lengths worth a check: nothing, one token, a window short of complete and
// complete, the next window's last token, a selection block short, exact, one over, several
// blocks, a long context.
std::vector<std::int64_t> prefix_lengths(const NsaConfig& c) {
  const std::int64_t l = c.cmp_len, s = c.cmp_stride, B = c.block_size;
  return {0, 1, l - 1, l, l + s - 1, B - 1, B, B + 1, 4 * B + 7, 2600};
}

// Sequences of prefix_lengths() cached tokens, each then decoded for 13 + b more tokens (so the
// batch turns ragged at its end), q_len tokens per call for q_len in `steps` (0: drawn per call
// and sequence from 0..8), on raw pages of B and 4B tokens and compressed pages of 5 and 3.
void check_decode_after_prefixes(LayerCase lc, const std::vector<int>& steps, std::uint64_t salt) {
  auto rng = rng_for_test(salt);
  const std::vector<std::int64_t> prefix = prefix_lengths(lc.config);
  std::vector<std::int64_t> decoded;
  lc.seqlens.clear();
  for (std::size_t b = 0; b < prefix.size(); ++b) {
    decoded.push_back(13 + static_cast<std::int64_t>(b));
    lc.seqlens.push_back(prefix[b] + decoded.back());
  }
  const LayerTensors whole(lc, rng);
  const OneShot ref = one_shot(lc, whole);
  for (std::size_t i = 0; i < steps.size(); ++i) {
    const int page_size = lc.config.block_size * (i % 2 == 0 ? 1 : 4), cmp_page_size = i % 2 == 0 ? 5 : 3;
    const Gathered got = run_schedule(lc, whole, page_size, cmp_page_size, {prefix},
                                      decode_steps(decoded, steps[i], rng), rng);
    expect_matches_one_shot(ref, got, std::string(dtype_name(lc.dtype)) + " q_len " +
                                          (steps[i] > 0 ? std::to_string(steps[i]) : "random") + " page_size " +
                                          std::to_string(page_size));
  }
}

TEST(Inference, DecodeAfterEveryPrefixLengthFp32) {
  check_decode_after_prefixes(small_case(DType::kFloat32), {1, 2, 3, 4, 5, 6, 7, 8, 0, 0}, 1);
}

TEST(Inference, DecodeAfterEveryPrefixLengthBf16) {
  check_decode_after_prefixes(small_case(DType::kBFloat16), {1, 2, 3, 4, 5, 6, 7, 8, 0, 0}, 2);
}

// The default hyperparameters (l = 32, s = 16, B = 64, K = 16, w = 512) with G = 4: 2600 tokens
// have 41 blocks, so the selection chooses.
LayerCase default_case(DType dtype) {
  LayerCase lc;
  lc.dtype = dtype;
  lc.hq = 4;
  lc.hkv = 1;
  lc.dqk = 16;
  lc.dv = 16;
  return lc;
}

TEST(Inference, DecodeDefaultHyperparametersFp32) {
  check_decode_after_prefixes(default_case(DType::kFloat32), {1, 8, 0}, 3);
}

TEST(Inference, DecodeDefaultHyperparametersBf16) {
  check_decode_after_prefixes(default_case(DType::kBFloat16), {3, 0}, 4);
}

// Mean compression, shared gates, G = 3, RoPE off or with llama3 scaling, fp64 and fp16 pools.
TEST(Inference, DecodeOtherLayerVariants) {
  LayerCase lc = small_case(DType::kFloat64);
  lc.hq = 6;
  lc.config.compression = CompressionKind::kMean;
  lc.config.gate_mode = GateMode::kShared;
  lc.config.rope.enabled = false;
  check_decode_after_prefixes(lc, {0}, 5);
  lc = small_case(DType::kFloat16);
  lc.config.rope.llama3_scaling = true;
  lc.config.rope.llama3_original_max_position = 64;
  check_decode_after_prefixes(lc, {5}, 6);
}

// ---- Chunked prefill -------------------------------------------------------------------------------------

// Random chunks (empty ones included, ends off the s, l and B grids), several sequences in each
// packed call: the one-shot's outputs, and exactly the outputs of another cut and of a single call.
void check_chunked_prefill(DType dtype, std::uint64_t salt) {
  auto rng = rng_for_test(salt);
  LayerCase lc = small_case(dtype);
  lc.seqlens = {300, 75, 1, 0, 130, 517};
  const LayerTensors whole(lc, rng);
  const OneShot ref = one_shot(lc, whole);
  const Gathered first = run_schedule(lc, whole, 32, 5, random_chunks(lc.seqlens, 97, rng), {}, rng);
  expect_matches_one_shot(ref, first, "random chunks");
  const Gathered second = run_schedule(lc, whole, 128, 3, random_chunks(lc.seqlens, 40, rng), {}, rng);
  const Gathered single = run_schedule(lc, whole, 64, 7, {lc.seqlens}, {}, rng);
  // The keys are read back from the cache, so the cut changes nothing, not even the rounding.
  for (const Gathered* other : {&second, &single}) {
    EXPECT_EQ(other->o.to_double(), first.o.to_double());
    EXPECT_EQ(other->o_slc.to_double(), first.o_slc.to_double());
    EXPECT_EQ(other->topk.to_double(), first.topk.to_double());
  }
}

TEST(Inference, ChunkedPrefillFp32) { check_chunked_prefill(DType::kFloat32, 7); }
TEST(Inference, ChunkedPrefillBf16) { check_chunked_prefill(DType::kBFloat16, 8); }

// ---- Speculative decoding ------------------------------------------------------------------------------

// Decode calls of draft tokens whose tails are wrong (random tokens) and dropped: only the first
// kept[b] of each call stay. The next calls overwrite what the dropped tokens wrote, and the key
// ring still holds every key the next windows need.
void check_dropped_tails(DType dtype, std::uint64_t salt) {
  auto rng = rng_for_test(salt);
  LayerCase lc = small_case(dtype);
  lc.seqlens = {90, 41, 7, 150};
  const LayerTensors whole(lc, rng), drafts(lc, rng);
  const OneShot ref = one_shot(lc, whole);
  EngineCache cache = make_cache(lc, 32, 5, lc.seqlens, rng);
  Gathered got(lc, whole.q.sizes()[0]);
  run_call(lc, whole, cache, {30, 33, 0, 41}, false, got);
  std::uniform_int_distribution<std::int64_t> draw(0, kMaxDecodeTokens);
  while (cache.cached != lc.seqlens) {
    std::vector<std::int64_t> counts, kept;
    for (std::size_t b = 0; b < lc.seqlens.size(); ++b) {
      counts.push_back(std::min(lc.seqlens[b] - cache.cached[b], std::int64_t{kMaxDecodeTokens}));
      kept.push_back(std::min(counts.back(), draw(rng)));
    }
    ASSERT_NO_FATAL_FAILURE(run_call(lc, whole, cache, counts, true, got, &drafts, &kept));
  }
  expect_matches_one_shot(ref, got, "dropped tails");
}

TEST(Inference, SpeculativeTailsDroppedFp32) { check_dropped_tails(DType::kFloat32, 9); }
TEST(Inference, SpeculativeTailsDroppedBf16) { check_dropped_tails(DType::kBFloat16, 10); }

// ---- Errors --------------------------------------------------------------------------------------------

std::vector<unsigned char> bytes(const HostTensor& t) {
  const auto* p = static_cast<const unsigned char*>(t.view().data);
  return {p, p + bytes_of(t)};
}

// A cache holding a prefix of three sequences and a valid call appending to it; each check spoils
// one argument of that call.
class InferenceErrors : public ::testing::Test {
 protected:
  struct Args {
    NsaConfig config;
    NsaLayerInputs inputs;
    NsaCache cache;
    NsaCacheBatch batch;
    TensorView o;
    NsaInferenceBranches branches;
  };

  void SetUp() override {
    auto rng = rng_for_test();
    lc_ = small_case(DType::kFloat32);
    lc_.seqlens = {40, 70, 5};
    whole_ = std::make_unique<LayerTensors>(lc_, rng);
    cache_ = std::make_unique<EngineCache>(make_cache(lc_, 32, 5, {60, 90, 20}, rng));
    Gathered ignored(lc_, whole_->q.sizes()[0]);
    run_call(lc_, *whole_, *cache_, {30, 50, 0}, false, ignored);
    call_ = std::make_unique<CacheCall>(make_call(lc_, *whole_, *cache_, {5, 8, 3}));
  }

  Args valid() const {
    return {lc_.config, call_->inputs(), cache_->views(), call_->batch(), call_->o.view(), call_->branches()};
  }

  // The call with `spoil` applied fails naming `name`, and writes neither the pools nor the outputs.
  void expect_rejected(const std::string& name, const std::function<void(Args&)>& spoil, bool decode = false) {
    Args a = valid();
    spoil(a);
    std::vector<std::vector<unsigned char>> before;
    const std::vector<const HostTensor*> written = {&cache_->k_pages, &cache_->v_pages, &cache_->k_cmp_pages,
                                                    &cache_->v_cmp_pages, &cache_->k_tail, &call_->o,
                                                    &call_->o_cmp, &call_->o_slc, &call_->o_swa, &call_->topk};
    for (const HostTensor* t : written) before.push_back(bytes(*t));
    const Status s = decode ? nsa_decode(a.config, a.inputs, a.cache, a.batch, a.o, a.branches)
                            : nsa_prefill(a.config, a.inputs, a.cache, a.batch, a.o, a.branches);
    expect_invalid(s, name);
    for (std::size_t i = 0; i < written.size(); ++i)
      EXPECT_EQ(bytes(*written[i]), before[i]) << name << ": tensor " << i << " of the cache and outputs written";
  }

  // `t` spoiled in each way a check must catch: another dtype, a wrong size of dim `dim`, another
  // device, a non-contiguous last dim.
  void expect_each_spoil_rejected(const std::string& name, const HostTensor& t, DType other_dtype, int dim,
                                  const std::function<void(Args&, const TensorView&)>& replace) {
    const HostTensor other(other_dtype, t.sizes());
    std::vector<std::int64_t> sizes = t.sizes();
    sizes[static_cast<std::size_t>(dim)] += 1;
    const HostTensor wrong_size(t.dtype(), sizes);
    TensorView on_gpu = t.view();
    on_gpu.device = Device::cuda(0);
    std::vector<std::int64_t> wide_sizes = t.sizes();
    wide_sizes.back() *= 2;
    const HostTensor wide(t.dtype(), wide_sizes);
    TensorView strided = wide.view();
    strided.sizes = t.view().sizes;
    strided.strides[static_cast<std::size_t>(strided.ndim - 1)] = 2;
    expect_rejected(name, [&](Args& a) { replace(a, other.view()); });
    expect_rejected(name, [&](Args& a) { replace(a, wrong_size.view()); });
    expect_rejected(name, [&](Args& a) { replace(a, on_gpu); });
    expect_rejected(name, [&](Args& a) { replace(a, strided); });
  }

  HostTensor changed(const HostTensor& t, std::int64_t index, double value) const {
    HostTensor out = t;
    out.set(index, value);
    return out;
  }

  LayerCase lc_;
  std::unique_ptr<LayerTensors> whole_;
  std::unique_ptr<EngineCache> cache_;
  std::unique_ptr<CacheCall> call_;
};

TEST_F(InferenceErrors, ValidCallRuns) {
  const Args a = valid();
  FSA_EXPECT_OK(nsa_prefill(a.config, a.inputs, a.cache, a.batch, a.o, a.branches));
  EXPECT_TRUE(all_finite(call_->o.to_double()));
}

TEST_F(InferenceErrors, OutputsAndPoolsSharingMemoryAreRejected) {
  // The outputs and the pools are written: none may share memory with an input, the batch or
  // another of them (the call would overwrite what it reads). Nothing is written.
  expect_rejected("o", [&](Args& a) { a.o.data = a.inputs.q.data; });
  expect_rejected("branches.o_swa", [&](Args& a) { a.branches.o_swa.data = a.branches.o_slc.data; });
  expect_rejected("cache.k_pages", [&](Args& a) { a.cache.k_pages.data = a.cache.v_pages.data; });
  expect_rejected("cache.k_tail", [&](Args& a) { a.cache.k_tail.data = a.inputs.k.data; });
  expect_rejected("branches.topk_idx", [&](Args& a) { a.branches.topk_idx.data = a.batch.block_table.data; });
}

TEST_F(InferenceErrors, BlockTableValues) {
  const std::int64_t width = cache_->max_pages, num_pages = cache_->shape.num_pages;
  const HostTensor past_end = changed(call_->block_table, 1 * width + 1, static_cast<double>(num_pages));
  const HostTensor negative = changed(call_->block_table, 0 * width + 0, -1);
  // Sequence 1 writes its page 1; sequence 0 writes its page 1 too: give both the same pool page.
  const HostTensor shared = changed(call_->block_table, 1 * width + 1, cache_->pages[0][1]);
  const HostTensor cmp_past_end =
      changed(call_->cmp_block_table, 1 * cache_->max_cmp_pages, static_cast<double>(cache_->shape.num_cmp_pages));
  expect_rejected("batch.block_table", [&](Args& a) { a.batch.block_table = past_end.view(); });
  expect_rejected("batch.block_table", [&](Args& a) { a.batch.block_table = negative.view(); });
  expect_rejected("batch.block_table", [&](Args& a) { a.batch.block_table = shared.view(); });
  expect_rejected("batch.cmp_block_table", [&](Args& a) { a.batch.cmp_block_table = cmp_past_end.view(); });
}

TEST_F(InferenceErrors, LengthsSlotsAndCapacity) {
  const std::int64_t capacity = cache_->max_pages * 32;
  const HostTensor negative = changed(call_->cache_seqlens, 0, -1);
  const HostTensor too_long = changed(call_->cache_seqlens, 1, static_cast<double>(capacity - 7));
  const HostTensor slot_past_end = changed(call_->slots, 2, static_cast<double>(cache_->shape.num_slots));
  const HostTensor slot_negative = changed(call_->slots, 0, -1);
  const HostTensor slot_shared = changed(call_->slots, 1, cache_->slots[0]);
  // One compressed page of 5 tokens per sequence: sequence 1 would hold 13.
  HostTensor narrow(DType::kInt32, {3, 1});
  for (std::int64_t b = 0; b < 3; ++b) narrow.set(b, call_->cmp_block_table.get(b * cache_->max_cmp_pages));
  expect_rejected("batch.cache_seqlens", [&](Args& a) { a.batch.cache_seqlens = negative.view(); });
  expect_rejected("batch.block_table", [&](Args& a) { a.batch.cache_seqlens = too_long.view(); });
  expect_rejected("batch.cache_seqlens", [&](Args& a) { a.batch.cache_seqlens = too_long.view(); });
  expect_rejected("batch.cmp_block_table", [&](Args& a) { a.batch.cmp_block_table = narrow.view(); });
  expect_rejected("batch.slots", [&](Args& a) { a.batch.slots = slot_past_end.view(); });
  expect_rejected("batch.slots", [&](Args& a) { a.batch.slots = slot_negative.view(); });
  expect_rejected("batch.slots", [&](Args& a) { a.batch.slots = slot_shared.view(); });
}

// A sequence without new tokens is skipped: its entries may hold anything.
TEST_F(InferenceErrors, SkippedSequenceEntriesAreNotRead) {
  const CacheCall skip = make_call(lc_, *whole_, *cache_, {5, 8, 0});
  HostTensor lengths = changed(skip.cache_seqlens, 2, -100), slots = changed(skip.slots, 2, 9999);
  HostTensor table = skip.block_table;
  for (std::int64_t j = 0; j < cache_->max_pages; ++j) table.set(2 * cache_->max_pages + j, -7);
  NsaCacheBatch batch = skip.batch();
  batch.cache_seqlens = lengths.view();
  batch.slots = slots.view();
  batch.block_table = table.view();
  FSA_EXPECT_OK(nsa_prefill(lc_.config, skip.inputs(), cache_->views(), batch, skip.o.view(), skip.branches()));
  FSA_EXPECT_OK(nsa_decode(lc_.config, skip.inputs(), cache_->views(), batch, skip.o.view(), skip.branches()));
}

TEST_F(InferenceErrors, DecodeTakesAtMostEightTokensPerSequence) {
  const CacheCall nine = make_call(lc_, *whole_, *cache_, {1, 9, 0});
  const NsaLayerInputs in = nine.inputs();
  const Status s = nsa_decode(lc_.config, in, cache_->views(), nine.batch(), nine.o.view(), nine.branches());
  expect_invalid(s, "cu_seqlens");
  EXPECT_NE(s.message().find("kMaxDecodeTokens"), std::string::npos) << s.to_string();
  FSA_EXPECT_OK(nsa_prefill(lc_.config, in, cache_->views(), nine.batch(), nine.o.view(), nine.branches()));
  EXPECT_TRUE(all_finite(nine.o.to_double()));
}

// Each pool with another dtype (fp64 for fp32 inputs), a wrong size of a dim the inputs fix, on
// another device, with a strided last dim.
TEST_F(InferenceErrors, PoolsDtypeShapeDeviceStride) {
  const EngineCache& c = *cache_;
  const struct {
    const char* name;
    const HostTensor& pool;
    int dim;  // Hkv, Dv, Hkv, num_cmp_pages (must match k_cmp_pages), ring rows
    TensorView NsaCache::*field;
  } pools[] = {{"cache.k_pages", c.k_pages, 2, &NsaCache::k_pages},
               {"cache.v_pages", c.v_pages, 3, &NsaCache::v_pages},
               {"cache.k_cmp_pages", c.k_cmp_pages, 2, &NsaCache::k_cmp_pages},
               {"cache.v_cmp_pages", c.v_cmp_pages, 0, &NsaCache::v_cmp_pages},
               {"cache.k_tail", c.k_tail, 1, &NsaCache::k_tail}};
  for (const auto& p : pools)
    expect_each_spoil_rejected(p.name, p.pool, DType::kFloat64, p.dim,
                               [&](Args& a, const TensorView& t) { a.cache.*p.field = t; });
  expect_rejected("cache.k_pages", [](Args& a) { a.cache.k_pages = TensorView{}; });
}

// Each batch tensor as fp32, with a wrong number of sequences, on another device, strided.
TEST_F(InferenceErrors, BatchDtypeShapeDeviceStride) {
  const CacheCall& c = *call_;
  const struct {
    const char* name;
    const HostTensor& values;
    TensorView NsaCacheBatch::*field;
  } tensors[] = {{"batch.block_table", c.block_table, &NsaCacheBatch::block_table},
                 {"batch.cmp_block_table", c.cmp_block_table, &NsaCacheBatch::cmp_block_table},
                 {"batch.cache_seqlens", c.cache_seqlens, &NsaCacheBatch::cache_seqlens},
                 {"batch.slots", c.slots, &NsaCacheBatch::slots}};
  for (const auto& b : tensors)
    expect_each_spoil_rejected(b.name, b.values, DType::kFloat32, 0,
                               [&](Args& a, const TensorView& t) { a.batch.*b.field = t; });
}

TEST_F(InferenceErrors, PageSizesAndTheKeyRing) {
  // Raw pages of 48 tokens hold a block of 32 across two pages.
  const HostTensor k48(DType::kFloat32, {8, 48, lc_.hkv, lc_.dqk}), v48(DType::kFloat32, {8, 48, lc_.hkv, lc_.dv});
  expect_rejected("cache.k_pages", [&](Args& a) {
    a.cache.k_pages = k48.view();
    a.cache.v_pages = v48.view();
  });
  const HostTensor v_other_pages(DType::kFloat32, {cache_->shape.num_pages + 1, 32, lc_.hkv, lc_.dv});
  expect_rejected("cache.v_pages", [&](Args& a) { a.cache.v_pages = v_other_pages.view(); });
  const HostTensor k_cmp_empty(DType::kFloat32, {4, 0, lc_.hkv, lc_.dqk});
  expect_rejected("cache.k_cmp_pages", [&](Args& a) { a.cache.k_cmp_pages = k_cmp_empty.view(); });
  // A ring of l rows cannot take a dropped speculative tail.
  const HostTensor ring_of_l(DType::kFloat32, {cache_->shape.num_slots, lc_.config.cmp_len, lc_.hkv, lc_.dqk});
  expect_rejected("cache.k_tail", [&](Args& a) { a.cache.k_tail = ring_of_l.view(); });
}

TEST_F(InferenceErrors, InputsOutputsAndConfig) {
  const HostTensor o_short(DType::kFloat32, {call_->o.sizes()[0], lc_.hq, lc_.dv + 1});
  const HostTensor topk_wide(DType::kInt32, {lc_.hkv, call_->o.sizes()[0], lc_.config.topk + 1});
  const HostTensor cu_decreasing = changed(call_->cu, 1, 14);  // [0, 14, 13, 16]
  expect_rejected("o", [&](Args& a) { a.o = o_short.view(); });
  expect_rejected("branches.o_slc", [&](Args& a) { a.branches.o_slc = o_short.view(); });
  expect_rejected("branches.topk_idx", [&](Args& a) { a.branches.topk_idx = topk_wide.view(); });
  expect_rejected("cu_seqlens", [&](Args& a) { a.inputs.cu_seqlens = cu_decreasing.view(); });
  expect_rejected("w_k", [&](Args& a) { a.inputs.w_k = TensorView{}; });
  expect_rejected("config.topk", [&](Args& a) { a.config.topk = 1; });
  expect_rejected("gates", [&](Args& a) { a.inputs.gates.device = Device::cuda(0); });
}

// Every tensor tagged as on a GPU (host memory, and a workspace of the queried size: nothing is
// allocated or launched): the call reaches the CUDA backend, which refuses this case's head dims
// (8/6) by name before it touches memory; a build without CUDA refuses the device. No GPU needed.
TEST(Inference, CudaTensorsReachTheCudaBackend) {
  auto rng = rng_for_test();
  LayerCase lc = small_case(DType::kBFloat16);
  lc.seqlens = {40, 9};
  const LayerTensors whole(lc, rng);
  const EngineCache cache = make_cache(lc, 32, 5, lc.seqlens, rng);
  const CacheCall call = make_call(lc, whole, cache, {6, 2});
  NsaLayerInputs in = call.inputs();
  NsaCache pools = cache.views();
  NsaCacheBatch batch = call.batch();
  NsaInferenceBranches branches = call.branches();
  TensorView o = call.o.view();
  for (TensorView* t : {&in.q, &in.k, &in.v, &in.cu_seqlens, &in.w_k, &in.pe_k, &in.w_v, &in.gates, &pools.k_pages,
                        &pools.v_pages, &pools.k_cmp_pages, &pools.v_cmp_pages, &pools.k_tail, &batch.block_table,
                        &batch.cmp_block_table, &batch.cache_seqlens, &batch.slots, &branches.o_cmp, &branches.o_slc,
                        &branches.o_swa, &branches.topk_idx, &o})
    t->device = Device::cuda(0);
  const NsaInferenceShape shape = NsaInferenceShape::of(in, pools, batch);
  for (const bool decode : {false, true}) {
    const std::size_t bytes =
        decode ? nsa_decode_workspace_bytes(lc.config, shape) : nsa_prefill_workspace_bytes(lc.config, shape);
    std::vector<unsigned char> memory(bytes + kWorkspaceAlignment);
    void* base = memory.data();
    std::size_t space = memory.size();
    const Workspace workspace{std::align(kWorkspaceAlignment, bytes, base, space), bytes};
    const Status s = decode ? nsa_decode(lc.config, in, pools, batch, o, branches, workspace)
                            : nsa_prefill(lc.config, in, pools, batch, o, branches, workspace);
    EXPECT_EQ(s.code(), StatusCode::kNotImplemented) << s.to_string();
    EXPECT_NE(s.message().find(decode ? "nsa_decode" : "nsa_prefill"), std::string::npos) << s.to_string();
  }
}

// ---- Size queries --------------------------------------------------------------------------------------

TEST(Inference, PoolBytesAndPages) {
  const NsaConfig config = small_config();  // l = 8, s = 4, B = 32
  EXPECT_EQ(nsa_cache_tail_rows(config), config.cmp_len + kMaxDecodeTokens - 1);
  for (const DType dtype : {DType::kBFloat16, DType::kFloat16, DType::kFloat32, DType::kFloat64}) {
    const NsaCacheShape shape{.heads_kv = 2, .head_dim_qk = 8, .head_dim_v = 6, .num_pages = 7, .page_size = 64,
                              .num_cmp_pages = 5, .cmp_page_size = 3, .num_slots = 4, .dtype = dtype};
    const std::size_t e = dtype_size(dtype);
    const NsaCacheBytes b = nsa_cache_bytes(config, shape);
    EXPECT_EQ(b.k_pages, 7 * 64 * 2 * 8 * e);
    EXPECT_EQ(b.v_pages, 7 * 64 * 2 * 6 * e);
    EXPECT_EQ(b.k_cmp_pages, 5 * 3 * 2 * 8 * e);
    EXPECT_EQ(b.v_cmp_pages, 5 * 3 * 2 * 6 * e);
    EXPECT_EQ(b.k_tail, 4 * 15 * 2 * 8 * e);
    EXPECT_EQ(b.total(), b.k_pages + b.v_pages + b.k_cmp_pages + b.v_cmp_pages + b.k_tail);
  }
  const NsaCacheShape valid{.heads_kv = 2, .head_dim_qk = 8, .head_dim_v = 6, .num_pages = 7, .page_size = 64,
                            .num_cmp_pages = 5, .cmp_page_size = 3, .num_slots = 4};
  EXPECT_GT(nsa_cache_bytes(config, valid).total(), 0u);
  NsaCacheShape s = valid;
  s.page_size = 48;  // not a multiple of B
  EXPECT_EQ(nsa_cache_bytes(config, s).total(), 0u);
  s = valid;
  s.heads_kv = 0;
  EXPECT_EQ(nsa_cache_bytes(config, s).total(), 0u);
  s = valid;
  s.cmp_page_size = 0;
  EXPECT_EQ(nsa_cache_bytes(config, s).total(), 0u);
  s = valid;
  s.dtype = DType::kFloat32;  // the GPU takes bf16 and fp16 only
  s.device = Device::cuda(0);
  EXPECT_EQ(nsa_cache_bytes(config, s).total(), 0u);
  s.dtype = DType::kBFloat16;
  EXPECT_GT(nsa_cache_bytes(config, s).total(), 0u);
  NsaConfig bad = config;
  bad.topk = 0;
  EXPECT_EQ(nsa_cache_bytes(bad, valid).total(), 0u);

  for (const auto [tokens, pages] : {std::pair{0, 0}, {1, 1}, {64, 1}, {65, 2}, {640, 10}, {-1, 0}})
    EXPECT_EQ(nsa_cache_pages(valid, tokens), pages) << tokens;
  // n_cmp(7) = 0, n_cmp(8) = 1, n_cmp(20) = 4, n_cmp(23) = 4, n_cmp(24) = 5 (l = 8, s = 4), 3 per page.
  for (const auto [tokens, pages] : {std::pair{7, 0}, {8, 1}, {20, 2}, {23, 2}, {24, 2}, {32, 3}, {-5, 0}})
    EXPECT_EQ(nsa_cache_cmp_pages(config, valid, tokens), pages) << tokens;
  EXPECT_EQ(nsa_cache_cmp_pages(bad, valid, 100), 0);
}

}  // namespace
}  // namespace fsa::test
