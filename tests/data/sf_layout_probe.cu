// Prints CUTLASS's SM100 block-scaled scale-factor layout (SFA, 16-element blocks) for a [rows, K] operand:
// first its cosize in bytes, then "row kblock offset" for every scale. Used by tests/test_quant_formats.py.
#include <cstdio>
#include <cstdlib>

#include "cutlass/detail/sm100_blockscaled_layout.hpp"

int main(int argc, char** argv) {
  using namespace cute;
  using SfConfig = cutlass::detail::Sm1xxBlockScaledConfig<16>;
  if (argc != 3) {
    fprintf(stderr, "usage: %s ROWS K\n", argv[0]);
    return 2;
  }
  const int rows = atoi(argv[1]), k = atoi(argv[2]);
  auto layout = SfConfig::tile_atom_to_shape_SFA(make_shape(rows, 1, k, 1));
  printf("%d\n", int(cosize(filter_zeros(layout))));
  for (int row = 0; row < rows; ++row)
    for (int kblock = 0; kblock < k / 16; ++kblock) printf("%d %d %d\n", row, kblock, int(layout(row, kblock * 16, 0)));
  return 0;
}
