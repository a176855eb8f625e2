// nsa_prefill / nsa_decode: the pool size queries, validation of the new tokens, the cache and the
// batch (on the CPU also the batch's values: every page a call touches, every slot), and the route
// to a backend.
#include "fsa/cache.hpp"

#include <array>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "reference/inference.hpp"
#include "route.hpp"
#include "validate.hpp"

namespace fsa {

using detail::Arg;
using detail::AttnDims;
using detail::Dim;

namespace {

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// What a size query can check without tensors: the config and every field of the shape.
bool is_valid_shape(const NsaConfig& config, const NsaCacheShape& s) {
  const bool cpu_only = s.dtype == DType::kFloat32 || s.dtype == DType::kFloat64;
  const bool dtype_ok = s.dtype == DType::kBFloat16 || s.dtype == DType::kFloat16 ||
                        (cpu_only && s.device.kind == DeviceKind::kCPU);
  return config.validate().is_ok() && dtype_ok && s.heads_kv > 0 && s.head_dim_qk > 0 && s.head_dim_v > 0 &&
         s.num_pages >= 0 && s.page_size > 0 && s.page_size % config.block_size == 0 && s.num_cmp_pages >= 0 &&
         s.cmp_page_size > 0 && s.num_slots >= 0;
}

}  // namespace

int nsa_cache_tail_rows(const NsaConfig& config) { return config.cmp_len + kMaxDecodeTokens - 1; }

NsaCacheBytes nsa_cache_bytes(const NsaConfig& config, const NsaCacheShape& shape) {
  if (!is_valid_shape(config, shape)) return {};  // the calls name the invalid field
  const auto pool = [&](std::int64_t pages, std::int64_t rows, int dim) {
    return static_cast<std::size_t>(pages) * static_cast<std::size_t>(rows) * static_cast<std::size_t>(shape.heads_kv) *
           static_cast<std::size_t>(dim) * dtype_size(shape.dtype);
  };
  NsaCacheBytes bytes;
  bytes.k_pages = pool(shape.num_pages, shape.page_size, shape.head_dim_qk);
  bytes.v_pages = pool(shape.num_pages, shape.page_size, shape.head_dim_v);
  bytes.k_cmp_pages = pool(shape.num_cmp_pages, shape.cmp_page_size, shape.head_dim_qk);
  bytes.v_cmp_pages = pool(shape.num_cmp_pages, shape.cmp_page_size, shape.head_dim_v);
  bytes.k_tail = pool(shape.num_slots, nsa_cache_tail_rows(config), shape.head_dim_qk);
  return bytes;
}

std::int64_t nsa_cache_pages(const NsaCacheShape& shape, std::int64_t tokens) {
  if (shape.page_size <= 0 || tokens < 0) return 0;
  return ceil_div(tokens, shape.page_size);
}

std::int64_t nsa_cache_cmp_pages(const NsaConfig& config, const NsaCacheShape& shape, std::int64_t tokens) {
  if (!config.validate().is_ok() || shape.cmp_page_size <= 0 || tokens < 0) return 0;
  return ceil_div(compressed_length(tokens, config), shape.cmp_page_size);
}

namespace {

// ---- Shapes, dtypes, devices, strides ---------------------------------------------------------------

Status check_branches(const NsaConfig& config, const NsaInferenceBranches& br, const Arg& q, const AttnDims& dims) {
  const Arg outputs[] = {{"branches.o_cmp", br.o_cmp}, {"branches.o_slc", br.o_slc}, {"branches.o_swa", br.o_swa}};
  for (const Arg& out : outputs)
    if (out.view.defined()) FSA_RETURN_IF_ERROR(detail::check_layer_output(out, q, dims));
  if (!br.topk_idx.defined()) return Status::ok();
  const Arg topk{"branches.topk_idx", br.topk_idx};
  FSA_RETURN_IF_ERROR(detail::check_dtype(topk, DType::kInt32));
  FSA_RETURN_IF_ERROR(detail::check_same_device(topk, q));
  return detail::check_tensor(topk, {{dims.heads_kv, "Hkv"}, {dims.tokens, "N"}, {config.topk, "K"}});
}

// The pools hold q's dtype on q's device with the inputs' heads and head dims; raw pages are a
// whole number of selection blocks, so a selected block never straddles two pages.
Status check_cache(const NsaConfig& config, const NsaCache& cache, const Arg& q, const AttnDims& dims) {
  const Arg k{"cache.k_pages", cache.k_pages}, v{"cache.v_pages", cache.v_pages};
  const Arg k_cmp{"cache.k_cmp_pages", cache.k_cmp_pages}, v_cmp{"cache.v_cmp_pages", cache.v_cmp_pages};
  const Arg tail{"cache.k_tail", cache.k_tail};
  for (const Arg& pool : {k, v, k_cmp, v_cmp, tail}) {
    FSA_RETURN_IF_ERROR(detail::check_same_dtype(pool, q));
    FSA_RETURN_IF_ERROR(detail::check_same_device(pool, q));
  }
  const std::int64_t hkv = dims.heads_kv, dqk = dims.dim_qk, dv = dims.dim_v;
  FSA_RETURN_IF_ERROR(detail::check_tensor(
      k, {{Dim::kAnyDim, "num_pages"}, {Dim::kAnyDim, "page_size"}, {hkv, "Hkv"}, {dqk, "Dqk"}}));
  const std::int64_t page_size = cache.k_pages.size(1);
  if (page_size <= 0 || page_size % config.block_size != 0)
    return FSA_INVALID("cache.k_pages: expected page_size (dim 1) to be a positive multiple of config.block_size (B=" +
                       std::to_string(config.block_size) + "), got " + std::to_string(page_size));
  FSA_RETURN_IF_ERROR(detail::check_tensor(
      v, {{cache.k_pages.size(0), "num_pages"}, {page_size, "page_size"}, {hkv, "Hkv"}, {dv, "Dv"}}));
  FSA_RETURN_IF_ERROR(detail::check_tensor(
      k_cmp, {{Dim::kAnyDim, "num_cmp_pages"}, {Dim::kAnyDim, "cmp_page_size"}, {hkv, "Hkv"}, {dqk, "Dqk"}}));
  const std::int64_t cmp_page_size = cache.k_cmp_pages.size(1);
  if (cmp_page_size <= 0)
    return FSA_INVALID("cache.k_cmp_pages: expected a positive cmp_page_size (dim 1), got " +
                       std::to_string(cmp_page_size));
  FSA_RETURN_IF_ERROR(detail::check_tensor(v_cmp, {{cache.k_cmp_pages.size(0), "num_cmp_pages"},
                                                   {cmp_page_size, "cmp_page_size"},
                                                   {hkv, "Hkv"},
                                                   {dv, "Dv"}}));
  return detail::check_tensor(
      tail, {{Dim::kAnyDim, "num_slots"}, {nsa_cache_tail_rows(config), "nsa_cache_tail_rows(config)"}, {hkv, "Hkv"},
             {dqk, "Dqk"}});
}

Status check_batch(const NsaCacheBatch& batch, const Arg& q, std::int64_t nseq) {
  const std::pair<Arg, const char*> tables[] = {{{"batch.block_table", batch.block_table}, "max_pages"},
                                                 {{"batch.cmp_block_table", batch.cmp_block_table}, "max_cmp_pages"}};
  for (const auto& [table, width] : tables) {
    FSA_RETURN_IF_ERROR(detail::check_dtype(table, DType::kInt32));
    FSA_RETURN_IF_ERROR(detail::check_same_device(table, q));
    FSA_RETURN_IF_ERROR(detail::check_tensor(table, {{nseq, "nseq"}, {Dim::kAnyDim, width}}));
  }
  for (const Arg& per_seq : {Arg{"batch.cache_seqlens", batch.cache_seqlens}, Arg{"batch.slots", batch.slots}}) {
    FSA_RETURN_IF_ERROR(detail::check_dtype(per_seq, DType::kInt32));
    FSA_RETURN_IF_ERROR(detail::check_same_device(per_seq, q));
    FSA_RETURN_IF_ERROR(detail::check_tensor(per_seq, {{nseq, "nseq"}}));
  }
  return Status::ok();
}

// ---- Values (CPU) -----------------------------------------------------------------------------------

// An int32 host tensor of one or two dims, read through its strides.
struct Int32Values {
  const TensorView& view;
  std::int32_t operator()(std::int64_t i, std::int64_t j = 0) const {
    return view.ptr<const std::int32_t>()[i * view.stride(0) + (view.ndim > 1 ? j * view.stride(1) : 0)];
  }
};

// The pages of one pool that a call uses. Each page it writes must appear once among them:
// otherwise two sequences (or two pages of one) would write over each other, or one would read
// what another writes.
class PageUses {
 public:
  PageUses(const char* table_name, const TensorView& table, std::int64_t pool_pages)
      : name_(table_name), table_{table}, pool_pages_(pool_pages) {}

  // Entries [0, used) of sequence b's row; the call writes those from first_written on.
  Status add(std::int64_t b, std::int64_t used, std::int64_t first_written) {
    for (std::int64_t j = 0; j < used; ++j) {
      const std::int32_t page = table_(b, j);
      if (page < 0 || page >= pool_pages_)
        return FSA_INVALID(name_ + ": expected the pages sequence " + std::to_string(b) + " uses to be in [0, " +
                           std::to_string(pool_pages_) + ") (the pool's pages), got [" + std::to_string(b) + "][" +
                           std::to_string(j) + "] = " + std::to_string(page));
      ++uses_[page];
      if (j >= first_written) written_.push_back({page, b, j});
    }
    return Status::ok();
  }

  Status check_written_once() const {
    for (const auto& [page, b, j] : written_)
      if (uses_.at(static_cast<std::int32_t>(page)) > 1)
        return FSA_INVALID(name_ + ": page " + std::to_string(page) + " (entry [" + std::to_string(b) + "][" +
                           std::to_string(j) + "]) is written by this call and appears in another entry of it; a "
                           "page a call writes must belong to one sequence");
    return Status::ok();
  }

 private:
  std::string name_;
  Int32Values table_;
  std::int64_t pool_pages_;
  std::unordered_map<std::int32_t, int> uses_;
  std::vector<std::array<std::int64_t, 3>> written_;  // (page, sequence, entry)
};

Status check_decode_lengths(const TensorView& cu_seqlens) {
  const Int32Values cu{cu_seqlens};
  for (std::int64_t b = 0; b + 1 < cu_seqlens.size(0); ++b)
    if (cu(b + 1) - cu(b) > kMaxDecodeTokens)
      return FSA_INVALID("cu_seqlens: nsa_decode takes at most kMaxDecodeTokens = " + std::to_string(kMaxDecodeTokens) +
                         " new tokens per sequence, sequence " + std::to_string(b) + " has " +
                         std::to_string(cu(b + 1) - cu(b)) + " (use nsa_prefill)");
  return Status::ok();
}

// Every sequence with new tokens: its cached length, capacity, slot and the pages it touches.
Status check_batch_values(const NsaConfig& config, const TensorView& cu_seqlens, const NsaCache& cache,
                          const NsaCacheBatch& batch) {
  const Int32Values cu{cu_seqlens}, cached{batch.cache_seqlens}, slots{batch.slots};
  const std::int64_t page_size = cache.k_pages.size(1), cmp_page_size = cache.k_cmp_pages.size(1);
  const std::int64_t max_pages = batch.block_table.size(1), max_cmp_pages = batch.cmp_block_table.size(1);
  const std::int64_t num_slots = cache.k_tail.size(0);
  PageUses raw("batch.block_table", batch.block_table, cache.k_pages.size(0));
  PageUses compressed("batch.cmp_block_table", batch.cmp_block_table, cache.k_cmp_pages.size(0));
  std::unordered_map<std::int32_t, std::int64_t> sequence_of_slot;
  for (std::int64_t b = 0; b + 1 < cu_seqlens.size(0); ++b) {
    const std::int64_t fresh = cu(b + 1) - cu(b), P = cached(b), total = P + fresh;
    if (fresh == 0) continue;  // skipped: none of its entries is read
    const std::string seq = "sequence " + std::to_string(b);
    if (P < 0)
      return FSA_INVALID("batch.cache_seqlens: expected values >= 0, got [" + std::to_string(b) +
                         "] = " + std::to_string(P));
    if (total > INT32_MAX || ceil_div(total, page_size) > max_pages)
      return FSA_INVALID("batch.cache_seqlens: " + seq + " would hold " + std::to_string(P) + " + " +
                         std::to_string(fresh) + " tokens, more than its batch.block_table row holds (" +
                         std::to_string(max_pages) + " pages of " + std::to_string(page_size) + ")");
    const std::int64_t cmp_tokens = compressed_length(total, config);
    if (ceil_div(cmp_tokens, cmp_page_size) > max_cmp_pages)
      return FSA_INVALID("batch.cmp_block_table: " + seq + " would hold " + std::to_string(cmp_tokens) +
                         " compressed tokens (of batch.cache_seqlens + new = " + std::to_string(total) +
                         " tokens), more than its row holds (" + std::to_string(max_cmp_pages) + " pages of " +
                         std::to_string(cmp_page_size) + ")");
    FSA_RETURN_IF_ERROR(raw.add(b, ceil_div(total, page_size), P / page_size));
    FSA_RETURN_IF_ERROR(compressed.add(b, ceil_div(cmp_tokens, cmp_page_size),
                                       compressed_length(P, config) / cmp_page_size));
    const std::int32_t slot = slots(b);
    if (slot < 0 || slot >= num_slots)
      return FSA_INVALID("batch.slots: expected values in [0, " + std::to_string(num_slots) +
                         ") (cache.k_tail's slots), got [" + std::to_string(b) + "] = " + std::to_string(slot));
    if (const auto [it, fresh_slot] = sequence_of_slot.emplace(slot, b); !fresh_slot)
      return FSA_INVALID("batch.slots: sequences " + std::to_string(it->second) + " and " + std::to_string(b) +
                         " share slot " + std::to_string(slot));
  }
  FSA_RETURN_IF_ERROR(raw.check_written_once());
  return compressed.check_written_once();
}

Status check_call(bool decode, const NsaConfig& config, const NsaLayerInputs& inputs, const NsaCache& cache,
                  const NsaCacheBatch& batch, const TensorView& o, const NsaInferenceBranches& branches) {
  AttnDims dims;
  FSA_RETURN_IF_ERROR(detail::check_layer_inputs(config, inputs, &dims));
  const Arg q{"q", inputs.q};
  FSA_RETURN_IF_ERROR(detail::check_layer_output({"o", o}, q, dims));
  FSA_RETURN_IF_ERROR(check_branches(config, branches, q, dims));
  FSA_RETURN_IF_ERROR(check_cache(config, cache, q, dims));
  const std::int64_t nseq = inputs.cu_seqlens.size(0) - 1;
  FSA_RETURN_IF_ERROR(check_batch(batch, q, nseq));
  const bool on_cpu = detail::on_cpu(inputs.q);
  if (decode && on_cpu) FSA_RETURN_IF_ERROR(check_decode_lengths(inputs.cu_seqlens));
  // The part of the same rule a GPU can check without reading cu_seqlens.
  if (decode && dims.tokens > kMaxDecodeTokens * nseq)
    return FSA_INVALID("q: nsa_decode takes at most kMaxDecodeTokens = " + std::to_string(kMaxDecodeTokens) +
                       " new tokens per sequence, got N = " + std::to_string(dims.tokens) + " for " +
                       std::to_string(nseq) + " sequences");
  if (on_cpu) FSA_RETURN_IF_ERROR(check_batch_values(config, inputs.cu_seqlens, cache, batch));
  return Status::ok();
}

Status run(const char* op, bool decode, const NsaConfig& config, const NsaLayerInputs& inputs, const NsaCache& cache,
           const NsaCacheBatch& batch, const TensorView& o, const NsaInferenceBranches& branches,
           const Workspace& workspace) {
  FSA_RETURN_IF_ERROR(check_call(decode, config, inputs, cache, batch, o, branches));
  // Written: the outputs and the pools (which are also read); only read: the inputs and the batch.
  FSA_RETURN_IF_ERROR(detail::check_no_overlap(
      {{"o", o},
       {"branches.o_cmp", branches.o_cmp},
       {"branches.o_slc", branches.o_slc},
       {"branches.o_swa", branches.o_swa},
       {"branches.topk_idx", branches.topk_idx},
       {"cache.k_pages", cache.k_pages},
       {"cache.v_pages", cache.v_pages},
       {"cache.k_cmp_pages", cache.k_cmp_pages},
       {"cache.v_cmp_pages", cache.v_cmp_pages},
       {"cache.k_tail", cache.k_tail}},
      {{"q", inputs.q},
       {"k", inputs.k},
       {"v", inputs.v},
       {"cu_seqlens", inputs.cu_seqlens},
       {"w_k", inputs.w_k},
       {"pe_k", inputs.pe_k},
       {"w_v", inputs.w_v},
       {"gates", inputs.gates},
       {"batch.block_table", batch.block_table},
       {"batch.cmp_block_table", batch.cmp_block_table},
       {"batch.cache_seqlens", batch.cache_seqlens},
       {"batch.slots", batch.slots}},
      workspace));
  const Device device = inputs.q.device;
  const NsaInferenceShape shape = NsaInferenceShape::of(inputs, cache, batch);
  const std::size_t needed = detail::on_gpu_bytes(inputs.q, [&] {
    return FSA_CUDA_QUERY(decode ? cuda::nsa_decode_workspace_bytes(config, shape)
                                 : cuda::nsa_prefill_workspace_bytes(config, shape));
  });
  return detail::route(
      op, device, [&] { ref::nsa_prefill(config, inputs, cache, batch, o, branches); }, workspace, needed,
      [&](const Workspace& ws) {
        return FSA_CUDA_BACKEND(op, device,
                                decode ? cuda::nsa_decode(config, inputs, cache, batch, o, branches, ws)
                                       : cuda::nsa_prefill(config, inputs, cache, batch, o, branches, ws));
      });
}

}  // namespace

Status nsa_prefill(const NsaConfig& config, const NsaLayerInputs& inputs, const NsaCache& cache,
                   const NsaCacheBatch& batch, const TensorView& o, const NsaInferenceBranches& branches,
                   const Workspace& workspace) {
  return run("nsa_prefill", false, config, inputs, cache, batch, o, branches, workspace);
}

Status nsa_decode(const NsaConfig& config, const NsaLayerInputs& inputs, const NsaCache& cache,
                  const NsaCacheBatch& batch, const TensorView& o, const NsaInferenceBranches& branches,
                  const Workspace& workspace) {
  return run("nsa_decode", true, config, inputs, cache, batch, o, branches, workspace);
}

}  // namespace fsa
