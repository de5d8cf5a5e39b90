// W4A16 GEMM, Hopper sm_90a, token tile 64, clusters of 2 CTAs along the weight rows sharing each x tile (TMA
// multicast): see w4a16_gemm_sm90.cuh.
#include "w4a16_gemm_sm90.cuh"

namespace triforce {
using W4A16Sm90Tok64C2 = sm90::W4A16Sm90<64, 2>;  // tile 128 x 64 x 64, cluster 2x1x1, stream-K

size_t w4a16_sm90_tok64_c2_workspace(const W4A16Problem& p) { return W4A16Sm90Tok64C2::workspace(p); }

void w4a16_sm90_tok64_c2_run(const W4A16Problem& p, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  W4A16Sm90Tok64C2::run(p, workspace, workspace_bytes, stream, "w4a16_gemm (sm90a, token tile 64, cluster 2)");
}
}  // namespace triforce
