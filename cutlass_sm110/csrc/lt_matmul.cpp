// cuBLASLt matmuls whose algorithm the caller chose (triforce/runtime/gemm_tuning.py times cuBLASLt's heuristic
// candidates at load time): torch's GEMM ops take only the heuristic's first answer, which for Pi0.5's odd row counts
// (528 prefix tokens, 512 image tokens) is not always the fastest. Plain C++ against cublasLt.h, no torch headers.
#include <cublasLt.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "triforce_gemm.h"

namespace triforce {
namespace {

void check(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw std::runtime_error(std::string("lt_matmul: ") + what + " failed: " + cublasLtGetStatusName(status) + " (" +
                             cublasLtGetStatusString(status) + ")");
  }
}

// One handle for the process (cuBLASLt handles are thread-safe for matmuls; the engine runs on one GPU).
cublasLtHandle_t handle() {
  static cublasLtHandle_t h = [] {
    cublasLtHandle_t created = nullptr;
    check(cublasLtCreate(&created), "cublasLtCreate");
    return created;
  }();
  return h;
}

template <typename T>
void set(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const T& value) {
  check(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)), "cublasLtMatmulDescSetAttribute");
}

// The descriptors of one problem, destroyed with it. cuBLASLt is column-major: out^T [N, M] = w [N, K] . x^T, with
// w and x both K-major (the TN form FP8 needs), so cuBLASLt's m is our N and its n our M.
struct Described {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr, d = nullptr;

  explicit Described(const LtProblem& p) {
    check(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
    set(op, CUBLASLT_MATMUL_DESC_TRANSA, CUBLAS_OP_T);
    set(op, CUBLASLT_MATMUL_DESC_TRANSB, CUBLAS_OP_N);
    if (p.e4m3_in) {
      set(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, static_cast<const void*>(p.scale_w));
      set(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, static_cast<const void*>(p.scale_x));
      set(op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, static_cast<int8_t>(p.fast_accum ? 1 : 0));
    }
    cublasLtEpilogue_t epilogue = p.bias ? (p.gelu ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_BIAS)
                                         : (p.gelu ? CUBLASLT_EPILOGUE_GELU : CUBLASLT_EPILOGUE_DEFAULT);
    set(op, CUBLASLT_MATMUL_DESC_EPILOGUE, epilogue);
    if (p.bias) {
      set(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, p.bias);
      set(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, CUDA_R_16BF);
    }
    const cudaDataType_t in = p.e4m3_in ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
    check(cublasLtMatrixLayoutCreate(&a, in, p.k, p.n, p.k), "cublasLtMatrixLayoutCreate(w)");
    check(cublasLtMatrixLayoutCreate(&b, in, p.k, p.m, p.k), "cublasLtMatrixLayoutCreate(x)");
    // C is never read (beta = 0); with an E4M3 output its type must still be a 16-bit one
    check(cublasLtMatrixLayoutCreate(&c, CUDA_R_16BF, p.n, p.m, p.n), "cublasLtMatrixLayoutCreate(c)");
    check(cublasLtMatrixLayoutCreate(&d, p.e4m3_out ? CUDA_R_8F_E4M3 : CUDA_R_16BF, p.n, p.m, p.n),
          "cublasLtMatrixLayoutCreate(out)");
  }
  ~Described() {
    for (auto layout : {a, b, c, d}) {
      if (layout) cublasLtMatrixLayoutDestroy(layout);
    }
    if (op) cublasLtMatmulDescDestroy(op);
  }
  Described(const Described&) = delete;
  Described& operator=(const Described&) = delete;
};

int64_t config(const cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoConfigAttributes_t attr) {
  // every config attribute read here is a 32-bit integer (uint32 / int32 / uint16 stored in 4 bytes)
  uint32_t value = 0;
  size_t written = 0;
  if (cublasLtMatmulAlgoConfigGetAttribute(&algo, attr, &value, sizeof(value), &written) != CUBLAS_STATUS_SUCCESS) {
    return -1;
  }
  return int64_t(value);
}

}  // namespace

int lt_matmul_algos(const LtProblem& p, int max_algos, size_t max_workspace, uint8_t* algos, int64_t* info) {
  const Described desc(p);
  cublasLtMatmulPreference_t pref = nullptr;
  check(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
  std::vector<cublasLtMatmulHeuristicResult_t> results(max_algos);
  int found = 0;
  cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
  const uint64_t workspace = max_workspace;
  const uint32_t aligned = 16;  // what the bindings check of every pointer: no candidate may assume more
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
    status = cublasLtMatmulPreferenceSetAttribute(pref, attr, &aligned, sizeof(aligned));
    if (status != CUBLAS_STATUS_SUCCESS) break;
  }
  if (status == CUBLAS_STATUS_SUCCESS) {
    status = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                                  sizeof(workspace));
  }
  if (status == CUBLAS_STATUS_SUCCESS) {
    status = cublasLtMatmulAlgoGetHeuristic(handle(), desc.op, desc.a, desc.b, desc.c, desc.d, pref, max_algos,
                                            results.data(), &found);
  }
  cublasLtMatmulPreferenceDestroy(pref);
  if (status == CUBLAS_STATUS_NOT_SUPPORTED) return 0;  // no algorithm for this problem: the caller says so
  check(status, "cublasLtMatmulAlgoGetHeuristic");
  int n = 0;
  for (int i = 0; i < found; ++i) {
    const auto& r = results[i];
    if (r.state != CUBLAS_STATUS_SUCCESS) continue;
    static_assert(sizeof(r.algo) == kLtAlgoBytes, "cublasLtMatmulAlgo_t changed size");
    std::memcpy(algos + size_t(n) * kLtAlgoBytes, &r.algo, kLtAlgoBytes);
    int64_t* row = info + size_t(n) * kLtAlgoFields;
    row[0] = int64_t(r.workspaceSize);
    row[1] = config(r.algo, CUBLASLT_ALGO_CONFIG_ID);
    row[2] = config(r.algo, CUBLASLT_ALGO_CONFIG_TILE_ID);
    row[3] = config(r.algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM);
    row[4] = config(r.algo, CUBLASLT_ALGO_CONFIG_STAGES_ID);
    row[5] = config(r.algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID);
    ++n;
  }
  return n;
}

void lt_matmul_run(const LtProblem& p, const uint8_t* algo, void* workspace, size_t workspace_bytes,
                   cudaStream_t stream) {
  const Described desc(p);
  cublasLtMatmulAlgo_t chosen;
  std::memcpy(&chosen, algo, kLtAlgoBytes);
  const float alpha = 1.0f, beta = 0.0f;
  // C (never read: beta = 0) is the output itself where their types match, else absent
  const void* c = p.e4m3_out ? nullptr : p.out;
  check(cublasLtMatmul(handle(), desc.op, &alpha, p.w, desc.a, p.x, desc.b, &beta, c, desc.c, p.out, desc.d,
                       &chosen, workspace, workspace_bytes, stream),
        "cublasLtMatmul");
}

}  // namespace triforce
