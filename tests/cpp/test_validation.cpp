// Argument validation of every public op: each bad input returns kInvalidArgument with a message
// that starts with the offending argument's name, and never crashes. Starting from one set of
// valid inputs, the tests break one argument at a time.
#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace fsa::test {
namespace {

using Views = std::map<std::string, TensorView>;

// Invalid argument, and the message starts with the name as a whole word ("k" is not satisfied
// by "k_cmp: ...", "config.topk" is by "config.topk (K): ...").
void expect_names(const Status& status, const std::string& name) {
  expect_invalid(status, name);
  const std::string& message = status.message();
  const bool starts_with_name = message.rfind(name, 0) == 0 &&
                                (message.size() == name.size() || message[name.size()] == ':' ||
                                 message[name.size()] == ' ');
  EXPECT_TRUE(starts_with_name) << "message does not start with '" << name << "': " << status.to_string();
}

// Valid inputs of every op over one packed batch (bf16, so that the same views are also valid on
// CUDA). Sizes: N tokens, Hq=4, Hkv=2, Dqk=16, Dv=8, compressed Dout=8, K = config.topk.
struct ValidInputs {
  NsaConfig config;
  DType dtype = DType::kBFloat16;
  std::int64_t n = 0, ncmp = 0;
  int hq = 4, hkv = 2, dqk = 16, dv = 8, dout = 8;
  HostTensor cu, cu_cmp;
  HostTensor q, k, v, k_cmp, v_cmp, o, lse, d_o, dq, dk, dv_grad, dk_cmp, dv_cmp, topk;
  HostTensor gates, o_cmp, o_slc, o_swa, combined, d_gates, d_o_cmp, d_o_slc, d_o_swa;
  HostTensor x, weight, pos_emb, y, dy, dx, d_weight, d_pos_emb, rotated;

  explicit ValidInputs(const std::vector<std::int64_t>& lengths = {40, 70}) {
    auto rng = rng_for_test();
    for (std::int64_t len : lengths) {
      n += len;
      ncmp += compressed_length(len, config);
    }
    cu = make_cu_seqlens(lengths);
    cu_cmp = make_cu_cmp(config, cu);
    auto floats = [&](std::vector<std::int64_t> sizes) {
      HostTensor t(dtype, std::move(sizes));
      t.fill_normal(rng);
      return t;
    };
    q = floats({n, hq, dqk});
    k = floats({n, hkv, dqk});
    v = floats({n, hkv, dv});
    k_cmp = floats({ncmp, hkv, dqk});
    v_cmp = floats({ncmp, hkv, dv});
    o = floats({n, hq, dv});
    lse = HostTensor(DType::kFloat32, {hq, n});
    lse.fill_uniform(rng, 1.0, 3.0);
    d_o = floats({n, hq, dv});
    dq = floats({n, hq, dqk});
    dk = floats({n, hkv, dqk});
    dv_grad = floats({n, hkv, dv});
    dk_cmp = floats({ncmp, hkv, dqk});
    dv_cmp = floats({ncmp, hkv, dv});
    topk = HostTensor(DType::kInt32, {hkv, n, config.topk});
    topk.fill(0);
    gates = floats({n, hq, 3});
    o_cmp = floats({n, hq, dv});
    o_slc = floats({n, hq, dv});
    o_swa = floats({n, hq, dv});
    combined = floats({n, hq, dv});
    d_gates = floats({n, hq, 3});
    d_o_cmp = floats({n, hq, dv});
    d_o_slc = floats({n, hq, dv});
    d_o_swa = floats({n, hq, dv});
    x = floats({n, hkv, dqk});
    weight = floats({hkv, config.cmp_len * dqk, dout});
    pos_emb = floats({hkv, config.cmp_len, dqk});
    y = floats({ncmp, hkv, dout});
    dy = floats({ncmp, hkv, dout});
    dx = floats({n, hkv, dqk});
    d_weight = floats({hkv, config.cmp_len * dqk, dout});
    d_pos_emb = floats({hkv, config.cmp_len, dqk});
    rotated = floats({n, hkv, dqk});
  }
};

// One public op: its tensor arguments under the names its messages use, which of them may be
// undefined, and how to call it with a (possibly broken) set of views.
struct Op {
  std::string name;
  std::vector<std::pair<std::string, const HostTensor*>> args;
  std::set<std::string> optional;
  // The argument the others are compared against: a dtype or device change of it is reported
  // against the first argument compared with it, so the generic loops leave it out.
  std::string reference;
  std::function<Status(const NsaConfig&, const Views&)> call;

  Views views() const {
    Views out;
    for (const auto& [arg, tensor] : args) out[arg] = tensor->view();
    return out;
  }
};

std::vector<Op> all_ops(const ValidInputs& in) {
  std::vector<Op> ops;
  ops.push_back({"compressed_cu_seqlens",
                 {{"cu_seqlens", &in.cu}, {"cu_cmp", &in.cu_cmp}},
                 {},
                 "cu_seqlens",
                 [](const NsaConfig& c, const Views& v) {
                   return compressed_cu_seqlens(c, v.at("cu_seqlens"), v.at("cu_cmp"));
                 }});
  ops.push_back({"compress_forward",
                 {{"x", &in.x}, {"cu_seqlens", &in.cu}, {"cu_cmp", &in.cu_cmp}, {"weight", &in.weight},
                  {"pos_emb", &in.pos_emb}, {"y", &in.y}},
                 {"pos_emb"},
                 "x",
                 [](const NsaConfig& c, const Views& v) {
                   return compress_forward(c, v.at("x"), v.at("cu_seqlens"), v.at("cu_cmp"), v.at("weight"),
                                           v.at("pos_emb"), v.at("y"));
                 }});
  ops.push_back({"compress_backward",
                 {{"x", &in.x}, {"cu_seqlens", &in.cu}, {"cu_cmp", &in.cu_cmp}, {"weight", &in.weight},
                  {"pos_emb", &in.pos_emb}, {"dy", &in.dy}, {"dx", &in.dx}, {"d_weight", &in.d_weight},
                  {"d_pos_emb", &in.d_pos_emb}},
                 {"pos_emb", "d_weight", "d_pos_emb"},
                 "x",
                 [](const NsaConfig& c, const Views& v) {
                   return compress_backward(c, v.at("x"), v.at("cu_seqlens"), v.at("cu_cmp"), v.at("weight"),
                                            v.at("pos_emb"), v.at("dy"), v.at("dx"), v.at("d_weight"),
                                            v.at("d_pos_emb"));
                 }});
  ops.push_back({"rope_forward",
                 {{"x", &in.x}, {"cu", &in.cu}, {"y", &in.rotated}},
                 {},
                 "x",
                 [](const NsaConfig& c, const Views& v) { return rope_forward(c.rope, v.at("x"), v.at("cu"), 1, v.at("y")); }});
  ops.push_back({"rope_backward",
                 {{"dy", &in.rotated}, {"cu", &in.cu}, {"dx", &in.dx}},
                 {},
                 "dy",
                 [](const NsaConfig& c, const Views& v) {
                   return rope_backward(c.rope, v.at("dy"), v.at("cu"), 1, v.at("dx"));
                 }});
  ops.push_back({"cmp_attn_forward",
                 {{"q", &in.q}, {"k_cmp", &in.k_cmp}, {"v_cmp", &in.v_cmp}, {"cu_seqlens", &in.cu},
                  {"cu_cmp", &in.cu_cmp}, {"o", &in.o}, {"lse", &in.lse}},
                 {},
                 "q",
                 [](const NsaConfig& c, const Views& v) {
                   return cmp_attn_forward(c, v.at("q"), v.at("k_cmp"), v.at("v_cmp"), v.at("cu_seqlens"),
                                           v.at("cu_cmp"), v.at("o"), v.at("lse"));
                 }});
  ops.push_back({"cmp_attn_backward",
                 {{"q", &in.q}, {"k_cmp", &in.k_cmp}, {"v_cmp", &in.v_cmp}, {"cu_seqlens", &in.cu},
                  {"cu_cmp", &in.cu_cmp}, {"o", &in.o}, {"lse", &in.lse}, {"d_o", &in.d_o}, {"dq", &in.dq},
                  {"dk_cmp", &in.dk_cmp}, {"dv_cmp", &in.dv_cmp}},
                 {},
                 "q",
                 [](const NsaConfig& c, const Views& v) {
                   return cmp_attn_backward(c, v.at("q"), v.at("k_cmp"), v.at("v_cmp"), v.at("cu_seqlens"),
                                            v.at("cu_cmp"), v.at("o"), v.at("lse"), v.at("d_o"), v.at("dq"),
                                            v.at("dk_cmp"), v.at("dv_cmp"));
                 }});
  ops.push_back({"select_blocks",
                 {{"q", &in.q}, {"k_cmp", &in.k_cmp}, {"lse_cmp", &in.lse}, {"cu_seqlens", &in.cu},
                  {"cu_cmp", &in.cu_cmp}, {"topk_idx", &in.topk}},
                 {},
                 "q",
                 [](const NsaConfig& c, const Views& v) {
                   return select_blocks(c, v.at("q"), v.at("k_cmp"), v.at("lse_cmp"), v.at("cu_seqlens"),
                                        v.at("cu_cmp"), v.at("topk_idx"));
                 }});
  ops.push_back({"slc_attn_forward",
                 {{"q", &in.q}, {"k", &in.k}, {"v", &in.v}, {"topk_idx", &in.topk}, {"cu_seqlens", &in.cu},
                  {"o", &in.o}, {"lse", &in.lse}},
                 {},
                 "q",
                 [](const NsaConfig& c, const Views& v) {
                   return slc_attn_forward(c, v.at("q"), v.at("k"), v.at("v"), v.at("topk_idx"), v.at("cu_seqlens"),
                                           v.at("o"), v.at("lse"));
                 }});
  ops.push_back({"slc_attn_backward",
                 {{"q", &in.q}, {"k", &in.k}, {"v", &in.v}, {"topk_idx", &in.topk}, {"cu_seqlens", &in.cu},
                  {"o", &in.o}, {"lse", &in.lse}, {"d_o", &in.d_o}, {"dq", &in.dq}, {"dk", &in.dk},
                  {"dv", &in.dv_grad}},
                 {},
                 "q",
                 [](const NsaConfig& c, const Views& v) {
                   return slc_attn_backward(c, v.at("q"), v.at("k"), v.at("v"), v.at("topk_idx"), v.at("cu_seqlens"),
                                            v.at("o"), v.at("lse"), v.at("d_o"), v.at("dq"), v.at("dk"), v.at("dv"));
                 }});
  ops.push_back({"swa_forward",
                 {{"q", &in.q}, {"k", &in.k}, {"v", &in.v}, {"cu_seqlens", &in.cu}, {"o", &in.o}, {"lse", &in.lse}},
                 {},
                 "q",
                 [](const NsaConfig& c, const Views& v) {
                   return swa_forward(c, v.at("q"), v.at("k"), v.at("v"), v.at("cu_seqlens"), v.at("o"), v.at("lse"));
                 }});
  ops.push_back({"swa_backward",
                 {{"q", &in.q}, {"k", &in.k}, {"v", &in.v}, {"cu_seqlens", &in.cu}, {"o", &in.o}, {"lse", &in.lse},
                  {"d_o", &in.d_o}, {"dq", &in.dq}, {"dk", &in.dk}, {"dv", &in.dv_grad}},
                 {},
                 "q",
                 [](const NsaConfig& c, const Views& v) {
                   return swa_backward(c, v.at("q"), v.at("k"), v.at("v"), v.at("cu_seqlens"), v.at("o"), v.at("lse"),
                                       v.at("d_o"), v.at("dq"), v.at("dk"), v.at("dv"));
                 }});
  ops.push_back({"combine_forward",
                 {{"gates", &in.gates}, {"o_cmp", &in.o_cmp}, {"o_slc", &in.o_slc}, {"o_swa", &in.o_swa},
                  {"o", &in.combined}},
                 {},
                 "o_cmp",
                 [](const NsaConfig& c, const Views& v) {
                   return combine_forward(c, v.at("gates"), v.at("o_cmp"), v.at("o_slc"), v.at("o_swa"), v.at("o"));
                 }});
  ops.push_back({"combine_backward",
                 {{"gates", &in.gates}, {"o_cmp", &in.o_cmp}, {"o_slc", &in.o_slc}, {"o_swa", &in.o_swa},
                  {"d_o", &in.d_o}, {"d_gates", &in.d_gates}, {"d_o_cmp", &in.d_o_cmp}, {"d_o_slc", &in.d_o_slc},
                  {"d_o_swa", &in.d_o_swa}},
                 {"d_gates", "d_o_cmp", "d_o_slc", "d_o_swa"},
                 "o_cmp",
                 [](const NsaConfig& c, const Views& v) {
                   return combine_backward(c, v.at("gates"), v.at("o_cmp"), v.at("o_slc"), v.at("o_swa"), v.at("d_o"),
                                           v.at("d_gates"), v.at("d_o_cmp"), v.at("d_o_slc"), v.at("d_o_swa"));
                 }});
  return ops;
}

const Op& find_op(const std::vector<Op>& ops, const std::string& name) {
  for (const Op& op : ops)
    if (op.name == name) return op;
  throw std::runtime_error("no op " + name);
}

// Breaks one argument of every op in turn with `mutate` and expects the error to name it.
void expect_each_argument_named(const std::function<TensorView(const TensorView&)>& mutate, bool include_reference) {
  const ValidInputs in;
  for (const Op& op : all_ops(in))
    for (const auto& [arg, tensor] : op.args) {
      if (!include_reference && arg == op.reference) continue;
      SCOPED_TRACE(op.name + "(" + arg + ")");
      Views views = op.views();
      views[arg] = mutate(views[arg]);
      expect_names(op.call(in.config, views), arg);
    }
}

TEST(Validation, AllOpsAcceptTheValidInputs) {
  const ValidInputs in;
  for (const Op& op : all_ops(in)) {
    SCOPED_TRACE(op.name);
    FSA_EXPECT_OK(op.call(in.config, op.views()));
  }
}

TEST(Validation, EmptyBatchesAreValid) {
  for (const std::vector<std::int64_t>& lengths : {std::vector<std::int64_t>{}, std::vector<std::int64_t>{0, 0}}) {
    const ValidInputs in(lengths);
    for (const Op& op : all_ops(in)) {
      SCOPED_TRACE(op.name + " over " + std::to_string(lengths.size()) + " empty sequences");
      Views views = op.views();
      // Empty tensors with the strides PyTorch gives them (sizes of 0 count as 1), so that lse
      // [Hq, 0] and topk_idx [Hkv, 0, K] get no zero stride; row-major strides are the subject of
      // ZeroTokenLseWithRowMajorStridesIsValid.
      for (auto& [name, view] : views) {
        std::int64_t stride = 1;
        for (int d = view.ndim - 1; d >= 0; --d) {
          view.strides[static_cast<std::size_t>(d)] = stride;
          stride *= std::max<std::int64_t>(view.size(d), 1);
        }
      }
      FSA_EXPECT_OK(op.call(in.config, views));
    }
  }
}

TEST(Validation, ZeroTokenLseWithRowMajorStridesIsValid) {
  // TensorView::contiguous of lse [Hq, N=0] has strides (0, 1): stride 0 on a dim of size Hq, but
  // the tensor has no elements, so nothing can overlap.
  const ValidInputs in(std::vector<std::int64_t>{});
  const std::vector<Op> ops = all_ops(in);
  const Op& op = find_op(ops, "swa_forward");
  Views views = op.views();
  views["lse"] = TensorView::contiguous(in.lse.view().data, DType::kFloat32, {in.hq, 0});
  ASSERT_EQ(views["lse"].strides[0], 0);
  FSA_EXPECT_OK(op.call(in.config, views));
}

TEST(Validation, EmptyTensorsAreValidWithAnyStrides) {
  // A tensor without elements has no layout: autograd's gradient of an empty output is an expanded
  // [0, Hq, Dv] with strides (0, 0, 0), which torch calls contiguous and never copies. Every empty
  // tensor of an empty batch gets all-zero strides here (the last dim's included).
  for (const std::vector<std::int64_t>& lengths : {std::vector<std::int64_t>{}, std::vector<std::int64_t>{0, 0}}) {
    const ValidInputs in(lengths);
    for (const Op& op : all_ops(in)) {
      SCOPED_TRACE(op.name + " over " + std::to_string(lengths.size()) + " empty sequences");
      Views views = op.views();
      for (auto& [name, view] : views)
        if (view.defined() && view.numel() == 0)
          for (int d = 0; d < view.ndim; ++d) view.strides[static_cast<std::size_t>(d)] = 0;
      FSA_EXPECT_OK(op.call(in.config, views));
    }
  }
}

TEST(Validation, WrongDtypeOfEachArgument) {
  // int32 for a floating tensor (also lse, which must be fp32), fp32 for an index tensor.
  expect_each_argument_named(
      [](const TensorView& t) {
        TensorView bad = t;
        bad.dtype = t.dtype == DType::kInt32 ? DType::kFloat32 : DType::kInt32;
        return bad;
      },
      true);
}

TEST(Validation, MismatchedFloatDtypeOfEachArgument) {
  // fp16 among bf16 tensors; lse (fp32) becomes bf16; index tensors become int-sized fp32.
  expect_each_argument_named(
      [](const TensorView& t) {
        TensorView bad = t;
        bad.dtype = t.dtype == DType::kBFloat16 ? DType::kFloat16
                                                : (t.dtype == DType::kFloat32 ? DType::kBFloat16 : DType::kFloat32);
        return bad;
      },
      false);
}

TEST(Validation, NonContiguousLastDimOfEachArgument) {
  expect_each_argument_named(
      [](const TensorView& t) {
        TensorView bad = t;
        for (int d = 0; d < t.ndim; ++d) bad.strides[static_cast<std::size_t>(d)] *= 2;
        return bad;
      },
      true);
}

TEST(Validation, NegativeStrideOfEachArgument) {
  expect_each_argument_named(
      [](const TensorView& t) {
        TensorView bad = t;
        bad.strides[0] = -t.strides[0];
        return bad;
      },
      true);
}

TEST(Validation, OverlappingStridesOfEachArgument) {
  // Stride 0 on a leading dim of size > 1: distinct indices would share an element.
  expect_each_argument_named(
      [](const TensorView& t) {
        TensorView bad = t;
        bad.strides[0] = 0;
        return bad;
      },
      true);
}

TEST(Validation, NullDataOfEachArgument) {
  expect_each_argument_named(
      [](const TensorView& t) {
        TensorView bad = t;
        bad.data = nullptr;
        return bad;
      },
      true);
}

TEST(Validation, WrongRankOfEachArgument) {
  expect_each_argument_named(
      [](const TensorView& t) {
        TensorView bad = t;
        bad.sizes[static_cast<std::size_t>(t.ndim)] = 1;
        bad.strides[static_cast<std::size_t>(t.ndim)] = 1;
        bad.ndim = t.ndim + 1;
        return bad;
      },
      true);
}

TEST(Validation, MissingRequiredArgument) {
  const ValidInputs in;
  for (const Op& op : all_ops(in))
    for (const auto& [arg, tensor] : op.args) {
      if (op.optional.count(arg)) continue;
      if ((op.name == "compress_forward" && arg == "y") || (op.name == "compress_backward" && arg == "dy"))
        continue;  // see MissingCompressedTensorIsNamed
      SCOPED_TRACE(op.name + "(" + arg + ")");
      Views views = op.views();
      views[arg] = TensorView{};
      expect_names(op.call(in.config, views), arg);
    }
}

TEST(Validation, MissingCompressedTensorIsNamed) {
  // Known library bug: compress_forward / compress_backward size the cu_cmp check with
  // y.size(0) / dy.size(0) (0 when undefined) before checking y / dy themselves
  // (src/api/compress.cpp), so a missing y is reported as "cu_cmp: compressed tensors hold 0 rows".
  const ValidInputs in;
  const std::vector<Op> ops = all_ops(in);
  for (const auto& [name, arg] : {std::pair<std::string, std::string>{"compress_forward", "y"},
                                  std::pair<std::string, std::string>{"compress_backward", "dy"}}) {
    SCOPED_TRACE(name + "(" + arg + ")");
    const Op& op = find_op(ops, name);
    Views views = op.views();
    views[arg] = TensorView{};
    expect_names(op.call(in.config, views), arg);
  }
}

TEST(Validation, SizesAndStridesOfDifferentLengths) {
  const ValidInputs in;
  const std::vector<Op> ops = all_ops(in);
  const Op& op = find_op(ops, "swa_forward");
  Views views = op.views();
  views["k"] = TensorView::strided(in.k.view().data, in.dtype, {in.n, in.hkv, in.dqk}, {in.hkv * in.dqk, 1});
  expect_names(op.call(in.config, views), "k");
}

TEST(Validation, NegativeSize) {
  const ValidInputs in;
  const std::vector<Op> ops = all_ops(in);
  const Op& op = find_op(ops, "combine_forward");
  Views views = op.views();
  views["o_swa"].sizes[2] = -in.dv;
  expect_names(op.call(in.config, views), "o_swa");
}

TEST(Validation, CpuViewMixedWithCudaView) {
  const ValidInputs in;
  for (const Op& op : all_ops(in))
    for (const auto& [arg, tensor] : op.args) {
      if (arg == op.reference) continue;
      SCOPED_TRACE(op.name + "(" + arg + ")");
      Views views = op.views();
      views[arg].device = Device::cuda(0);
      expect_names(op.call(in.config, views), arg);
    }
  // The reference tensor on CUDA, everything else on the CPU: the first argument compared with
  // it is reported.
  const std::vector<Op> ops = all_ops(in);
  const std::map<std::string, std::string> first_compared = {
      {"compressed_cu_seqlens", "cu_cmp"}, {"compress_forward", "cu_seqlens"}, {"compress_backward", "cu_seqlens"},
      {"rope_forward", "cu"},              {"rope_backward", "cu"},             {"cmp_attn_forward", "k_cmp"},
      {"cmp_attn_backward", "k_cmp"},      {"select_blocks", "k_cmp"},          {"slc_attn_forward", "k"},
      {"slc_attn_backward", "k"},          {"swa_forward", "k"},                {"swa_backward", "k"},
      {"combine_forward", "o_slc"},        {"combine_backward", "o_slc"}};
  for (const Op& op : ops) {
    SCOPED_TRACE(op.name + "(" + op.reference + " on CUDA)");
    Views views = op.views();
    views[op.reference].device = Device::cuda(0);
    expect_names(op.call(in.config, views), first_compared.at(op.name));
  }
}

TEST(Validation, SpecificDtypeErrors) {
  const ValidInputs in;
  const std::vector<Op> ops = all_ops(in);
  for (const char* name : {"cmp_attn_forward", "slc_attn_forward", "swa_forward"}) {
    SCOPED_TRACE(name);
    const Op& op = find_op(ops, name);
    const std::string key = std::string(name) == "cmp_attn_forward" ? "k_cmp" : "k";
    Views views = op.views();
    views[key].dtype = DType::kFloat16;  // while q is bf16
    expect_names(op.call(in.config, views), key);
    views = op.views();
    views["q"].dtype = DType::kInt32;
    expect_names(op.call(in.config, views), "q");
    views = op.views();
    views["lse"].dtype = DType::kBFloat16;  // lse is always fp32
    expect_names(op.call(in.config, views), "lse");
    views = op.views();
    views["o"].dtype = DType::kFloat32;
    expect_names(op.call(in.config, views), "o");
  }
  // fp32/fp64 are CPU-only dtypes: the same bf16 shapes as fp32 on CUDA are rejected by dtype.
  const Op& swa = find_op(ops, "swa_forward");
  Views views = swa.views();
  for (auto& [name, view] : views) {
    view.device = Device::cuda(0);
    if (name != "cu_seqlens" && name != "lse") view.dtype = DType::kFloat32;
  }
  expect_names(swa.call(in.config, views), "q");
  // uint8 is no floating dtype.
  views = swa.views();
  views["q"].dtype = DType::kUInt8;
  expect_names(swa.call(in.config, views), "q");
}

TEST(Validation, MismatchedAttentionShapes) {
  const ValidInputs in;
  const std::vector<Op> ops = all_ops(in);
  for (const char* name : {"slc_attn_forward", "swa_forward", "slc_attn_backward", "swa_backward"}) {
    SCOPED_TRACE(name);
    const Op& op = find_op(ops, name);
    auto broken = [&](const std::string& arg, int dim, std::int64_t size) {
      Views views = op.views();
      views[arg].sizes[static_cast<std::size_t>(dim)] = size;
      return op.call(in.config, views);
    };
    expect_names(broken("k", 2, in.dqk + 2), "k");        // head dim differs from q's
    expect_names(broken("k", 0, in.n - 1), "k");          // rows differ from q's
    expect_names(broken("v", 1, in.hkv + 1), "v");        // heads differ from k's
    expect_names(broken("v", 0, in.n + 1), "v");          // rows differ from k's
    expect_names(broken("o", 2, in.dv + 1), "o");         // Dv differs from v's
    expect_names(broken("o", 1, in.hq / 2), "o");         // Hq differs from q's
    expect_names(broken("lse", 0, in.n), "lse");          // [N, Hq] instead of [Hq, N]
    expect_names(broken("lse", 1, in.n + 3), "lse");
    expect_names(broken("q", 0, in.n + 1), "k");          // q rows no longer match k
    if (std::string(name).rfind("slc", 0) == 0) {
      expect_names(broken("topk_idx", 0, in.hkv + 1), "topk_idx");
      expect_names(broken("topk_idx", 1, in.n - 1), "topk_idx");
      Views views = op.views();
      views["topk_idx"].dtype = DType::kFloat32;
      expect_names(op.call(in.config, views), "topk_idx");
      views = op.views();
      views["topk_idx"] = TensorView::contiguous(in.topk.view().data, DType::kInt32, {in.hkv, in.n * in.config.topk});
      expect_names(op.call(in.config, views), "topk_idx");
    }
    if (std::string(name).find("backward") != std::string::npos) {
      expect_names(broken("d_o", 2, in.dv + 1), "d_o");
      expect_names(broken("dq", 0, in.n - 1), "dq");
      expect_names(broken("dk", 2, in.dqk - 1), "dk");
      expect_names(broken("dv", 1, in.hkv - 1), "dv");
    }
  }
  // Compressed attention: k_cmp rows are free, but must hold cu_cmp[nseq]; v_cmp must match k_cmp.
  const Op& cmp = find_op(ops, "cmp_attn_forward");
  Views views = cmp.views();
  views["v_cmp"].sizes[0] = in.ncmp + 1;
  expect_names(cmp.call(in.config, views), "v_cmp");
  views = cmp.views();
  views["k_cmp"].sizes[2] = in.dqk * 2;
  expect_names(cmp.call(in.config, views), "k_cmp");
  // select_blocks writes exactly K columns.
  const Op& select = find_op(ops, "select_blocks");
  views = select.views();
  views["topk_idx"].sizes[2] = in.config.topk - 1;
  expect_names(select.call(in.config, views), "topk_idx");
  views = select.views();
  views["lse_cmp"].sizes[0] = in.hq + 1;
  expect_names(select.call(in.config, views), "lse_cmp");
}

TEST(Validation, OverlappingOutputStrides) {
  const ValidInputs in;
  const std::vector<Op> ops = all_ops(in);
  const Op& op = find_op(ops, "cmp_attn_forward");
  Views views = op.views();
  // Heads of o overlap: stride of dim 1 smaller than the span Dv of the last dim.
  views["o"] = TensorView::strided(in.o.view().data, in.dtype, {in.n, in.hq, in.dv}, {in.hq * in.dv, in.dv / 2, 1});
  expect_names(op.call(in.config, views), "o");
}

TEST(Validation, GroupCountMustDivideQueryHeads) {
  const ValidInputs in;
  // Hq = 3 with Hkv = 2: o, lse and the gradients follow Hq so that only the ratio is wrong.
  HostTensor q3(in.dtype, {in.n, 3, in.dqk}), o3(in.dtype, {in.n, 3, in.dv}), lse3(DType::kFloat32, {3, in.n});
  for (const Op& op : all_ops(in)) {
    if (op.reference != "q") continue;
    SCOPED_TRACE(op.name);
    Views views = op.views();
    views["q"] = q3.view();
    for (const char* name : {"o", "d_o"})
      if (views.count(name)) views[name] = o3.view();
    if (views.count("dq")) views["dq"] = q3.view();
    for (const char* name : {"lse", "lse_cmp"})
      if (views.count(name)) views[name] = lse3.view();
    const Status status = op.call(in.config, views);
    expect_names(status, "q");
    EXPECT_NE(status.message().find("Hkv"), std::string::npos) << status.to_string();
  }
}

// The name of an op's sequence offsets argument, empty when it has none.
std::string cu_key(const Op& op) {
  const Views views = op.views();
  if (views.count("cu")) return "cu";
  return views.count("cu_seqlens") ? "cu_seqlens" : "";
}

TEST(Validation, MalformedCuSeqlens) {
  const ValidInputs in;
  const std::int32_t total = static_cast<std::int32_t>(in.n);
  std::vector<std::vector<std::int32_t>> bad_values = {
      {0, 80, 60, total},     // decreasing
      {0, 40, total + 1},     // wrong final value
      {0, 40, total - 1},     // wrong final value (short)
      {5, 40, total},         // cu[0] != 0
      {-4, 40, total},        // cu[0] != 0
  };
  const std::vector<Op> ops = all_ops(in);
  for (const auto& values : bad_values) {
    HostTensor cu(DType::kInt32, {static_cast<std::int64_t>(values.size())});
    for (std::size_t i = 0; i < values.size(); ++i) cu.set(static_cast<std::int64_t>(i), values[i]);
    for (const Op& op : ops) {
      const std::string key = cu_key(op);
      if (key.empty()) continue;
      // compressed_cu_seqlens accepts any total; rope accepts fewer rows than the tensor holds.
      const bool total_only = values.front() == 0 && values[1] <= values[2];
      if (total_only && (op.name == "compressed_cu_seqlens" || (key == "cu" && values.back() < total))) continue;
      SCOPED_TRACE(op.name + " cu = [" + std::to_string(values[0]) + ", " + std::to_string(values[1]) + ", " +
                   std::to_string(values[2]) + "]");
      Views views = op.views();
      views[key] = cu.view();
      expect_names(op.call(in.config, views), key);
    }
  }
  // Wrong dtypes and ranks: fp32 values, 8-byte elements, int32 pairs (an int64 tensor read as
  // int32), no entry at all.
  HostTensor as_float(DType::kFloat32, {3}), as_double(DType::kFloat64, {3}), pairs(DType::kInt32, {3, 2}),
      none(DType::kInt32, {0});
  as_float.from_double({0, 40, static_cast<double>(total)});
  as_double.from_double({0, 40, static_cast<double>(total)});
  pairs.from_double({0, 0, 40, 0, static_cast<double>(total), 0});
  for (const HostTensor* bad : {&as_float, &as_double, &pairs, &none})
    for (const Op& op : ops) {
      const std::string key = cu_key(op);
      if (key.empty()) continue;
      SCOPED_TRACE(op.name + " cu of shape " + bad->view().shape_string() + " " + dtype_name(bad->dtype()));
      Views views = op.views();
      views[key] = bad->view();
      expect_names(op.call(in.config, views), key);
    }
}

TEST(Validation, TooManyTokensForInt32Offsets) {
  const ValidInputs in;
  const std::vector<Op> ops = all_ops(in);
  const Op& op = find_op(ops, "swa_forward");
  // Views only: validation rejects the size before any element is read.
  const std::int64_t huge = std::int64_t{1} << 31;
  Views views = op.views();
  views["q"] = TensorView::contiguous(in.q.view().data, in.dtype, {huge, in.hq, in.dqk});
  views["k"] = TensorView::contiguous(in.k.view().data, in.dtype, {huge, in.hkv, in.dqk});
  views["v"] = TensorView::contiguous(in.v.view().data, in.dtype, {huge, in.hkv, in.dv});
  views["o"] = TensorView::contiguous(in.o.view().data, in.dtype, {huge, in.hq, in.dv});
  views["lse"] = TensorView::contiguous(in.lse.view().data, DType::kFloat32, {in.hq, huge});
  expect_names(op.call(in.config, views), "cu_seqlens");
}

TEST(Validation, CuCmpInconsistentWithCuSeqlens) {
  const ValidInputs in;  // lengths 40, 70: cu_cmp = [0, 1, 4]
  const std::vector<Op> ops = all_ops(in);
  for (const std::vector<double>& values : {std::vector<double>{0, 1, 3}, std::vector<double>{0, 2, 4},
                                            std::vector<double>{1, 1, 4}, std::vector<double>{0, 0, 4}})
    for (const Op& op : ops) {
      if (!op.views().count("cu_cmp") || op.name == "compressed_cu_seqlens") continue;
      SCOPED_TRACE(op.name);
      HostTensor cu_cmp(DType::kInt32, {3});
      cu_cmp.from_double(values);
      Views views = op.views();
      views["cu_cmp"] = cu_cmp.view();
      expect_names(op.call(in.config, views), "cu_cmp");
    }
  // One entry too many, and a config under which the same cu_cmp is wrong (l = s = 16).
  HostTensor long_cu_cmp(DType::kInt32, {4});
  long_cu_cmp.from_double({0, 1, 4, 4});
  NsaConfig other = in.config;
  other.cmp_len = 16;
  for (const Op& op : ops) {
    if (!op.views().count("cu_cmp") || op.name == "compressed_cu_seqlens") continue;
    SCOPED_TRACE(op.name);
    Views views = op.views();
    views["cu_cmp"] = long_cu_cmp.view();
    expect_names(op.call(in.config, views), "cu_cmp");
    // The compression weight's shape [H, l*D, Dout] depends on l too, and is checked first.
    if (op.name.rfind("compress_", 0) != 0) expect_names(op.call(other, op.views()), "cu_cmp");
  }
  // Compressed tensors with fewer rows than cu_cmp[nseq] = 4.
  const Op& cmp = find_op(ops, "cmp_attn_forward");
  Views views = cmp.views();
  views["k_cmp"].sizes[0] = in.ncmp - 1;
  views["v_cmp"].sizes[0] = in.ncmp - 1;
  expect_names(cmp.call(in.config, views), "cu_cmp");
}

TEST(Validation, BadConfigs) {
  const ValidInputs in;
  struct Case {
    std::string field;
    std::function<void(NsaConfig&)> change;
  };
  const std::vector<Case> cases = {
      {"config.block_size", [](NsaConfig& c) { c.block_size = 48; }},
      {"config.block_size", [](NsaConfig& c) { c.block_size = 256; }},
      {"config.topk", [](NsaConfig& c) { c.topk = 2; }},  // K < I + L = 3
      {"config.topk", [](NsaConfig& c) { c.topk = 0; }},
      {"config.cmp_stride", [](NsaConfig& c) { c.cmp_stride = 12; }},  // s does not divide l = 32
      {"config.cmp_stride",
       [](NsaConfig& c) {  // s = 24 divides l = 48 but not B = 64
         c.cmp_len = 48;
         c.cmp_stride = 24;
       }},
      {"config.cmp_stride", [](NsaConfig& c) { c.cmp_stride = 0; }},
      {"config.cmp_len", [](NsaConfig& c) { c.cmp_len = -32; }},
      {"config.init_blocks", [](NsaConfig& c) { c.init_blocks = -1; }},
      {"config.local_blocks", [](NsaConfig& c) { c.local_blocks = -1; }},
      {"config.window", [](NsaConfig& c) { c.window = -1; }},
      {"config.scale", [](NsaConfig& c) { c.scale = -0.125f; }},
      {"config.scale", [](NsaConfig& c) { c.scale = std::numeric_limits<float>::quiet_NaN(); }},
      {"config.scale", [](NsaConfig& c) { c.scale = std::numeric_limits<float>::infinity(); }},
      {"config.rope.theta", [](NsaConfig& c) { c.rope.theta = 0.0f; }},
  };
  for (const Case& bad : cases)
    for (const Op& op : all_ops(in)) {
      SCOPED_TRACE(op.name + " " + bad.field);
      NsaConfig config = in.config;
      bad.change(config);
      // rope ops take only config.rope; every other op validates the whole config.
      if (op.name.rfind("rope", 0) == 0 && bad.field != "config.rope.theta") continue;
      expect_names(op.call(config, op.views()), bad.field);
    }
}

TEST(Validation, RopeArguments) {
  const ValidInputs in;
  RopeConfig rope;
  HostTensor odd_x(in.dtype, {in.n, in.hkv, 15}), odd_y(in.dtype, {in.n, in.hkv, 15});
  expect_names(rope_forward(rope, odd_x.view(), in.cu.view(), 1, odd_y.view()), "x");
  expect_names(rope_backward(rope, odd_x.view(), in.cu.view(), 1, odd_y.view()), "dy");
  for (int stride : {0, -16}) {
    expect_names(rope_forward(rope, in.x.view(), in.cu.view(), stride, in.rotated.view()), "position_stride");
    expect_names(rope_backward(rope, in.rotated.view(), in.cu.view(), stride, in.dx.view()), "position_stride");
  }
  HostTensor wide_y(in.dtype, {in.n, in.hkv, 2 * in.dqk});
  expect_names(rope_forward(rope, in.x.view(), in.cu.view(), 1, wide_y.view()), "y");
  rope.llama3_scaling = true;
  rope.llama3_factor = 0.5f;
  expect_names(rope_forward(rope, in.x.view(), in.cu.view(), 1, in.rotated.view()), "config.rope.llama3_factor");
}

TEST(Validation, CompressionArguments) {
  const ValidInputs in;
  const std::vector<Op> ops = all_ops(in);
  const Op& forward = find_op(ops, "compress_forward");
  const Op& backward = find_op(ops, "compress_backward");
  NsaConfig mean = in.config;
  mean.compression = CompressionKind::kMean;
  HostTensor mean_y(in.dtype, {in.ncmp, in.hkv, in.dqk});
  // Mean compression takes no weight (and then Dout = D).
  Views views = forward.views();
  views["y"] = mean_y.view();
  expect_names(forward.call(mean, views), "weight");
  views["weight"] = TensorView{};
  FSA_EXPECT_OK(forward.call(mean, views));
  views = backward.views();
  views["dy"] = mean_y.view();
  views["weight"] = TensorView{};
  expect_names(backward.call(mean, views), "d_weight");  // a weight gradient without a weight
  views["d_weight"] = TensorView{};
  FSA_EXPECT_OK(backward.call(mean, views));
  views["pos_emb"] = TensorView{};
  expect_names(backward.call(mean, views), "d_pos_emb");  // a pos_emb gradient without pos_emb

  // Shapes: weight's l*D, pos_emb's l, y's Dout and heads, dx like x.
  auto broken = [&](const Op& op, const std::string& arg, int dim, std::int64_t size) {
    Views v = op.views();
    v[arg].sizes[static_cast<std::size_t>(dim)] = size;
    return op.call(in.config, v);
  };
  expect_names(broken(forward, "weight", 1, (in.config.cmp_len - 1) * in.dqk), "weight");
  expect_names(broken(forward, "weight", 0, in.hkv + 1), "weight");
  expect_names(broken(forward, "pos_emb", 1, in.config.cmp_len / 2), "pos_emb");
  expect_names(broken(forward, "pos_emb", 2, in.dqk + 1), "pos_emb");
  expect_names(broken(forward, "y", 2, in.dout + 1), "y");
  expect_names(broken(forward, "y", 1, in.hkv * 2), "y");
  expect_names(broken(forward, "x", 0, in.n - 1), "cu_seqlens");  // cu_seqlens no longer ends at N
  expect_names(broken(backward, "dx", 0, in.n + 1), "dx");
  expect_names(broken(backward, "d_weight", 2, in.dout + 1), "d_weight");
  expect_names(broken(backward, "d_pos_emb", 1, 1), "d_pos_emb");
  expect_names(broken(backward, "dy", 2, in.dout - 1), "dy");
}

TEST(Validation, CombineArguments) {
  const ValidInputs in;
  const std::vector<Op> ops = all_ops(in);
  const Op& forward = find_op(ops, "combine_forward");
  const Op& backward = find_op(ops, "combine_backward");
  HostTensor shared_gates(in.dtype, {in.n, 3}), shared_d_gates(in.dtype, {in.n, 3});
  NsaConfig shared = in.config;
  shared.gate_mode = GateMode::kShared;
  // Gate shapes follow config.gate_mode.
  Views views = forward.views();
  views["gates"] = shared_gates.view();
  expect_names(forward.call(in.config, views), "gates");
  FSA_EXPECT_OK(forward.call(shared, views));
  expect_names(forward.call(shared, forward.views()), "gates");
  views = backward.views();
  views["gates"] = shared_gates.view();
  views["d_gates"] = shared_d_gates.view();
  FSA_EXPECT_OK(backward.call(shared, views));
  views["d_gates"] = in.d_gates.view();  // per-head gradient of shared gates
  expect_names(backward.call(shared, views), "d_gates");

  auto broken = [&](const Op& op, const std::string& arg, int dim, std::int64_t size) {
    Views v = op.views();
    v[arg].sizes[static_cast<std::size_t>(dim)] = size;
    return op.call(in.config, v);
  };
  expect_names(broken(forward, "o_slc", 1, in.hq - 1), "o_slc");
  expect_names(broken(forward, "o_swa", 2, in.dv + 1), "o_swa");
  expect_names(broken(forward, "o", 0, in.n - 1), "o");
  expect_names(broken(forward, "gates", 2, 2), "gates");
  expect_names(broken(backward, "d_o", 2, in.dv - 1), "d_o");
  expect_names(broken(backward, "d_o_swa", 0, in.n + 1), "d_o_swa");
  expect_names(broken(backward, "d_gates", 1, in.hq + 1), "d_gates");
}

// What each op writes; it only reads its other arguments.
const std::map<std::string, std::set<std::string>>& op_outputs() {
  static const std::map<std::string, std::set<std::string>> outputs = {
      {"compressed_cu_seqlens", {"cu_cmp"}},
      {"compress_forward", {"y"}},
      {"compress_backward", {"dx", "d_weight", "d_pos_emb"}},
      {"rope_forward", {"y"}},
      {"rope_backward", {"dx"}},
      {"cmp_attn_forward", {"o", "lse"}},
      {"cmp_attn_backward", {"dq", "dk_cmp", "dv_cmp"}},
      {"select_blocks", {"topk_idx"}},
      {"slc_attn_forward", {"o", "lse"}},
      {"slc_attn_backward", {"dq", "dk", "dv"}},
      {"swa_forward", {"o", "lse"}},
      {"swa_backward", {"dq", "dk", "dv"}},
      {"combine_forward", {"o"}},
      {"combine_backward", {"d_gates", "d_o_cmp", "d_o_slc", "d_o_swa"}},
  };
  return outputs;
}

TEST(Validation, OutputSharingMemoryWithAnotherArgumentIsRefused) {
  // Every output of every op, pointed at the memory of each other argument (an input it would
  // overwrite while reading it, or another output), and every input pointed at an output's memory:
  // refused, the error naming one of the two (the overlap names the output; an input whose values
  // the CPU reads first may fail its own check), and nothing runs. The one exception is RoPE's
  // documented in-place form: the output the very same tensor as the input.
  const ValidInputs in;
  for (const Op& op : all_ops(in)) {
    ASSERT_TRUE(op_outputs().count(op.name)) << op.name << " has no entry in op_outputs()";
    const std::set<std::string>& outputs = op_outputs().at(op.name);
    for (const auto& [a, tensor_a] : op.args)
      for (const auto& [b, tensor_b] : op.args) {
        if (a == b || (!outputs.count(a) && !outputs.count(b))) continue;
        SCOPED_TRACE(op.name + ": " + a + " at the memory of " + b);
        Views views = op.views();
        views[a].data = views[b].data;
        const Status status = op.call(in.config, views);
        const bool in_place = (op.name == "rope_forward" && a == "y" && b == "x") ||
                              (op.name == "rope_backward" && a == "dx" && b == "dy") ||
                              (op.name == "rope_forward" && a == "x" && b == "y") ||
                              (op.name == "rope_backward" && a == "dy" && b == "dx");
        if (in_place) {
          FSA_EXPECT_OK(status);
          continue;
        }
        ASSERT_FALSE(status.is_ok());
        // Named: a or b, or (a view moved onto b's memory may run past b's buffer into a third
        // argument's: the test's host buffers lie side by side) another output it now overlaps.
        const std::string& message = status.message();
        bool named = message.rfind(a + ":", 0) == 0 || message.rfind(b + ":", 0) == 0;
        for (const std::string& out : outputs) named = named || message.rfind(out + ": shares memory", 0) == 0;
        EXPECT_TRUE(named) << status.to_string();
      }
  }
}

TEST(Validation, OverlapNamesTheOutputAndLetsStridedSlicesThrough) {
  const ValidInputs in;
  const std::vector<Op> ops = all_ops(in);
  const Op& swa = find_op(ops, "swa_forward");
  // o starting one row into q: a partial overlap, named by the output.
  Views views = swa.views();
  views["o"].data = static_cast<char*>(views["q"].data) + in.hq * in.dqk * dtype_size(in.dtype);
  const Status partial = swa.call(in.config, views);
  EXPECT_EQ(partial.message().rfind("o: shares memory with q", 0), 0u) << partial.to_string();
  // dq, dk, dv as interleaved slices of one fused buffer (rows of [dq | dk | dv]): their byte ranges
  // meet, their elements do not; the check cannot prove an overlap and lets them through.
  const Op& backward = find_op(ops, "swa_backward");
  const std::int64_t row = in.hq * in.dqk + in.hkv * in.dqk + in.hkv * in.dv;
  HostTensor fused(in.dtype, {in.n, row});
  auto* base = static_cast<char*>(fused.view().data);
  const std::size_t e = dtype_size(in.dtype);
  views = backward.views();
  views["dq"] = TensorView::strided(base, in.dtype, {in.n, in.hq, in.dqk}, {row, in.dqk, 1});
  views["dk"] = TensorView::strided(base + in.hq * in.dqk * e, in.dtype, {in.n, in.hkv, in.dqk}, {row, in.dqk, 1});
  views["dv"] = TensorView::strided(base + (in.hq + in.hkv) * in.dqk * e, in.dtype, {in.n, in.hkv, in.dv},
                                    {row, in.dv, 1});
  FSA_EXPECT_OK(backward.call(in.config, views));
}

TEST(Validation, CudaTensorsGiveNotImplementedWithoutCrashing) {
  // Every view claims CUDA but points at host memory: validation never reads CUDA data, and the ops
  // without CUDA kernels must stop at dispatch. Ops that do have kernels in a CUDA build would
  // launch them on these host pointers, so they are left to the GPU tests there.
  const std::set<std::string> ops_with_cuda_kernels = {"compressed_cu_seqlens", "rope_forward",      "rope_backward",
                                                       "compress_forward",      "compress_backward", "cmp_attn_forward",
                                                       "cmp_attn_backward",     "select_blocks",     "slc_attn_forward",
                                                       "slc_attn_backward",     "swa_forward",       "swa_backward",
                                                       "combine_forward",       "combine_backward"};
  const ValidInputs in;
  for (const Op& op : all_ops(in)) {
    if (op.name == "compressed_cu_seqlens") continue;
    if (built_with_cuda() && ops_with_cuda_kernels.count(op.name)) continue;
    SCOPED_TRACE(op.name);
    Views views = op.views();
    for (auto& [name, view] : views) view.device = Device::cuda(0);
    const Status status = op.call(in.config, views);
    EXPECT_EQ(status.code(), StatusCode::kNotImplemented) << status.to_string();
    EXPECT_NE(status.message().find(op.name), std::string::npos) << status.to_string();
  }
}

}  // namespace
}  // namespace fsa::test
