#include "fields.hpp"

#include <c10/util/Exception.h>

#include <cstdio>
#include <cstring>
#include <span>

namespace fsa::torch_ext {

namespace {

template <class Enum>
struct EnumName {
  Enum value;
  std::string_view name;
};

constexpr EnumName<CompressionKind> kCompressionNames[] = {{CompressionKind::kLinear, "linear"},
                                                           {CompressionKind::kMean, "mean"}};
constexpr EnumName<ScoreAggregation> kAggregationNames[] = {{ScoreAggregation::kGroupSum, "group_sum"},
                                                            {ScoreAggregation::kFirstHead, "first_head"}};
constexpr EnumName<SlcPath> kSlcPathNames[] = {{SlcPath::kAuto, "auto"},
                                               {SlcPath::kKvOuter, "kv-outer"},
                                               {SlcPath::kSplit, "split"},
                                               {SlcPath::kQueryOuter, "query-outer"}};

std::span<const EnumName<CompressionKind>> names_of(CompressionKind) { return kCompressionNames; }
std::span<const EnumName<ScoreAggregation>> names_of(ScoreAggregation) { return kAggregationNames; }
std::span<const EnumName<SlcPath>> names_of(SlcPath) { return kSlcPathNames; }

// "'a', 'b' or 'c'"
template <class Enum>
std::string quoted_names() {
  const auto names = names_of(Enum{});
  std::string text;
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i > 0) text += i + 1 == names.size() ? " or " : ", ";
    text += "'" + std::string(names[i].name) + "'";
  }
  return text;
}

}  // namespace

void IntField::assign(int& member, Arg value, const char* label) {
  TORCH_CHECK_VALUE(value >= INT32_MIN && value <= INT32_MAX, label, ": ", value, " does not fit in an int");
  member = static_cast<int>(value);
}

void NonNegativeIntField::assign(int& member, Arg value, const char* label) {
  TORCH_CHECK_VALUE(value >= 0 && value <= INT32_MAX, label, ": expected an int >= 0 (0 = the library's), got ",
                    value);
  member = static_cast<int>(value);
}

void ByteCountField::assign(std::size_t& member, Arg value, const char* label) {
  TORCH_CHECK_VALUE(value >= 0, label, ": expected a byte count >= 0, got ", value);
  member = static_cast<std::size_t>(value);
}

std::string FloatField::literal(float value) {
  // 9 significant digits read back as the same float.
  char text[32];
  std::snprintf(text, sizeof text, "%.9g", static_cast<double>(value));
  return text;
}

template <class Enum>
void EnumField<Enum>::assign(Enum& member, Arg value, const char* label) {
  for (const auto& entry : names_of(Enum{})) {
    if (value == c10::string_view(entry.name.data(), entry.name.size())) {
      member = entry.value;
      return;
    }
  }
  TORCH_CHECK_VALUE(false, label, ": expected ", quoted_names<Enum>(), ", got '", std::string(value), "'");
}

template <class Enum>
std::string EnumField<Enum>::literal(Enum value) {
  for (const auto& entry : names_of(Enum{})) {
    if (entry.value == value) {
      std::string text = "\"";
      text += entry.name;
      return text + "\"";
    }
  }
  TORCH_CHECK(false, "fsa: an enum default without a schema name");
}

template struct EnumField<CompressionKind>;
template struct EnumField<ScoreAggregation>;
template struct EnumField<SlcPath>;

const char* field_label(const char* name, const char* member) {
  return std::strncmp(member, "config.", 7) == 0 ? member : name;
}

}  // namespace fsa::torch_ext
