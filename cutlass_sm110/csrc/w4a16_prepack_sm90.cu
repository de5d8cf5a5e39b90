// Hopper W4A16 weight prepack: where each canonical int4 element goes in the shuffled layout of w4a16_gemm_sm90.cuh.
// The GPU writes the element offset of every (n, k); the Python wrapper scatters the nibbles with it (once, at load).
#include <stdexcept>
#include <string>

#include "w4a16_gemm_sm90.cuh"

namespace triforce {
namespace {
__global__ void shuffled_offsets_kernel(int64_t* offsets, sm90::LayoutWShuffled layout, int n, int k) {
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(n) * k) return;
  int row = int(i / k), col = int(i % k);
  offsets[i] = layout(row, col, 0);
}
}  // namespace

void w4a16_sm90_reorder_offsets(int64_t* offsets, int n, int k, cudaStream_t stream) {
  constexpr int threads = 256;
  int64_t total = int64_t(n) * k;
  auto layout = sm90::shuffled_weight_layout(n, k);
  // The shuffle atom covers 16 rows x 16 k: a shape it does not tile would map elements past the end.
  if (int64_t(cute::cosize(layout)) != total)
    throw std::runtime_error("w4a16_prepack (sm90a): N=" + std::to_string(n) + " K=" + std::to_string(k) +
                             " is not a whole number of 16x16 shuffle atoms; N must be a multiple of 16");
  auto blocks = unsigned((total + threads - 1) / threads);
  shuffled_offsets_kernel<<<blocks, threads, 0, stream>>>(offsets, layout, n, k);
  if (auto err = cudaGetLastError(); err != cudaSuccess)
    throw std::runtime_error(std::string("w4a16_prepack (sm90a): offset kernel launch failed: ") +
                             cudaGetErrorString(err));
}
}  // namespace triforce
