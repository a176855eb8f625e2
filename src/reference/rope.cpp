// Rotary embedding, GPT-NeoX rotate-half (docs/semantics.md section 2).
#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "common/rope_frequency.hpp"
#include "parallel.hpp"
#include "reference.hpp"

namespace fsa::ref {

namespace {
constexpr std::int64_t kRowsPerItem = 256;
}  // namespace

template <class T>
void rope_apply(const RopeConfig& rope, const Varlen& rows, int position_stride, int heads, int dim, const T* x,
                T* y, bool inverse) {
  rope_apply(rope, RowPositions::starting(rows), position_stride, heads, dim, x, y, inverse);
}

template <class T>
void rope_apply(const RopeConfig& rope, const RowPositions& positions, int position_stride, int heads, int dim,
                const T* x, T* y, bool inverse) {
  const Varlen& rows = *positions.rows;
  const int half = dim / 2;
  std::vector<float> frequency(static_cast<std::size_t>(half));
  for (int i = 0; i < half; ++i) frequency[static_cast<std::size_t>(i)] = rope_frequency(rope, i, dim);
  std::vector<std::array<std::int64_t, 2>> items;
  for (int b = 0; b < rows.num_seqs(); ++b)
    for (std::int64_t r0 = 0; r0 < rows.length(b); r0 += kRowsPerItem) items.push_back({b, r0});

  parallel_for(static_cast<std::int64_t>(items.size()), [&](std::int64_t item) {
    const int b = static_cast<int>(items[item][0]);
    const std::int64_t r_end = std::min(rows.length(b), items[item][1] + kRowsPerItem);
    std::vector<T> cosines(static_cast<std::size_t>(half)), sines(static_cast<std::size_t>(half));
    for (std::int64_t r = items[item][1]; r < r_end; ++r) {
      const std::int64_t position = positions.position(b, r) * position_stride;
      // Angles in fp32, as the GPU computes them; the rotation itself in T.
      for (int i = 0; i < half; ++i) {
        const float angle = static_cast<float>(position) * frequency[static_cast<std::size_t>(i)];
        cosines[static_cast<std::size_t>(i)] = static_cast<T>(std::cos(angle));
        const T sine = static_cast<T>(std::sin(angle));
        sines[static_cast<std::size_t>(i)] = inverse ? -sine : sine;
      }
      for (int h = 0; h < heads; ++h) {
        const std::int64_t offset = ((rows.start(b) + r) * heads + h) * dim;
        const T* in = x + offset;
        T* out = y + offset;
        for (int i = 0; i < half; ++i) {
          const T first = in[i], second = in[i + half];
          const T c = cosines[static_cast<std::size_t>(i)], sn = sines[static_cast<std::size_t>(i)];
          out[i] = first * c - second * sn;
          out[i + half] = second * c + first * sn;
        }
      }
    }
  });
}

template void rope_apply<float>(const RopeConfig&, const Varlen&, int, int, int, const float*, float*, bool);
template void rope_apply<double>(const RopeConfig&, const Varlen&, int, int, int, const double*, double*, bool);
template void rope_apply<float>(const RopeConfig&, const RowPositions&, int, int, int, const float*, float*, bool);
template void rope_apply<double>(const RopeConfig&, const RowPositions&, int, int, int, const double*, double*,
                                 bool);

}  // namespace fsa::ref
