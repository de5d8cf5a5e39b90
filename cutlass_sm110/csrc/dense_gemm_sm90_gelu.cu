// bf16 GEMM + bias + GELU (tanh form), Hopper sm_90a (SigLIP fc1): see dense_gemm_sm90.cuh.
#include "dense_gemm_sm90.cuh"

namespace triforce {
size_t dense_sm90_gelu_workspace(const DenseProblem& p) {
  return sm90::dense_workspace<cutlass::epilogue::thread::GELU_taylor>(p);
}
void dense_sm90_gelu_run(const DenseProblem& p, void* ws, size_t bytes, cudaStream_t stream) {
  sm90::dense_run<cutlass::epilogue::thread::GELU_taylor>(p, ws, bytes, stream, "dense_gemm (sm90a, bias + GELU)");
}
}  // namespace triforce
