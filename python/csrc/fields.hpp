// The scalar arguments of the ops (the layer's config and the run options), each declared once.
//
// A row FSA_FIELD_<name>(X) expands X(Kind, name, member):
// - Kind: the field's kind below: its schema type, the C++ type the op receives (Kind::Arg), the
//   member type it converts to and how (range checks; errors name the field);
// - name: the argument's name in the op schema, the C++ parameter and the Python keyword. It is
//   `member` without its first component, dots as underscores (checked below), so that Python maps
//   a schema argument to NsaConfig's attribute by name (python/fsa/_schema.py);
// - member: the OpSettings member it sets. Its default, OpSettings{}.member, is the schema default.
//
// The op lists (FSA_*_ARGS) pick rows in schema order. op_table.hpp gives each op its list;
// registration.cpp expands it into the schema (FSA_SCHEMA), ops.hpp / ops.cpp into the C++
// parameters (FSA_PARAMS) and the settings they fill (FSA_SETTINGS). Adding a field to the layer:
// the member (NsaConfig, and python/fsa/config.py, which mirrors it), one row here and its name in
// FSA_LAYER_ARGS; the Python wrappers and the fake implementations read it from the schema, and
// tests/python/test_schema.py fails when C++ and Python disagree on the fields or their defaults.
#pragma once

#include <c10/util/string_view.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

#include "fsa/config.hpp"
#include "fsa/ops.hpp"

namespace fsa::torch_ext {

// Everything an op's scalars set: the layer's config and selected attention's run options.
struct OpSettings {
  NsaConfig config;
  SlcOptions selected;
};

// ---- kinds ---------------------------------------------------------------------------------------

// A schema int stored in an int; out-of-range values are an error instead of wrapping around into
// a valid-looking config.
struct IntField {
  using Arg = std::int64_t;
  using Member = int;
  static std::string schema_type() { return "int"; }
  static void assign(int& member, Arg value, const char* label);
  static std::string literal(int value) { return std::to_string(value); }
};

// An int that must be >= 0 (run options whose 0 means "the library's").
struct NonNegativeIntField : IntField {
  static void assign(int& member, Arg value, const char* label);
};

// A byte count (std::size_t) from a schema int; negative values are an error.
struct ByteCountField {
  using Arg = std::int64_t;
  using Member = std::size_t;
  static std::string schema_type() { return "int"; }
  static void assign(std::size_t& member, Arg value, const char* label);
  static std::string literal(std::size_t value) { return std::to_string(value); }
};

struct FloatField {
  using Arg = double;
  using Member = float;
  static std::string schema_type() { return "float"; }
  static void assign(float& member, Arg value, const char*) { member = static_cast<float>(value); }
  static std::string literal(float value);
};

struct BoolField {
  using Arg = bool;
  using Member = bool;
  static std::string schema_type() { return "bool"; }
  static void assign(bool& member, Arg value, const char*) { member = value; }
  static std::string literal(bool value) { return value ? "True" : "False"; }
};

// A schema str naming one of the enum's values; an unknown name is a ValueError listing them.
template <class Enum>
struct EnumField {
  using Arg = c10::string_view;
  using Member = Enum;
  static std::string schema_type() { return "str"; }
  static void assign(Enum& member, Arg value, const char* label);
  static std::string literal(Enum value);
};
// Defined, with the names of each enum's values, in fields.cpp.
extern template struct EnumField<CompressionKind>;
extern template struct EnumField<ScoreAggregation>;
extern template struct EnumField<SlcPath>;

// `Field` or None; None keeps the member's default (NsaConfig's scale 0 = 1/sqrt(Dqk), Python's
// scale=None; SlcOptions' workspace_cap kDefaultWorkspaceCap, Python's workspace_cap=None).
template <class Field>
struct Optional {
  using Arg = std::optional<typename Field::Arg>;
  using Member = typename Field::Member;
  static std::string schema_type() { return Field::schema_type() + "?"; }
  static void assign(Member& member, const Arg& value, const char* label) {
    if (value.has_value()) Field::assign(member, *value, label);
  }
  static std::string literal(const Member&) { return "None"; }
};

using CompressionField = EnumField<CompressionKind>;
using AggregationField = EnumField<ScoreAggregation>;
using SlcPathField = EnumField<SlcPath>;
using OptionalFloatField = Optional<FloatField>;
using OptionalByteCountField = Optional<ByteCountField>;

// ---- the fields ----------------------------------------------------------------------------------

#define FSA_FIELD_cmp_len(X) X(IntField, cmp_len, config.cmp_len)
#define FSA_FIELD_cmp_stride(X) X(IntField, cmp_stride, config.cmp_stride)
#define FSA_FIELD_block_size(X) X(IntField, block_size, config.block_size)
#define FSA_FIELD_topk(X) X(IntField, topk, config.topk)
#define FSA_FIELD_init_blocks(X) X(IntField, init_blocks, config.init_blocks)
#define FSA_FIELD_local_blocks(X) X(IntField, local_blocks, config.local_blocks)
#define FSA_FIELD_window(X) X(IntField, window, config.window)
#define FSA_FIELD_scale(X) X(OptionalFloatField, scale, config.scale)
#define FSA_FIELD_compression(X) X(CompressionField, compression, config.compression)
#define FSA_FIELD_aggregation(X) X(AggregationField, aggregation, config.aggregation)
#define FSA_FIELD_rope_enabled(X) X(BoolField, rope_enabled, config.rope.enabled)
#define FSA_FIELD_rope_theta(X) X(FloatField, rope_theta, config.rope.theta)
#define FSA_FIELD_rope_llama3_scaling(X) X(BoolField, rope_llama3_scaling, config.rope.llama3_scaling)
#define FSA_FIELD_rope_llama3_factor(X) X(FloatField, rope_llama3_factor, config.rope.llama3_factor)
#define FSA_FIELD_rope_llama3_low_freq_factor(X) \
  X(FloatField, rope_llama3_low_freq_factor, config.rope.llama3_low_freq_factor)
#define FSA_FIELD_rope_llama3_high_freq_factor(X) \
  X(FloatField, rope_llama3_high_freq_factor, config.rope.llama3_high_freq_factor)
#define FSA_FIELD_rope_llama3_original_max_position(X) \
  X(IntField, rope_llama3_original_max_position, config.rope.llama3_original_max_position)
#define FSA_FIELD_path(X) X(SlcPathField, path, selected.path)
#define FSA_FIELD_dense_threshold(X) X(NonNegativeIntField, dense_threshold, selected.dense_threshold)
#define FSA_FIELD_deterministic(X) X(BoolField, deterministic, selected.deterministic)
#define FSA_FIELD_workspace_cap(X) X(OptionalByteCountField, workspace_cap, selected.workspace_cap)

// ---- the ops' lists, in schema order -------------------------------------------------------------

#define FSA_NO_ARGS(X)
#define FSA_COMPRESSION_ARGS(X) \
  FSA_FIELD_cmp_len(X)          \
  FSA_FIELD_cmp_stride(X)
// RoPE's scalars but `enabled`: the rope ops always rotate.
#define FSA_ROPE_ARGS(X)                    \
  FSA_FIELD_rope_theta(X)                   \
  FSA_FIELD_rope_llama3_scaling(X)          \
  FSA_FIELD_rope_llama3_factor(X)           \
  FSA_FIELD_rope_llama3_low_freq_factor(X)  \
  FSA_FIELD_rope_llama3_high_freq_factor(X) \
  FSA_FIELD_rope_llama3_original_max_position(X)
#define FSA_CMP_ATTN_ARGS(X) \
  FSA_COMPRESSION_ARGS(X)    \
  FSA_FIELD_scale(X)
#define FSA_SELECT_ARGS(X)  \
  FSA_COMPRESSION_ARGS(X)   \
  FSA_FIELD_block_size(X)   \
  FSA_FIELD_topk(X)         \
  FSA_FIELD_init_blocks(X)  \
  FSA_FIELD_local_blocks(X) \
  FSA_FIELD_scale(X)        \
  FSA_FIELD_aggregation(X)
// Selected attention's run options (SlcOptions).
#define FSA_SLC_OPTION_ARGS(X) \
  FSA_FIELD_path(X)            \
  FSA_FIELD_dense_threshold(X) \
  FSA_FIELD_deterministic(X)   \
  FSA_FIELD_workspace_cap(X)
#define FSA_SLC_ATTN_ARGS(X) \
  FSA_FIELD_block_size(X)    \
  FSA_FIELD_scale(X)         \
  FSA_SLC_OPTION_ARGS(X)
#define FSA_SWA_ARGS(X) \
  FSA_FIELD_window(X)   \
  FSA_FIELD_scale(X)
// Every config field of the layer (gate_mode follows the rank of the gates). The cache calls
// (nsa_prefill, nsa_decode) and their shape ops take these alone: they have no run options.
#define FSA_LAYER_CONFIG_ARGS(X) \
  FSA_COMPRESSION_ARGS(X)        \
  FSA_FIELD_block_size(X)        \
  FSA_FIELD_topk(X)              \
  FSA_FIELD_init_blocks(X)       \
  FSA_FIELD_local_blocks(X)      \
  FSA_FIELD_window(X)            \
  FSA_FIELD_scale(X)             \
  FSA_FIELD_compression(X)       \
  FSA_FIELD_aggregation(X)       \
  FSA_FIELD_rope_enabled(X)      \
  FSA_ROPE_ARGS(X)
// The whole layer: its config, then the run options it takes (NsaLayerOptions::selected).
#define FSA_LAYER_ARGS(X)   \
  FSA_LAYER_CONFIG_ARGS(X)  \
  FSA_FIELD_workspace_cap(X)
// Every row (workspace_cap twice), for the checks at the end.
#define FSA_ALL_ARGS(X) \
  FSA_LAYER_ARGS(X)     \
  FSA_SLC_OPTION_ARGS(X)

// ---- expansions ----------------------------------------------------------------------------------

// The C++ parameters of a list, each with its leading comma: `f(const Tensor& x FSA_PARAMS(list))`.
#define FSA_PARAM_(Kind, name, member) , Kind::Arg name
#define FSA_PARAMS(list) list(FSA_PARAM_)

// The OpSettings that the parameters of a list (in scope under their names) give.
#define FSA_ASSIGN_(Kind, name, member) Kind::assign(settings_.member, name, field_label(#name, #member));
#define FSA_SETTINGS(list)                  \
  [&] {                                     \
    ::fsa::torch_ext::OpSettings settings_; \
    list(FSA_ASSIGN_) return settings_;     \
  }()

// The schema text of a list: ", int cmp_len=32, int cmp_stride=16" (defaults: OpSettings{}).
#define FSA_SCHEMA_ARG_(Kind, name, member) +schema_arg<Kind>(#name, OpSettings{}.member)
#define FSA_SCHEMA(list) (std::string() list(FSA_SCHEMA_ARG_))

// The name errors give a field: its attribute path for config fields ("config.rope.theta", what a
// Python user sets), the argument name for options ("path").
const char* field_label(const char* name, const char* member);

template <class Kind>
std::string schema_arg(const char* name, const typename Kind::Member& default_value) {
  return ", " + Kind::schema_type() + " " + name + "=" + Kind::literal(default_value);
}

namespace detail {

// name == member without its first component, '.' read as '_'.
constexpr bool name_matches_member(std::string_view name, std::string_view member) {
  const std::size_t dot = member.find('.');
  if (dot == std::string_view::npos) return false;
  member.remove_prefix(dot + 1);
  if (name.size() != member.size()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    if (name[i] != (member[i] == '.' ? '_' : member[i])) return false;
  }
  return true;
}

}  // namespace detail

// Compile-time checks of every row: the name is the member's path, the kind fits the member's type.
#define FSA_CHECK_FIELD_(Kind, name, member)                                                      \
  static_assert(detail::name_matches_member(#name, #member),                                      \
                #name ": the name must be " #member " without its first component, '.' as '_'"); \
  static_assert(std::is_same_v<std::decay_t<decltype(OpSettings{}.member)>, Kind::Member>,        \
                #name ": the kind does not match the member's type");
FSA_ALL_ARGS(FSA_CHECK_FIELD_)
#undef FSA_CHECK_FIELD_

}  // namespace fsa::torch_ext
