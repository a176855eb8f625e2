#include "common/rope_frequency.hpp"

#include <cmath>
#include <numbers>

namespace fsa {

float rope_frequency(const RopeConfig& rope, int pair, int dim) {
  const double w = std::pow(static_cast<double>(rope.theta), -2.0 * pair / dim);
  if (!rope.llama3_scaling) return static_cast<float>(w);
  // The llama3 rule: short wavelengths keep w, long ones are slowed by `factor`, and the band in
  // between interpolates linearly in original / wavelength.
  const double factor = rope.llama3_factor;
  const double low = rope.llama3_low_freq_factor, high = rope.llama3_high_freq_factor;
  const double original = rope.llama3_original_max_position;
  const double wavelength = 2.0 * std::numbers::pi / w;
  if (wavelength < original / high) return static_cast<float>(w);
  if (wavelength > original / low) return static_cast<float>(w / factor);
  const double smooth = (original / wavelength - low) / (high - low);
  return static_cast<float>((1.0 - smooth) * w / factor + smooth * w);
}

}  // namespace fsa
