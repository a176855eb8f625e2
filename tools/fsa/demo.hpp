// `fsa demo`: the full NSA forward and backward on a problem, phase by phase and as one layer.
#pragma once

#include "problem.hpp"

namespace fsa::tool {

enum class DevicePreference { kAuto, kCpu, kCuda };

// Prints the device used, per-phase times and checksums; returns the process exit code.
int run_demo(const ProblemSpec& spec, DevicePreference preference);

}  // namespace fsa::tool
