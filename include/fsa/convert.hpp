// Scalar conversions between fp32 and the 16-bit storage types, rounding to nearest even as the
// GPU does. For front ends that stage data on the host.
#pragma once

#include <cstdint>

namespace fsa {

float bf16_to_float(std::uint16_t bits);
std::uint16_t float_to_bf16(float value);
float half_to_float(std::uint16_t bits);
std::uint16_t float_to_half(float value);

}  // namespace fsa
