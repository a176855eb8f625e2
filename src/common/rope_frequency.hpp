// The RoPE frequency table shared by the CPU reference and the CUDA launcher, so that both rotate
// by the same fp32 angles. Host-only C++ below both backends: it includes only the public config.
//
// Declared here and compiled once (rope_frequency.cpp) rather than inline: the llama3 rule's
// double arithmetic may be contracted into FMAs where the compiler targets the build machine
// (-march=native) and not elsewhere, and one definition gives every caller the same bits.
#pragma once

#include "fsa/config.hpp"

namespace fsa {

// The frequency w_i of pair i (i < dim / 2), llama3 scaling applied when enabled: evaluated in
// double and rounded to fp32 once, so the value is the same whatever the libm's float functions.
float rope_frequency(const RopeConfig& rope, int pair, int dim);

}  // namespace fsa
