// nsa_prefill / nsa_decode on the CPU: per sequence of P cached tokens and c new ones (positions
// P..P+c-1), compress the windows the new tokens complete, append the new tokens to the cache, read
// the whole sequence back and run the layer's branches for the new tokens (branches_forward). The
// keys are read back from the pools after the writes, in the pools' dtype, so every output depends
// only on the tokens, not on how a sequence was cut into calls.
#include "inference.hpp"

#include <algorithm>
#include <vector>

#include "reference.hpp"
#include "tensor_io.hpp"

namespace fsa::ref {

namespace {

// Rows [first, first + count) of page `page` of a pool [pages, rows, H, D], as a [count, H, D] view.
TensorView page_rows(const TensorView& pool, std::int64_t page, std::int64_t first, std::int64_t count) {
  TensorView view = pool;
  const std::int64_t offset = page * pool.stride(0) + first * pool.stride(1);
  view.data = static_cast<unsigned char*>(pool.data) + offset * static_cast<std::int64_t>(dtype_size(pool.dtype));
  view.ndim = 3;
  view.sizes = {count, pool.size(2), pool.size(3), 0};
  view.strides = {pool.stride(1), pool.stride(2), pool.stride(3), 0};
  return view;
}

// Where the tokens of one sequence live in a pool: position p at row p % rows of page
// pages[(p / rows) * page_step], rows = the pool's dim 1. A block table row has page_step 1; the key
// ring is a pool with one page per slot, every position of the sequence in its slot (page_step 0).
struct PagedSequence {
  const TensorView* pool;
  const std::int32_t* pages;
  std::int64_t page_step;

  std::int64_t row_elements() const { return pool->size(2) * pool->size(3); }

  // fn(view, first position) for each run of positions [begin, end) that stays in one page.
  template <class Fn>
  void for_each_run(std::int64_t begin, std::int64_t end, Fn&& fn) const {
    const std::int64_t rows = pool->size(1);
    for (std::int64_t p = begin; p < end;) {
      const std::int64_t row = p % rows, count = std::min(end - p, rows - row);
      fn(page_rows(*pool, pages[(p / rows) * page_step], row, count), p);
      p += count;
    }
  }

  // Positions [begin, end) into `out`, contiguous rows of the compute type.
  template <class T>
  void read(std::int64_t begin, std::int64_t end, T* out) const {
    for_each_run(begin, end, [&](const TensorView& view, std::int64_t first) {
      const std::vector<T> rows = load<T>(view);
      std::copy(rows.begin(), rows.end(), out + (first - begin) * row_elements());
    });
  }

  // Positions [begin, end) from `in`, contiguous rows, converted to the pool's dtype.
  template <class T>
  void write(std::int64_t begin, std::int64_t end, const T* in) const {
    for_each_run(begin, end, [&](const TensorView& view, std::int64_t first) {
      const T* rows = in + (first - begin) * row_elements();
      store(std::vector<T>(rows, rows + view.numel()), view);
    });
  }
};

// What one call works on: the batch's tables on the host and the sequences' extents.
struct Call {
  const NsaCache* cache = nullptr;
  HeadDims dims;
  std::vector<std::int64_t> cached;  // P of each sequence
  Varlen news;                       // c of each sequence: rows of q, k, v, gates and the outputs
  Varlen whole;                      // P + c (0 for a skipped sequence): rows of the keys read back
  Varlen whole_cmp;                  // n_cmp(P + c): rows of the compressed keys read back
  std::vector<std::int32_t> block_table, cmp_block_table, slots;
  std::int64_t max_pages = 0, max_cmp_pages = 0;

  RowPositions new_rows() const { return {&news, cached}; }
  std::int64_t total(int b) const { return cached[static_cast<std::size_t>(b)] + news.length(b); }

  PagedSequence raw(const TensorView& pool, int b) const { return {&pool, block_table.data() + b * max_pages, 1}; }
  PagedSequence compressed(const TensorView& pool, int b) const {
    return {&pool, cmp_block_table.data() + b * max_cmp_pages, 1};
  }
  PagedSequence key_ring(int b) const { return {&cache->k_tail, slots.data() + b, 0}; }
};

Call describe_call(const NsaConfig& config, const NsaLayerInputs& in, const NsaCache& cache,
                   const NsaCacheBatch& batch) {
  Call call;
  call.cache = &cache;
  call.dims = {static_cast<int>(in.q.size(1)), static_cast<int>(in.k.size(1)), static_cast<int>(in.q.size(2)),
               static_cast<int>(in.v.size(2))};
  call.news.cu = load_int32(in.cu_seqlens);
  for (const std::int32_t p : load_int32(batch.cache_seqlens)) call.cached.push_back(p);
  for (int b = 0; b < call.news.num_seqs(); ++b) {
    // A sequence without new tokens is skipped: none of its entries is read.
    const std::int64_t length = call.news.length(b) > 0 ? call.total(b) : 0;
    call.whole.cu.push_back(static_cast<std::int32_t>(call.whole.cu.back() + length));
  }
  call.whole_cmp = compressed_varlen(call.whole, config);
  call.block_table = load_int32(batch.block_table);
  call.cmp_block_table = load_int32(batch.cmp_block_table);
  call.slots = load_int32(batch.slots);
  call.max_pages = batch.block_table.size(1);
  call.max_cmp_pages = batch.cmp_block_table.size(1);
  return call;
}

template <class T>
std::vector<T> rotated(const NsaConfig& config, const RowPositions& rows, int position_stride, int heads, int dim,
                       std::vector<T> x) {
  if (config.rope.enabled) rope_apply<T>(config.rope, rows, position_stride, heads, dim, x.data(), x.data(), false);
  return x;
}

// The compressed tokens the new tokens complete: [n_cmp(P), n_cmp(P + c)) of each sequence.
template <class T>
struct NewCompressed {
  Varlen tokens;                    // their rows
  std::vector<std::int64_t> first;  // n_cmp(P) of each sequence
  std::vector<T> k, v;              // k rotated at i*s
};

// Rows [begin, P + c) of sequence b, begin <= P: the positions before P from the cache
// (`cached`), the new ones from the chunk's rows `fresh`.
template <class T>
void gather_window_rows(const Call& call, int b, std::int64_t begin, const PagedSequence& cached, const T* fresh,
                        T* out) {
  const std::int64_t P = call.cached[static_cast<std::size_t>(b)], row = cached.row_elements();
  cached.read(begin, P, out);
  const T* new_rows = fresh + call.news.start(b) * row;
  std::copy(new_rows, new_rows + call.news.length(b) * row, out + (P - begin) * row);
}

// Windows start at multiples of s, so the first new token i = n_cmp(P) starts at i*s > P - l: the
// positions it needs before P are in the key ring (the last l - 1 positions at least) and in the
// raw value pages, which hold values exactly as given (values are never rotated).
template <class T>
NewCompressed<T> compress_new_tokens(const NsaConfig& config, const Call& call, const NsaLayerInputs& in,
                                     const std::vector<T>& k, const std::vector<T>& v) {
  const HeadDims d = call.dims;
  const std::int64_t s = config.cmp_stride;
  NewCompressed<T> out;
  Varlen windows;  // per sequence, the rows [n_cmp(P) * s, P + c) when a window completes, else none
  for (int b = 0; b < call.news.num_seqs(); ++b) {
    const std::int64_t end = call.whole.length(b);  // P + c, or 0 for a skipped sequence
    const std::int64_t first = compressed_length(call.cached[static_cast<std::size_t>(b)], config);
    const std::int64_t last = compressed_length(end, config);
    out.first.push_back(first);
    windows.cu.push_back(static_cast<std::int32_t>(windows.cu.back() + (last > first ? end - first * s : 0)));
  }
  out.tokens = compressed_varlen(windows, config);
  std::vector<T> k_windows(static_cast<std::size_t>(windows.total() * d.hkv * d.dqk));
  std::vector<T> v_windows(static_cast<std::size_t>(windows.total() * d.hkv * d.dv));
  for (int b = 0; b < windows.num_seqs(); ++b) {
    if (windows.length(b) == 0) continue;
    const std::int64_t begin = out.first[static_cast<std::size_t>(b)] * s;
    const std::int64_t row0 = windows.start(b);
    gather_window_rows(call, b, begin, call.key_ring(b), k.data(), k_windows.data() + row0 * d.hkv * d.dqk);
    gather_window_rows(call, b, begin, call.raw(call.cache->v_pages, b), v.data(),
                       v_windows.data() + row0 * d.hkv * d.dv);
  }
  const auto w_k = load<T>(in.w_k), pe_k = load<T>(in.pe_k), w_v = load<T>(in.w_v);
  std::vector<T> k_cmp(static_cast<std::size_t>(out.tokens.total() * d.hkv * d.dqk));
  out.v.resize(static_cast<std::size_t>(out.tokens.total() * d.hkv * d.dv));
  compress_forward<T>(config, windows, out.tokens, d.hkv, d.dqk, d.dqk, k_windows.data(),
                      w_k.empty() ? nullptr : w_k.data(), pe_k.empty() ? nullptr : pe_k.data(), k_cmp.data());
  compress_forward<T>(config, windows, out.tokens, d.hkv, d.dv, d.dv, v_windows.data(),
                      w_v.empty() ? nullptr : w_v.data(), nullptr, out.v.data());
  out.k = rotated(config, RowPositions{&out.tokens, out.first}, config.cmp_stride, d.hkv, d.dqk, std::move(k_cmp));
  return out;
}

// Writes the new tokens into the cache: rotated keys and values into the raw pages, the new
// compressed tokens into the compressed pages, pre-RoPE keys into the ring.
template <class T>
void append_new_tokens(const Call& call, const std::vector<T>& k_rot, const std::vector<T>& v,
                       const std::vector<T>& k, const NewCompressed<T>& cmp) {
  const NsaCache& cache = *call.cache;
  const HeadDims d = call.dims;
  const std::int64_t ring_rows = cache.k_tail.size(1);
  for (int b = 0; b < call.news.num_seqs(); ++b) {
    if (call.news.length(b) == 0) continue;
    const std::int64_t P = call.cached[static_cast<std::size_t>(b)], end = call.total(b), row0 = call.news.start(b);
    call.raw(cache.k_pages, b).write(P, end, k_rot.data() + row0 * d.hkv * d.dqk);
    call.raw(cache.v_pages, b).write(P, end, v.data() + row0 * d.hkv * d.dv);
    const std::int64_t first = cmp.first[static_cast<std::size_t>(b)], last = first + cmp.tokens.length(b);
    const std::int64_t cmp_row0 = cmp.tokens.start(b);
    call.compressed(cache.k_cmp_pages, b).write(first, last, cmp.k.data() + cmp_row0 * d.hkv * d.dqk);
    call.compressed(cache.v_cmp_pages, b).write(first, last, cmp.v.data() + cmp_row0 * d.hkv * d.dv);
    // A chunk longer than the ring overwrites its own first rows: only its last positions stay.
    const std::int64_t ring_begin = std::max(P, end - ring_rows);
    call.key_ring(b).write(ring_begin, end, k.data() + (row0 + ring_begin - P) * d.hkv * d.dqk);
  }
}

// The whole sequences after the call, read back from the cache: rows of call.whole / whole_cmp.
template <class T>
struct CachedSequences {
  std::vector<T> k, v, k_cmp, v_cmp;
};

template <class T>
CachedSequences<T> read_back(const Call& call) {
  const NsaCache& cache = *call.cache;
  const HeadDims d = call.dims;
  CachedSequences<T> out;
  out.k.resize(static_cast<std::size_t>(call.whole.total() * d.hkv * d.dqk));
  out.v.resize(static_cast<std::size_t>(call.whole.total() * d.hkv * d.dv));
  out.k_cmp.resize(static_cast<std::size_t>(call.whole_cmp.total() * d.hkv * d.dqk));
  out.v_cmp.resize(static_cast<std::size_t>(call.whole_cmp.total() * d.hkv * d.dv));
  for (int b = 0; b < call.whole.num_seqs(); ++b) {
    const std::int64_t raw = call.whole.start(b), cmp = call.whole_cmp.start(b);
    call.raw(cache.k_pages, b).read(0, call.whole.length(b), out.k.data() + raw * d.hkv * d.dqk);
    call.raw(cache.v_pages, b).read(0, call.whole.length(b), out.v.data() + raw * d.hkv * d.dv);
    call.compressed(cache.k_cmp_pages, b).read(0, call.whole_cmp.length(b), out.k_cmp.data() + cmp * d.hkv * d.dqk);
    call.compressed(cache.v_cmp_pages, b).read(0, call.whole_cmp.length(b), out.v_cmp.data() + cmp * d.hkv * d.dv);
  }
  return out;
}

template <class T>
void prefill_typed(const NsaConfig& config, const NsaLayerInputs& in, const NsaCache& cache,
                   const NsaCacheBatch& batch, const TensorView& o_view, const NsaInferenceBranches& branches) {
  const Call call = describe_call(config, in, cache, batch);
  const HeadDims d = call.dims;
  const auto q = load<T>(in.q), k = load<T>(in.k), v = load<T>(in.v), gates = load<T>(in.gates);
  // 1. The new compressed tokens, before the new tokens take over ring rows their windows read.
  const NewCompressed<T> cmp = compress_new_tokens(config, call, in, k, v);
  // 2. The new tokens into the cache, keys rotated at their positions.
  append_new_tokens(call, rotated(config, call.new_rows(), 1, d.hkv, d.dqk, k), v, k, cmp);
  // 3. The layer's branches for the new tokens over the whole sequences as the cache holds them.
  const CachedSequences<T> seqs = read_back<T>(call);
  const std::vector<T> q_rot = rotated(config, call.new_rows(), 1, d.hq, d.dqk, q);
  const BranchOutputs<T> br = branches_forward<T>(config, call.new_rows(), call.whole, call.whole_cmp, d, q_rot.data(),
                                                  seqs.k.data(), seqs.v.data(), seqs.k_cmp.data(), seqs.v_cmp.data());
  // 4. Gates.
  std::vector<T> o(br.o_cmp.size());
  combine_forward<T>(call.news.total(), d.hq, d.dv, config.gate_mode == GateMode::kShared, gates.data(),
                     br.o_cmp.data(), br.o_slc.data(), br.o_swa.data(), o.data());
  store(o, o_view);
  store(br.o_cmp, branches.o_cmp);
  store(br.o_slc, branches.o_slc);
  store(br.o_swa, branches.o_swa);
  store_int32(br.topk, branches.topk_idx);
}

}  // namespace

void nsa_prefill(const NsaConfig& config, const NsaLayerInputs& inputs, const NsaCache& cache,
                 const NsaCacheBatch& batch, const TensorView& o, const NsaInferenceBranches& branches) {
  if (inputs.q.dtype == DType::kFloat64) {
    prefill_typed<double>(config, inputs, cache, batch, o, branches);
  } else {
    prefill_typed<float>(config, inputs, cache, batch, o, branches);
  }
}

}  // namespace fsa::ref
