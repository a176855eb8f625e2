#include "validate.hpp"

#include <algorithm>
#include <array>
#include <sstream>
#include <vector>

namespace fsa::detail {

namespace {

std::string dims_string(std::initializer_list<Dim> dims) {
  std::ostringstream out;
  out << '[';
  bool first = true;
  for (const Dim& d : dims) {
    out << (first ? "" : ", ") << d.symbol;
    if (d.value != Dim::kAnyDim) out << '=' << d.value;
    first = false;
  }
  out << ']';
  return out.str();
}

Status bad(const Arg& arg, const std::string& what) { return FSA_INVALID(std::string(arg.name) + ": " + what); }

// Non-negative strides whose dims, sorted by stride, never overlap: then distinct indices address
// distinct elements, which every output needs and every input is assumed to satisfy.
Status check_strides(const Arg& arg) {
  const TensorView& t = arg.view;
  // No elements, no layout: nothing is read or written through the strides, so none is refused.
  // Zero-size tensors come with arbitrary strides (row-major [Hq, 0] has stride 0, and autograd's
  // gradient of an empty output is an expanded [0, H, D] with strides [0, 0, 0], which torch
  // calls contiguous and so never copies).
  if (t.numel() == 0) return Status::ok();
  if (t.stride(t.ndim - 1) != 1 && t.size(t.ndim - 1) > 1)
    return bad(arg, "expected a contiguous last dimension (stride 1), got strides " +
                        [&] {
                          std::ostringstream o;
                          for (int d = 0; d < t.ndim; ++d) o << (d ? ", " : "[") << t.stride(d);
                          o << ']';
                          return o.str();
                        }());
  std::vector<std::array<std::int64_t, 2>> dims;  // (stride, size) of dims with size > 1
  for (int d = 0; d < t.ndim; ++d) {
    if (t.stride(d) < 0) return bad(arg, "expected non-negative strides, dim " + std::to_string(d) + " has stride " +
                                             std::to_string(t.stride(d)));
    if (t.size(d) > 1) dims.push_back({t.stride(d), t.size(d)});
  }
  std::sort(dims.begin(), dims.end());
  std::int64_t extent = 1;  // elements spanned by the dims seen so far
  for (const auto& [stride, size] : dims) {
    if (stride < extent)
      return bad(arg, "strides make elements overlap (stride " + std::to_string(stride) + " < span " +
                          std::to_string(extent) + " of the faster dims)");
    extent = stride * (size - 1) + extent;
  }
  return Status::ok();
}

}  // namespace

namespace {

// A dense tensor's (or the workspace's) bytes, or none when the overlap test cannot be exact.
struct Region {
  const char* name = nullptr;
  Device device{};
  std::uintptr_t begin = 0, end = 0;
  const TensorView* view = nullptr;  // null for the workspace
  bool known = false;
};

Region region_of(const Arg& arg) {
  Region r;
  r.name = arg.name;
  r.view = &arg.view;
  const TensorView& t = arg.view;
  if (!t.defined() || t.ndim <= 0 || t.data == nullptr || t.numel() <= 0) return r;
  std::vector<std::array<std::int64_t, 2>> dims;  // (stride, size) of dims with size > 1
  for (int d = 0; d < t.ndim; ++d)
    if (t.size(d) > 1) dims.push_back({t.stride(d), t.size(d)});
  std::sort(dims.begin(), dims.end());
  std::int64_t extent = 1;
  for (const auto& [stride, size] : dims) {
    if (stride != extent) return r;  // a gap (or an overlap, refused elsewhere): not provable by range
    extent *= size;
  }
  r.device = t.device;
  r.begin = reinterpret_cast<std::uintptr_t>(t.data);
  r.end = r.begin + static_cast<std::uintptr_t>(extent) * dtype_size(t.dtype);
  r.known = true;
  return r;
}

bool same_tensor(const Region& a, const Region& b) {
  if (a.view == nullptr || b.view == nullptr || a.begin != b.begin || a.end != b.end) return false;
  if (a.view->ndim != b.view->ndim || a.view->dtype != b.view->dtype) return false;
  for (int d = 0; d < a.view->ndim; ++d)
    if (a.view->size(d) != b.view->size(d) || a.view->stride(d) != b.view->stride(d)) return false;
  return true;
}

}  // namespace

Status check_no_overlap(const std::vector<Arg>& outputs, const std::vector<Arg>& inputs,
                        const Workspace& workspace, InPlace in_place) {
  std::vector<Region> outs, others;
  for (const Arg& a : outputs) outs.push_back(region_of(a));
  for (const Arg& a : inputs) others.push_back(region_of(a));
  const Region* device_of = nullptr;
  for (const Region& r : outs)
    if (r.known) device_of = &r;
  if (device_of != nullptr && workspace.data != nullptr && workspace.bytes > 0) {
    Region w;
    w.name = "workspace";
    w.device = device_of->device;
    w.begin = reinterpret_cast<std::uintptr_t>(workspace.data);
    w.end = w.begin + workspace.bytes;
    w.known = true;
    others.push_back(w);
  }
  for (std::size_t i = 0; i < outs.size(); ++i) {
    const Region& out = outs[i];
    if (!out.known) continue;
    auto clash = [&](const Region& other) {
      return other.known && other.device == out.device && other.begin < out.end && out.begin < other.end;
    };
    for (std::size_t j = i + 1; j < outs.size(); ++j)
      if (clash(outs[j]))
        return FSA_INVALID(std::string(out.name) + ": shares memory with " + outs[j].name +
                           " (two outputs of one call must not overlap; pass separate buffers)");
    for (const Region& other : others) {
      if (!clash(other)) continue;
      const bool allowed = in_place.output != nullptr && std::string(out.name) == in_place.output &&
                           std::string(other.name) == in_place.input && same_tensor(out, other);
      if (allowed) continue;
      return FSA_INVALID(std::string(out.name) + ": shares memory with " + other.name +
                         " (an output must not overlap an input or the workspace: the call would overwrite what it "
                         "reads; pass separate buffers" +
                         (in_place.output != nullptr && std::string(out.name) == in_place.output
                              ? std::string(", or ") + in_place.input + " itself for in place"
                              : std::string()) +
                         ")");
    }
  }
  return Status::ok();
}

Status check_tensor(const Arg& arg, std::initializer_list<Dim> dims) {
  const TensorView& t = arg.view;
  if (!t.defined()) return bad(arg, "expected a tensor of shape " + dims_string(dims) + ", got none");
  if (t.ndim < 0) return bad(arg, "sizes and strides have different lengths");
  if (t.ndim != static_cast<int>(dims.size()))
    return bad(arg, "expected " + std::to_string(dims.size()) + " dims " + dims_string(dims) + ", got " +
                        std::to_string(t.ndim) + " dims " + t.shape_string());
  int d = 0;
  for (const Dim& want : dims) {
    if (t.size(d) < 0) return bad(arg, "negative size in " + t.shape_string());
    if (want.value != Dim::kAnyDim && t.size(d) != want.value)
      return bad(arg, "expected shape " + dims_string(dims) + ", got " + t.shape_string() + " (dim " +
                          std::to_string(d) + " is " + want.symbol + ")");
    ++d;
  }
  FSA_RETURN_IF_ERROR(check_strides(arg));
  if (t.numel() > 0 && t.data == nullptr) return bad(arg, "null data pointer for a non-empty tensor");
  if (t.device.kind == DeviceKind::kCUDA && t.device.index < 0)
    return bad(arg, "invalid CUDA device index " + std::to_string(t.device.index));
  return Status::ok();
}

Status check_float_dtype(const Arg& arg) {
  const DType d = arg.view.dtype;
  if (d == DType::kBFloat16 || d == DType::kFloat16) return Status::ok();
  if ((d == DType::kFloat32 || d == DType::kFloat64) && arg.view.device.kind == DeviceKind::kCPU) return Status::ok();
  if (d == DType::kFloat32 || d == DType::kFloat64)
    return bad(arg, std::string("expected bf16 or fp16 on ") + device_name(arg.view.device) + ", got " + dtype_name(d) +
                        " (fp32/fp64 are accepted by the CPU reference only)");
  return bad(arg, std::string("expected a floating dtype (bf16, fp16; fp32/fp64 on the CPU), got ") + dtype_name(d));
}

Status check_dtype(const Arg& arg, DType expected) {
  if (arg.view.dtype != expected)
    return bad(arg, std::string("expected dtype ") + dtype_name(expected) + ", got " + dtype_name(arg.view.dtype));
  return Status::ok();
}

Status check_same_dtype(const Arg& arg, const Arg& reference) {
  if (arg.view.dtype != reference.view.dtype)
    return bad(arg, std::string("expected dtype ") + dtype_name(reference.view.dtype) + " (that of " + reference.name +
                        "), got " + dtype_name(arg.view.dtype));
  return Status::ok();
}

Status check_same_device(const Arg& arg, const Arg& reference) {
  if (arg.view.device != reference.view.device)
    return bad(arg, "expected device " + device_name(reference.view.device) + " (that of " + reference.name + "), got " +
                        device_name(arg.view.device));
  return Status::ok();
}

Status check_cu_seqlens(const Arg& arg, std::int64_t total, const char* total_symbol, bool exact) {
  FSA_RETURN_IF_ERROR(check_dtype(arg, DType::kInt32));
  FSA_RETURN_IF_ERROR(check_tensor(arg, {{Dim::kAnyDim, "nseq+1"}}));
  const TensorView& t = arg.view;
  if (t.size(0) < 1) return bad(arg, "expected at least one entry (nseq+1 >= 1), got 0");
  if (total > INT32_MAX) return bad(arg, "total tokens " + std::to_string(total) + " exceed the int32 range");
  if (t.device.kind != DeviceKind::kCPU) return Status::ok();
  const std::int32_t* cu = t.ptr<const std::int32_t>();
  const std::int64_t stride = t.stride(0);
  if (cu[0] != 0) return bad(arg, "expected cu_seqlens[0] = 0, got " + std::to_string(cu[0]));
  for (std::int64_t b = 1; b < t.size(0); ++b) {
    if (cu[b * stride] < cu[(b - 1) * stride])
      return bad(arg, "expected non-decreasing values, got [" + std::to_string(b - 1) + "] = " +
                          std::to_string(cu[(b - 1) * stride]) + " > [" + std::to_string(b) + "] = " +
                          std::to_string(cu[b * stride]));
  }
  const std::int64_t last = cu[(t.size(0) - 1) * stride];
  if (total >= 0 && (exact ? last != total : last > total))
    return bad(arg, std::string("expected the last value to ") + (exact ? "equal " : "be at most ") + total_symbol +
                        " = " + std::to_string(total) + ", got " + std::to_string(last));
  return Status::ok();
}

Status check_cu_cmp(const Arg& cu_cmp, const TensorView& cu_seqlens, const NsaConfig& config,
                    std::int64_t compressed_rows) {
  FSA_RETURN_IF_ERROR(check_dtype(cu_cmp, DType::kInt32));
  FSA_RETURN_IF_ERROR(check_tensor(cu_cmp, {{cu_seqlens.size(0), "nseq+1"}}));
  if (cu_cmp.view.device != cu_seqlens.device)
    return bad(cu_cmp, "expected the device of cu_seqlens (" + device_name(cu_seqlens.device) + "), got " +
                           device_name(cu_cmp.view.device));
  if (cu_cmp.view.device.kind != DeviceKind::kCPU) return Status::ok();
  const std::int32_t* c = cu_cmp.view.ptr<const std::int32_t>();
  const std::int32_t* s = cu_seqlens.ptr<const std::int32_t>();
  std::int64_t expected = 0;
  for (std::int64_t b = 0; b < cu_seqlens.size(0); ++b) {
    if (b > 0) {
      const std::int64_t n = s[b * cu_seqlens.stride(0)] - s[(b - 1) * cu_seqlens.stride(0)];
      expected += compressed_length(n, config);
    }
    if (c[b * cu_cmp.view.stride(0)] != expected)
      return bad(cu_cmp, "expected cu_cmp[" + std::to_string(b) + "] = " + std::to_string(expected) +
                             " (from cu_seqlens, l=" + std::to_string(config.cmp_len) + ", s=" +
                             std::to_string(config.cmp_stride) + "), got " +
                             std::to_string(c[b * cu_cmp.view.stride(0)]) + "; compute it with compressed_cu_seqlens");
  }
  if (expected > compressed_rows)
    return bad(cu_cmp, "compressed tensors hold " + std::to_string(compressed_rows) + " rows but cu_cmp needs " +
                           std::to_string(expected));
  return Status::ok();
}

Status check_qkv(const Arg& q, const Arg& k, const Arg& v, std::int64_t kv_rows, AttnDims* dims) {
  FSA_RETURN_IF_ERROR(check_float_dtype(q));
  FSA_RETURN_IF_ERROR(check_tensor(q, {{Dim::kAnyDim, "N"}, {Dim::kAnyDim, "Hq"}, {Dim::kAnyDim, "Dqk"}}));
  const std::int64_t n = q.view.size(0), hq = q.view.size(1), dqk = q.view.size(2);
  const char* rows = kv_rows == Dim::kAnyDim ? "Ncmp" : "N";
  FSA_RETURN_IF_ERROR(check_same_dtype(k, q));
  FSA_RETURN_IF_ERROR(check_same_device(k, q));
  FSA_RETURN_IF_ERROR(check_tensor(k, {{kv_rows, rows}, {Dim::kAnyDim, "Hkv"}, {dqk, "Dqk"}}));
  const std::int64_t nk = k.view.size(0), hkv = k.view.size(1);
  FSA_RETURN_IF_ERROR(check_same_dtype(v, q));
  FSA_RETURN_IF_ERROR(check_same_device(v, q));
  FSA_RETURN_IF_ERROR(check_tensor(v, {{nk, rows}, {hkv, "Hkv"}, {Dim::kAnyDim, "Dv"}}));
  if (hq <= 0 || hkv <= 0) return bad(q, "expected at least one query and one key/value head");
  if (hq % hkv != 0)
    return bad(q, "expected Hq to be a multiple of Hkv (Hq % Hkv == 0), got Hq=" + std::to_string(hq) +
                      " Hkv=" + std::to_string(hkv));
  if (dqk <= 0 || v.view.size(2) <= 0) return bad(q, "expected positive head dims");
  dims->tokens = n;
  dims->heads_q = static_cast<int>(hq);
  dims->heads_kv = static_cast<int>(hkv);
  dims->dim_qk = static_cast<int>(dqk);
  dims->dim_v = static_cast<int>(v.view.size(2));
  return Status::ok();
}

Status not_implemented_on(Device device, const char* op) {
  return FSA_ERROR(StatusCode::kNotImplemented,
                   std::string(op) + ": not implemented on CUDA yet (device " + device_name(device) +
                       "); run it on the CPU reference");
}

}  // namespace fsa::detail

namespace fsa::detail {

Status check_like(const Arg& arg, const Arg& reference) {
  const TensorView& r = reference.view;
  FSA_RETURN_IF_ERROR(check_same_dtype(arg, reference));
  FSA_RETURN_IF_ERROR(check_same_device(arg, reference));
  if (!arg.view.defined())
    return FSA_INVALID(std::string(arg.name) + ": expected a tensor shaped like " + reference.name + " " +
                       r.shape_string() + ", got none");
  if (arg.view.ndim != r.ndim)
    return FSA_INVALID(std::string(arg.name) + ": expected the shape of " + reference.name + " " + r.shape_string() +
                       ", got " + arg.view.shape_string());
  for (int d = 0; d < r.ndim; ++d)
    if (arg.view.size(d) != r.size(d))
      return FSA_INVALID(std::string(arg.name) + ": expected the shape of " + reference.name + " " +
                         r.shape_string() + ", got " + arg.view.shape_string());
  switch (r.ndim) {
    case 1: return check_tensor(arg, {{r.size(0), "d0"}});
    case 2: return check_tensor(arg, {{r.size(0), "d0"}, {r.size(1), "d1"}});
    case 3: return check_tensor(arg, {{r.size(0), "d0"}, {r.size(1), "d1"}, {r.size(2), "d2"}});
    default: return check_tensor(arg, {{r.size(0), "d0"}, {r.size(1), "d1"}, {r.size(2), "d2"}, {r.size(3), "d3"}});
  }
}

Status check_lse(const Arg& lse, std::int64_t heads_q, std::int64_t tokens, const Arg& reference) {
  FSA_RETURN_IF_ERROR(check_dtype(lse, DType::kFloat32));
  FSA_RETURN_IF_ERROR(check_same_device(lse, reference));
  return check_tensor(lse, {{heads_q, "Hq"}, {tokens, "N"}});
}

namespace {

// A parameter of the compression: required (or forbidden) by the config's CompressionKind when
// `required_for_linear`, else optional.
Status check_param(const NsaConfig& config, const char* name, const TensorView& t, const Arg& q,
                   std::initializer_list<Dim> dims, bool required_for_linear) {
  const Arg a{name, t};
  if (config.compression == CompressionKind::kMean && required_for_linear) {
    if (t.defined()) return FSA_INVALID(std::string(name) + ": expected none for CompressionKind::kMean");
    return Status::ok();
  }
  if (!t.defined()) {
    if (required_for_linear) return FSA_INVALID(std::string(name) + ": expected a tensor for CompressionKind::kLinear");
    return Status::ok();
  }
  FSA_RETURN_IF_ERROR(check_same_dtype(a, q));
  FSA_RETURN_IF_ERROR(check_same_device(a, q));
  return check_tensor(a, dims);
}

}  // namespace

Status check_layer_inputs(const NsaConfig& config, const NsaLayerInputs& in, AttnDims* dims) {
  FSA_RETURN_IF_ERROR(config.validate());
  const Arg q{"q", in.q};
  FSA_RETURN_IF_ERROR(check_qkv(q, {"k", in.k}, {"v", in.v}, in.q.ndim == 3 ? in.q.size(0) : 0, dims));
  if (config.rope.enabled && dims->dim_qk % 2 != 0)
    return FSA_INVALID("q: expected an even Dqk for RoPE, got " + std::to_string(dims->dim_qk));
  const Arg cu{"cu_seqlens", in.cu_seqlens};
  FSA_RETURN_IF_ERROR(check_same_device(cu, q));
  FSA_RETURN_IF_ERROR(check_cu_seqlens(cu, dims->tokens, "N (q.size(0))"));
  const std::int64_t l = config.cmp_len, hkv = dims->heads_kv, dqk = dims->dim_qk, dv = dims->dim_v;
  FSA_RETURN_IF_ERROR(check_param(config, "w_k", in.w_k, q, {{hkv, "Hkv"}, {l * dqk, "l*Dqk"}, {dqk, "Dqk"}}, true));
  FSA_RETURN_IF_ERROR(check_param(config, "w_v", in.w_v, q, {{hkv, "Hkv"}, {l * dv, "l*Dv"}, {dv, "Dv"}}, true));
  FSA_RETURN_IF_ERROR(check_param(config, "pe_k", in.pe_k, q, {{hkv, "Hkv"}, {l, "l"}, {dqk, "Dqk"}}, false));
  const Arg g{"gates", in.gates};
  FSA_RETURN_IF_ERROR(check_same_dtype(g, q));
  FSA_RETURN_IF_ERROR(check_same_device(g, q));
  if (config.gate_mode == GateMode::kPerHead)
    return check_tensor(g, {{dims->tokens, "N"}, {dims->heads_q, "Hq"}, {3, "3"}});
  return check_tensor(g, {{dims->tokens, "N"}, {3, "3"}});
}

Status check_layer_output(const Arg& out, const Arg& q, const AttnDims& dims) {
  FSA_RETURN_IF_ERROR(check_same_dtype(out, q));
  FSA_RETURN_IF_ERROR(check_same_device(out, q));
  return check_tensor(out, {{dims.tokens, "N"}, {dims.heads_q, "Hq"}, {dims.dim_v, "Dv"}});
}

}  // namespace fsa::detail
