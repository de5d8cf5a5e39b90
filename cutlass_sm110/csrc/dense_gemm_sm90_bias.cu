// bf16 GEMM + bias, Hopper sm_90a (SigLIP qkv, o, fc2): see dense_gemm_sm90.cuh.
#include "dense_gemm_sm90.cuh"

namespace triforce {
size_t dense_sm90_bias_workspace(const DenseProblem& p) {
  return sm90::dense_workspace<cutlass::epilogue::thread::Identity>(p);
}
void dense_sm90_bias_run(const DenseProblem& p, void* ws, size_t bytes, cudaStream_t stream) {
  sm90::dense_run<cutlass::epilogue::thread::Identity>(p, ws, bytes, stream, "dense_gemm (sm90a, bias)");
}
}  // namespace triforce
