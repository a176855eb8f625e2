// The fused selection's shared-memory layout and launch shape (src/kernels/select/select_tiling.hpp)
// on the host: the layout's regions are in order and end inside the layout, and the shape chosen
// under a device's limits fits them, over a grid of group sizes, head dims, topk widths and block
// geometries.
// Plain C++: no device needed.
#include <algorithm>
#include <cstddef>
#include <iterator>
#include <string>
#include <utility>

#include "kernels/select/select_tiling.hpp"
#include "test_util.hpp"

namespace fsa::test {
namespace {

using namespace fsa::cuda::sel;

struct Geometry {
  int l, s, B;
};
const Geometry kGeometries[] = {{32, 16, 64}, {32, 16, 128}, {16, 16, 64}, {64, 16, 64}, {32, 32, 64}, {8, 4, 32}};
const int kHeads[] = {1, 2, 3, 4, 8, 16, 32, 64};
const int kDims[] = {64, 128, 192, 256};
const int kTopks[] = {16, 32, 64};

// H100 (227 KB a block may opt in to, 228 KB an SM, 1 KB reserved per block) and A100 (163 / 164 / 1).
const std::pair<std::size_t, std::size_t> kDevices[] = {{232448, 233472}, {166912, 167936}};
constexpr std::size_t kReserved = 1024;

std::string where(const Geometry& g, int heads, int dqk, int topk) {
  return "l=" + std::to_string(g.l) + " s=" + std::to_string(g.s) + " B=" + std::to_string(g.B) +
         " heads=" + std::to_string(heads) + " Dqk=" + std::to_string(dqk) + " K=" + std::to_string(topk);
}

TEST(SelectLayout, RegionsAreInOrder) {
  int checked = 0;
  for (const Geometry& g : kGeometries)
    for (const int heads : kHeads)
      for (const int dqk : kDims)
        for (const int topk : kTopks)
          for (const bool swizzled : {false, true}) {
            const SelectShape sh = choose_shape(heads, dqk, g.l, g.s, g.B, topk, std::size_t{1} << 30,
                                                target_rows(dqk), 1, swizzled);
            ASSERT_GT(sh.tokens_per_cta, 0) << where(g, heads, dqk, topk);
            const SelectSmem m(sh, dqk, topk, swizzled);
            const std::size_t offsets[] = {m.q,      m.k,          m.prob,     m.ring,     m.top,
                                           m.pending, m.row_offset, m.row_bias, m.weight,   m.capacity,
                                           m.worst,  m.pending_count};
            for (std::size_t i = 1; i < std::size(offsets); ++i)
              EXPECT_LT(offsets[i - 1], offsets[i]) << where(g, heads, dqk, topk) << " region " << i;
            // The last per-token table ends inside the layout (the swizzled variant keeps 1024 bytes
            // of slack to align its base by hand).
            EXPECT_LE(m.pending_count + sh.tokens_per_cta * sizeof(int) + (swizzled ? 1024 : 0), m.bytes)
                << where(g, heads, dqk, topk);
            ++checked;
          }
  EXPECT_GT(checked, 1000);
}

TEST(SelectLayout, ChosenShapesFitTheDeviceLimits) {
  int fits = 0;
  for (const auto& [max_optin, per_sm] : kDevices)
    for (const Geometry& g : kGeometries)
      for (const int heads : kHeads)
        for (const int dqk : kDims)
          for (const int topk : kTopks)
            for (const bool wgmma : {false, true}) {
              const SmemLimits limits = launch_limits(max_optin, per_sm, kReserved);
              const SelectShape sh = choose_launch_shape(heads, dqk, g.l, g.s, g.B, topk, limits, wgmma);
              if (sh.tokens_per_cta == 0) continue;  // the launcher's error (nothing fits)
              const bool swizzled = wgmma && sh.ctas_per_sm == 2;
              const std::size_t bytes = SelectSmem(sh, dqk, topk, swizzled).bytes;
              const std::size_t cap = sh.ctas_per_sm == 2 ? std::min(max_optin, per_sm / 2 - kReserved) : max_optin;
              EXPECT_LE(bytes, cap) << where(g, heads, dqk, topk) << " ctas/SM " << sh.ctas_per_sm;
              ++fits;
            }
  EXPECT_GT(fits, 1000);
  const SmemLimits limits = launch_limits(232448, 233472, kReserved);
  EXPECT_EQ(limits.two_per_sm, std::size_t{233472 / 2 - kReserved});
  EXPECT_EQ(limits.one_per_sm, std::size_t{232448});
}

}  // namespace
}  // namespace fsa::test
