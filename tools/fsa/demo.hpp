// `fsa demo`: the full NSA forward and backward on a problem, phase by phase and as one layer.
#pragma once

#include <string>

#include "problem.hpp"

namespace fsa::tool {

enum class DevicePreference { kAuto, kCpu, kCuda };

// Prints the device used, per-phase times and checksums; returns the process exit code. With a
// csv_path, also writes one `phase,ms` row per phase there.
int run_demo(const ProblemSpec& spec, DevicePreference preference, const std::string& csv_path = "");

}  // namespace fsa::tool
