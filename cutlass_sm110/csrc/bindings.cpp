// The extension module triforce_kernels._C. Tensor checks that need torch live here; the CUTLASS translation units
// take raw pointers (triforce_gemm.h). Ops of a family are compiled and registered only in that family's build
// (TRIFORCE_FAMILY_HOPPER / TRIFORCE_FAMILY_BLACKWELL), so a hopper wheel has no nvfp4 ops at all.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/extension.h>

#include <cmath>
#include <utility>

#include "act_quant.h"
#include "triforce_gemm.h"

#if defined(TRIFORCE_FAMILY_HOPPER) == defined(TRIFORCE_FAMILY_BLACKWELL)
#error "define exactly one of TRIFORCE_FAMILY_HOPPER or TRIFORCE_FAMILY_BLACKWELL"
#endif

namespace {

const char* family() {
#if defined(TRIFORCE_FAMILY_HOPPER)
  return "hopper";
#else
  return "blackwell";
#endif
}

void check_tensor(const at::Tensor& t, const char* op, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor (got ", t.device(), ")");
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, " (got ", t.scalar_type(), ")");
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, op, ": ", name, " must be 16-byte aligned");
}

// The stream-K/persistent grids (and so the workspace sizes) depend on the SM count of the current device.
int sm_count() {
  int device = 0, count = 0;
  TORCH_CHECK(cudaGetDevice(&device) == cudaSuccess, "triforce_kernels: cudaGetDevice failed");
  TORCH_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) == cudaSuccess,
              "triforce_kernels: cannot read the SM count of device ", device);
  return count;
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// ── W4A16 ───────────────────────────────────────────────────────────────────────────────────────────────────────
triforce::W4A16Problem w4a16_problem(const at::Tensor& x, const at::Tensor& w, const at::Tensor& s, at::Tensor& out) {
  const char* op = "w4a16_gemm";
  check_tensor(x, op, "x", at::kBFloat16);
  check_tensor(w, op, "packed_weight", at::kByte);
  check_tensor(s, op, "packed_scales", at::kBFloat16);
  check_tensor(out, op, "out", at::kBFloat16);
  TORCH_CHECK(x.dim() == 2 && out.dim() == 2 && w.dim() == 2 && s.dim() == 2, op, ": x, weight, scales, out must be 2-D");
  int64_t m = x.size(0), k = x.size(1), n = out.size(1);
  TORCH_CHECK(out.size(0) == m, op, ": out has ", out.size(0), " rows, x has ", m);
  TORCH_CHECK(w.size(0) == n && w.size(1) * 2 == k, op, ": packed_weight must be [", n, ", ", k / 2, "], got ", w.sizes());
  TORCH_CHECK(s.size(0) * 128 == k && s.size(1) == n, op, ": packed_scales must be [", k / 128, ", ", n, "], got ", s.sizes());
  TORCH_CHECK(m > 0 && n % 16 == 0 && k % 128 == 0, op, ": needs M > 0, N % 16 == 0, K % 128 == 0 (got M=", m, " N=", n, " K=", k, ")");
  return {x.data_ptr(), w.data_ptr(), s.data_ptr(), out.data_ptr(), int(m), int(n), int(k), sm_count(), {}};
}

// mode: W4A16Decomposition (0 heuristic, 1 data-parallel, 2 split-K, 3 stream-K); Blackwell takes only 0.
triforce::W4A16Schedule w4a16_schedule(int64_t mode, int64_t splits, bool nondeterministic) {
  TORCH_CHECK(mode >= 0 && mode <= 3 && splits >= 1, "w4a16 schedule: mode must be 0..3 and splits >= 1 (got mode=",
              mode, " splits=", splits, ")");
#if defined(TRIFORCE_FAMILY_BLACKWELL)
  TORCH_CHECK(mode == 0 && splits == 1 && !nondeterministic,
              "w4a16 schedule: the Blackwell W4A16 kernel has one schedule (heuristic); got mode=", mode);
#endif
  return {static_cast<triforce::W4A16Decomposition>(mode), int(splits), nondeterministic};
}

triforce::W4A16Problem w4a16_shape_only(int64_t m, int64_t n, int64_t k) {
  TORCH_CHECK(m > 0 && n > 0 && n % 16 == 0 && k > 0 && k % 128 == 0,
              "w4a16_workspace_size: needs M > 0, N % 16 == 0, K % 128 == 0 (got M=", m, " N=", n, " K=", k, ")");
  return {nullptr, nullptr, nullptr, nullptr, int(m), int(n), int(k), sm_count(), {}};
}

#if defined(TRIFORCE_FAMILY_HOPPER)
// Token tile by M: small tiles keep the tensor cores from computing padding at decode-like M, where the GEMM is
// bound by the weight read; 128 at prefill M, where it is bound by math and each weight tile is converted once.
size_t w4a16_workspace_for(const triforce::W4A16Problem& p) {
  if (p.m <= 16) return triforce::w4a16_sm90_tok16_workspace(p);
  if (p.m <= 64) return triforce::w4a16_sm90_tok64_workspace(p);
  return triforce::w4a16_sm90_tok128_workspace(p);
}
void w4a16_run(const triforce::W4A16Problem& p, void* ws, size_t bytes, cudaStream_t st) {
  if (p.m <= 16) return triforce::w4a16_sm90_tok16_run(p, ws, bytes, st);
  if (p.m <= 64) return triforce::w4a16_sm90_tok64_run(p, ws, bytes, st);
  return triforce::w4a16_sm90_tok128_run(p, ws, bytes, st);
}
#else
size_t w4a16_workspace_for(const triforce::W4A16Problem& p) { return triforce::w4a16_sm100_workspace(p); }
void w4a16_run(const triforce::W4A16Problem& p, void* ws, size_t bytes, cudaStream_t st) {
  triforce::w4a16_sm100_run(p, ws, bytes, st);
}
#endif

int64_t w4a16_workspace_size(int64_t m, int64_t n, int64_t k, int64_t mode, int64_t splits, bool nondeterministic) {
  auto p = w4a16_shape_only(m, n, k);
  p.schedule = w4a16_schedule(mode, splits, nondeterministic);
  return int64_t(w4a16_workspace_for(p));
}

void w4a16_gemm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& s, at::Tensor out, at::Tensor workspace,
                int64_t mode, int64_t splits, bool nondeterministic) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto p = w4a16_problem(x, w, s, out);
  p.schedule = w4a16_schedule(mode, splits, nondeterministic);
  check_tensor(workspace, "w4a16_gemm", "workspace", at::kByte);
  w4a16_run(p, workspace.data_ptr(), size_t(workspace.numel()), current_stream());
}

// Canonical int4 [N, K/2] + scales [N, K/128] -> what the family's kernel reads. Scales become [K/128, N] (the
// mixed-input mainloops want them N-major); Hopper also shuffles the int4 (w4a16_gemm_sm90.cuh).
std::tuple<at::Tensor, at::Tensor> w4a16_prepack(const at::Tensor& qweight, const at::Tensor& scales) {
  const char* op = "w4a16_prepack";
  check_tensor(qweight, op, "qweight", at::kByte);
  check_tensor(scales, op, "scales", at::kBFloat16);
  TORCH_CHECK(qweight.dim() == 2 && scales.dim() == 2, op, ": qweight and scales must be 2-D");
  int64_t n = qweight.size(0), k = qweight.size(1) * 2;
  TORCH_CHECK(n > 0 && n % 16 == 0 && k > 0 && k % 128 == 0, op, ": needs N % 16 == 0 and K % 128 == 0 (got N=", n, " K=", k, ")");
  TORCH_CHECK(scales.size(0) == n && scales.size(1) * 128 == k, op, ": scales must be [", n, ", ", k / 128, "], got ",
              scales.sizes());
  const c10::cuda::CUDAGuard guard(qweight.device());
  at::Tensor packed_scales = scales.t().contiguous();
#if defined(TRIFORCE_FAMILY_HOPPER)
  auto offsets = at::empty({n * k}, qweight.options().dtype(at::kLong));
  triforce::w4a16_sm90_reorder_offsets(offsets.data_ptr<int64_t>(), int(n), int(k), current_stream());
  auto nibbles = at::stack({at::bitwise_and(qweight, 0xF), at::bitwise_right_shift(qweight, 4)}, -1).reshape({n * k});
  auto shuffled = at::empty_like(nibbles).index_put_({offsets}, nibbles).reshape({n * k / 2, 2});
  auto low = shuffled.select(1, 0), high = shuffled.select(1, 1);
  at::Tensor packed_weight = at::bitwise_or(low, at::bitwise_left_shift(high, 4)).reshape({n, k / 2}).contiguous();
#else
  at::Tensor packed_weight = qweight.clone();  // tcgen05 mixed-input reads the canonical K-major int4 as is
#endif
  return {packed_weight, packed_scales};
}

// A CUDA bf16 [rows, cols] operand read by 16-byte rows: unit column stride, row-strided views allowed.
void check_rows(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.scalar_type() == at::kBFloat16 && t.dim() == 2 && t.stride(1) == 1 &&
                  t.stride(0) % 8 == 0 && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0,
              op, ": ", name, " must be a CUDA bf16 2-D tensor with unit column stride and 16-byte aligned rows");
}

// x (row-strided bf16 view allowed, 1..64 rows) and the few-row kernel's fragment-layout weights and scales of N
// weight rows (gate and up rows both counted for the GeGLU form).
void check_skinny_operands(const at::Tensor& x, const at::Tensor& w, const at::Tensor& s, int64_t n, const char* op) {
  check_rows(x, op, "x");
  check_tensor(w, op, "weight", at::kByte);
  check_tensor(s, op, "scales", at::kBFloat16);
  const int64_t m = x.size(0), k = x.size(1);
  TORCH_CHECK(m >= 1 && m <= 64 && n % 16 == 0 && k % 128 == 0, op,
              ": needs 1 <= M <= 64, N % 16 == 0, K % 128 == 0 (got M=", m, " N=", n, " K=", k, ")");
  TORCH_CHECK(w.dim() == 3 && w.size(0) == n / 16 && w.size(1) == k / 64 && w.size(2) == 512, op,
              ": weight must be [", n / 16, ", ", k / 64, ", 512] (pack_int4_fragments), got ", w.sizes());
  TORCH_CHECK(s.dim() == 3 && s.size(0) == n / 16 && s.size(1) == k / 128 && s.size(2) == 16, op,
              ": scales must be [", n / 16, ", ", k / 128, ", 16] (pack_scales_fragments), got ", s.sizes());
}

// Few rows (M <= 64): the weight-streaming MMA kernel of every family on the fragment layout
// (formats.pack_int4_fragments / pack_scales_fragments). out (fp32) is added to: zero it, or pass the residual.
void w4a16_skinny(const at::Tensor& x, const at::Tensor& w, const at::Tensor& s, at::Tensor out,
                  const c10::optional<at::Tensor>& gate, int64_t splits, int64_t tiles_per_warp, bool dependent,
                  int64_t depth, int64_t cta_warps) {
  const char* op = "w4a16_skinny";
  TORCH_CHECK(out.is_cuda() && out.scalar_type() == at::kFloat && out.dim() == 2 && out.stride(1) == 1, op,
              ": out must be a CUDA fp32 [M, N] with unit column stride");
  check_skinny_operands(x, w, s, out.size(1), op);
  const int64_t m = x.size(0), k = x.size(1), n = out.size(1);
  TORCH_CHECK(out.size(0) == m, op, ": out has ", out.size(0), " rows, x has ", m);
  const float* gate_ptr = nullptr;
  if (gate.has_value()) {
    check_tensor(*gate, op, "gate", at::kFloat);
    TORCH_CHECK(gate->numel() == n, op, ": gate must have N = ", n, " elements, got ", gate->numel());
    gate_ptr = gate->data_ptr<float>();
  }
  TORCH_CHECK(splits >= 0 && (tiles_per_warp == 0 || tiles_per_warp == 1 || tiles_per_warp == 2), op,
              ": splits >= 0 (0: fill the GPU) and tiles_per_warp 0 (default), 1 or 2; got ", splits, ", ",
              tiles_per_warp);
  const c10::cuda::CUDAGuard guard(x.device());
  const int rt =
      tiles_per_warp ? int(tiles_per_warp) : triforce::w4a16_skinny_default_tiles_per_warp(int(m), int(depth));
  triforce::W4A16SkinnyProblem p{x.data_ptr(), w.data_ptr(), s.data_ptr(), gate_ptr, out.data_ptr<float>(), nullptr,
                                 int(m), int(n), int(k), x.stride(0), out.stride(0), int(splits), rt, dependent,
                                 sm_count(), 0, int(depth), int(cta_warps)};
  triforce::w4a16_skinny_run(p, current_stream());
}

// The same kernel with gate/up interleaved in 8-row blocks (formats.interleave_gate_up, then the fragment packing):
// act[M, N/2] (bf16) = gelu_tanh(x @ gate^T) * (x @ up^T), written (the expert's gate/up + GeGLU in one launch).
void w4a16_skinny_geglu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& s, at::Tensor act,
                        bool dependent, int64_t stages) {
  const char* op = "w4a16_skinny_geglu";
  TORCH_CHECK(act.is_cuda() && act.scalar_type() == at::kBFloat16 && act.dim() == 2 && act.stride(1) == 1, op,
              ": act must be a CUDA bf16 [M, N/2] with unit column stride");
  check_skinny_operands(x, w, s, 2 * act.size(1), op);
  const int64_t m = x.size(0), k = x.size(1), n = 2 * act.size(1);
  TORCH_CHECK(act.size(0) == m, op, ": act has ", act.size(0), " rows, x has ", m);
  const c10::cuda::CUDAGuard guard(x.device());
  triforce::W4A16SkinnyProblem p{x.data_ptr(), w.data_ptr(), s.data_ptr(), nullptr, nullptr, act.data_ptr(),
                                 int(m), int(n), int(k), x.stride(0), act.stride(0), 1, 1, dependent, sm_count(),
                                 int(stages)};
  triforce::w4a16_skinny_run(p, current_stream());
}

// Split-KV attention of few query rows (the denoise step) in one launch, the key blocks one cluster's CTAs:
// out[R, D] = softmax(q k^T / sqrt(D) + bias) v over one kv head. static_keys: keys [0, static_keys) are not
// written by the kernels before it (read before griddepcontrol.wait under a dependent launch).
void mqa_cluster_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                           at::Tensor out, int64_t static_keys, int64_t max_splits, bool dependent) {
  const char* op = "mqa_cluster_attention";
  for (auto [t, name] : {std::pair{&q, "q"}, {&k, "k"}, {&v, "v"}, {&out, "out"}}) check_rows(*t, op, name);
  check_tensor(bias, op, "bias", at::kBFloat16);
  const int64_t rows = q.size(0), d = q.size(1), keys = k.size(0);
  TORCH_CHECK(d == 64 || d == 128 || d == 256, op, ": head dim must be 64, 128 or 256, got ", d);
  TORCH_CHECK(k.size(1) == d && v.size(1) == d && v.size(0) == keys && bias.dim() == 1 && bias.size(0) == keys, op,
              ": k, v must be [T, ", d, "] and bias [T]; got k ", k.sizes(), ", v ", v.sizes(), ", bias ", bias.sizes());
  TORCH_CHECK(out.size(0) == rows && out.size(1) == d, op, ": out must be [", rows, ", ", d, "], got ", out.sizes());
  TORCH_CHECK(rows >= 1 && keys >= 1 && static_keys >= 0 && static_keys <= keys, op,
              ": needs rows >= 1, keys >= 1 and 0 <= static_keys <= keys (got ", rows, ", ", keys, ", ", static_keys,
              ")");
  const c10::cuda::CUDAGuard guard(q.device());
  triforce::MqaClusterProblem p{q.data_ptr(), k.data_ptr(), v.data_ptr(), bias.data_ptr(), out.data_ptr(),
                                int(rows), int(keys), int(d), int(static_keys), int(max_splits),
                                q.stride(0), k.stride(0), v.stride(0), out.stride(0),
                                float(1.4426950408889634 / std::sqrt(double(d))), dependent};
  triforce::mqa_cluster_attention_run(p, current_stream());
}

// ── NVFP4 (Blackwell only) ──────────────────────────────────────────────────────────────────────────────────────
#if defined(TRIFORCE_FAMILY_BLACKWELL)
// Swizzled scale-factor bytes of a [rows, K] operand: 128x4 atoms of 512 bytes (rows padded to 128, K/16 to 4).
int64_t nvfp4_sf_bytes(int64_t rows, int64_t k) {
  TORCH_CHECK(rows > 0 && k > 0 && k % 16 == 0, "nvfp4_sf_bytes: needs rows > 0 and K % 16 == 0 (got ", rows, ", ", k, ")");
  return (rows + 127) / 128 * 128 * ((k / 16 + 3) / 4 * 4);
}

triforce::Nvfp4Problem nvfp4_shape_only(int64_t m, int64_t n, int64_t k) {
  TORCH_CHECK(m > 0 && n > 0 && n % 8 == 0 && k > 0 && k % 128 == 0,
              "nvfp4: needs M > 0, N % 8 == 0, K % 128 == 0 (got M=", m, " N=", n, " K=", k, ")");
  return {nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, int(m), int(n), int(k), sm_count()};
}

int64_t nvfp4_workspace_size(int64_t m, int64_t n, int64_t k) {
  return int64_t(triforce::nvfp4_sm100_workspace(nvfp4_shape_only(m, n, k)));
}

void nvfp4_gemm(const at::Tensor& a, const at::Tensor& a_sf, const at::Tensor& b, const at::Tensor& b_sf,
                const at::Tensor& alpha, at::Tensor out, at::Tensor workspace) {
  const char* op = "nvfp4_gemm";
  for (auto [t, name] : {std::pair{&a, "a"}, {&a_sf, "a_sf"}, {&b, "b"}, {&b_sf, "b_sf"}, {&workspace, "workspace"}})
    check_tensor(*t, op, name, at::kByte);
  check_tensor(alpha, op, "alpha", at::kFloat);
  check_tensor(out, op, "out", at::kBFloat16);
  int64_t m = a.size(0), k = a.size(1) * 2, n = b.size(0);
  TORCH_CHECK(b.size(1) * 2 == k, op, ": a is [", m, ", ", k / 2, "] but b is ", b.sizes());
  TORCH_CHECK(out.size(0) == m && out.size(1) == n, op, ": out must be [", m, ", ", n, "], got ", out.sizes());
  TORCH_CHECK(alpha.numel() == 1, op, ": alpha must have one element");
  TORCH_CHECK(a_sf.numel() == nvfp4_sf_bytes(m, k), op, ": a_sf must have ", nvfp4_sf_bytes(m, k), " bytes");
  TORCH_CHECK(b_sf.numel() == nvfp4_sf_bytes(n, k), op, ": b_sf must have ", nvfp4_sf_bytes(n, k), " bytes");
  const c10::cuda::CUDAGuard guard(a.device());
  auto p = nvfp4_shape_only(m, n, k);
  p.a = a.data_ptr(); p.a_sf = a_sf.data_ptr(); p.b = b.data_ptr(); p.b_sf = b_sf.data_ptr();
  p.alpha = alpha.data_ptr<float>(); p.out = out.data_ptr();
  triforce::nvfp4_sm100_run(p, workspace.data_ptr(), size_t(workspace.numel()), current_stream());
}
#endif

// ── fused activation quantization (act_quant.cu: arch-generic, every family) ─────────────────────────────────────
// The Python wrappers check shapes with full messages; these checks keep a direct _C call from reading out of bounds.
void check_rows(const at::Tensor& t, const char* op, const char* name, int64_t rows, int64_t cols) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, op, ": ", name, " must be [", rows, ", ", cols,
              "], got ", t.sizes());
}

bool norm_weight_is_bf16(const at::Tensor& w, const char* op, int64_t dim) {
  check_tensor(w, op, "weight", w.scalar_type() == at::kBFloat16 ? at::kBFloat16 : at::kFloat);
  TORCH_CHECK(w.dim() == 1 && w.size(0) == dim, op, ": weight must be [", dim, "], got ", w.sizes());
  return w.scalar_type() == at::kBFloat16;
}

void check_scalar_scale(const at::Tensor& t, const char* op, const char* name) {
  check_tensor(t, op, name, at::kFloat);
  TORCH_CHECK(t.numel() == 1, op, ": ", name, " must have one element");
}

void check_nvfp4_out(const at::Tensor& out, const at::Tensor& out_sf, const char* op, int64_t rows, int64_t cols) {
  check_tensor(out, op, "out", at::kByte);
  check_rows(out, op, "out", rows, cols / 2);
  check_tensor(out_sf, op, "out_sf", at::kByte);
  const auto sf_bytes = int64_t(triforce::act_quant_nvfp4_sf_bytes(int(rows), int(cols)));
  TORCH_CHECK(out_sf.numel() == sf_bytes, op, ": out_sf must have ", sf_bytes, " bytes, got ", out_sf.numel());
}

void rmsnorm_quant_fp8(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& inv_scale, at::Tensor out,
                       double eps) {
  const char* op = "rmsnorm_quant_fp8";
  check_tensor(x, op, "x", at::kBFloat16);
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D");
  const bool bf16_weight = norm_weight_is_bf16(weight, op, x.size(1));
  check_scalar_scale(inv_scale, op, "inv_scale");
  check_tensor(out, op, "out", at::kFloat8_e4m3fn);
  check_rows(out, op, "out", x.size(0), x.size(1));
  const c10::cuda::CUDAGuard guard(x.device());
  triforce::rmsnorm_quant_fp8(x.data_ptr(), weight.data_ptr(), bf16_weight, inv_scale.data_ptr<float>(),
                              out.data_ptr(), int(x.size(0)), int(x.size(1)), float(eps), current_stream());
}

void rmsnorm_quant_nvfp4(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& global_scale, at::Tensor out,
                         at::Tensor out_sf, double eps) {
  const char* op = "rmsnorm_quant_nvfp4";
  check_tensor(x, op, "x", at::kBFloat16);
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D");
  const bool bf16_weight = norm_weight_is_bf16(weight, op, x.size(1));
  check_scalar_scale(global_scale, op, "global_scale");
  check_nvfp4_out(out, out_sf, op, x.size(0), x.size(1));
  const c10::cuda::CUDAGuard guard(x.device());
  triforce::rmsnorm_quant_nvfp4(x.data_ptr(), weight.data_ptr(), bf16_weight, global_scale.data_ptr<float>(),
                                out.data_ptr(), out_sf.data_ptr(), int(x.size(0)), int(x.size(1)), float(eps),
                                current_stream());
}

void geglu_quant_fp8(const at::Tensor& gate_up, const at::Tensor& inv_scale, at::Tensor out) {
  const char* op = "geglu_quant_fp8";
  check_tensor(gate_up, op, "gate_up", at::kBFloat16);
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.size(1) % 2 == 0, op, ": gate_up must be [M, 2I]");
  check_scalar_scale(inv_scale, op, "inv_scale");
  check_tensor(out, op, "out", at::kFloat8_e4m3fn);
  check_rows(out, op, "out", gate_up.size(0), gate_up.size(1) / 2);
  const c10::cuda::CUDAGuard guard(gate_up.device());
  triforce::geglu_quant_fp8(gate_up.data_ptr(), inv_scale.data_ptr<float>(), out.data_ptr(), int(gate_up.size(0)),
                            int(gate_up.size(1) / 2), current_stream());
}

void geglu_quant_nvfp4(const at::Tensor& gate_up, const at::Tensor& global_scale, at::Tensor out, at::Tensor out_sf) {
  const char* op = "geglu_quant_nvfp4";
  check_tensor(gate_up, op, "gate_up", at::kBFloat16);
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.size(1) % 2 == 0, op, ": gate_up must be [M, 2I]");
  check_scalar_scale(global_scale, op, "global_scale");
  check_nvfp4_out(out, out_sf, op, gate_up.size(0), gate_up.size(1) / 2);
  const c10::cuda::CUDAGuard guard(gate_up.device());
  triforce::geglu_quant_nvfp4(gate_up.data_ptr(), global_scale.data_ptr<float>(), out.data_ptr(), out_sf.data_ptr(),
                              int(gate_up.size(0)), int(gate_up.size(1) / 2), current_stream());
}

void quant_nvfp4(const at::Tensor& x, const at::Tensor& global_scale, at::Tensor out, at::Tensor out_sf) {
  const char* op = "quant_nvfp4";
  check_tensor(x, op, "x", at::kBFloat16);
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D");
  check_scalar_scale(global_scale, op, "global_scale");
  check_nvfp4_out(out, out_sf, op, x.size(0), x.size(1));
  const c10::cuda::CUDAGuard guard(x.device());
  triforce::quant_nvfp4(x.data_ptr(), global_scale.data_ptr<float>(), out.data_ptr(), out_sf.data_ptr(),
                        int(x.size(0)), int(x.size(1)), current_stream());
}

// ── cuBLASLt with a chosen algorithm ──────────────────────────────────────────────────────────────────────────
triforce::LtProblem lt_problem(const at::Tensor& x, const at::Tensor& w, const at::Tensor& out,
                               const c10::optional<at::Tensor>& scale_x, const c10::optional<at::Tensor>& scale_w,
                               const c10::optional<at::Tensor>& bias, bool gelu, bool fast_accum) {
  const char* op = "lt_matmul";
  const bool e4m3 = x.scalar_type() == at::kFloat8_e4m3fn;
  const auto in = e4m3 ? at::kFloat8_e4m3fn : at::kBFloat16;
  check_tensor(x, op, "x", in);
  check_tensor(w, op, "w", in);
  const bool e4m3_out = out.scalar_type() == at::kFloat8_e4m3fn;
  TORCH_CHECK(e4m3 || !e4m3_out, op, ": an E4M3 output needs E4M3 inputs");
  check_tensor(out, op, "out", e4m3_out ? at::kFloat8_e4m3fn : at::kBFloat16);
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && out.dim() == 2, op, ": x, w, out must be 2-D");
  const int64_t m = x.size(0), k = x.size(1), n = w.size(0);
  TORCH_CHECK(w.size(1) == k, op, ": w has ", w.size(1), " columns, x has ", k);
  TORCH_CHECK(out.size(0) == m && out.size(1) == n, op, ": out must be [", m, ", ", n, "], got ", out.sizes());
  TORCH_CHECK(m > 0 && (k * x.element_size()) % 16 == 0 && (n * out.element_size()) % 16 == 0, op,
              ": needs M > 0 and 16-byte rows of x and out (got M=", m, " N=", n, " K=", k, ")");
  TORCH_CHECK(e4m3 == (scale_x.has_value() && scale_w.has_value()), op,
              ": scale_x and scale_w are given exactly when the inputs are E4M3");
  if (e4m3) {
    check_tensor(*scale_x, op, "scale_x", at::kFloat);
    check_tensor(*scale_w, op, "scale_w", at::kFloat);
    TORCH_CHECK(scale_x->numel() == 1 && scale_w->numel() == 1, op, ": scale_x and scale_w must be scalars");
  }
  TORCH_CHECK(e4m3 || !fast_accum, op, ": fast_accum is an FP8 option");
  if (bias.has_value()) {
    check_tensor(*bias, op, "bias", at::kBFloat16);
    TORCH_CHECK(bias->numel() == n, op, ": bias must have ", n, " elements, got ", bias->numel());
  }
  return {x.data_ptr(), w.data_ptr(), out.data_ptr(), e4m3 ? scale_x->data_ptr<float>() : nullptr,
          e4m3 ? scale_w->data_ptr<float>() : nullptr, bias.has_value() ? bias->data_ptr() : nullptr,
          int(m), int(n), int(k), e4m3, e4m3_out, gelu, fast_accum};
}

std::tuple<at::Tensor, at::Tensor> lt_matmul_algos(const at::Tensor& x, const at::Tensor& w, const at::Tensor& out,
                                                   const c10::optional<at::Tensor>& scale_x,
                                                   const c10::optional<at::Tensor>& scale_w,
                                                   const c10::optional<at::Tensor>& bias, bool gelu, bool fast_accum,
                                                   int64_t max_algos, int64_t max_workspace) {
  const auto p = lt_problem(x, w, out, scale_x, scale_w, bias, gelu, fast_accum);
  TORCH_CHECK(max_algos > 0 && max_algos <= 256 && max_workspace >= 0,
              "lt_matmul_algos: max_algos must be 1..256 and max_workspace >= 0");
  const c10::cuda::CUDAGuard guard(x.device());
  auto algos = at::empty({max_algos, triforce::kLtAlgoBytes}, at::kByte);
  auto info = at::empty({max_algos, triforce::kLtAlgoFields}, at::kLong);
  const int n = triforce::lt_matmul_algos(p, int(max_algos), size_t(max_workspace), algos.data_ptr<uint8_t>(),
                                          info.data_ptr<int64_t>());
  return {algos.narrow(0, 0, n).clone(), info.narrow(0, 0, n).clone()};
}

void lt_matmul(const at::Tensor& x, const at::Tensor& w, at::Tensor out, const c10::optional<at::Tensor>& scale_x,
               const c10::optional<at::Tensor>& scale_w, const c10::optional<at::Tensor>& bias, bool gelu,
               bool fast_accum, const at::Tensor& algo, at::Tensor workspace) {
  const auto p = lt_problem(x, w, out, scale_x, scale_w, bias, gelu, fast_accum);
  TORCH_CHECK(!algo.is_cuda() && algo.scalar_type() == at::kByte && algo.is_contiguous() &&
                  algo.numel() == triforce::kLtAlgoBytes,
              "lt_matmul: algo must be a CPU uint8 tensor of ", triforce::kLtAlgoBytes, " bytes (a row of lt_matmul_algos)");
  check_tensor(workspace, "lt_matmul", "workspace", at::kByte);
  const c10::cuda::CUDAGuard guard(x.device());
  triforce::lt_matmul_run(p, algo.data_ptr<uint8_t>(), workspace.data_ptr(), size_t(workspace.numel()),
                          current_stream());
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Thor Triforce CUTLASS kernels";
  m.attr("family") = family();
  m.def("w4a16_prepack", &w4a16_prepack, "canonical int4 [N,K/2] + bf16 scales [N,K/128] -> (packed weight, scales)");
  m.def("w4a16_workspace_size", &w4a16_workspace_size, "workspace bytes of w4a16_gemm for (M, N, K, schedule)",
        py::arg("m"), py::arg("n"), py::arg("k"), py::arg("mode") = 0, py::arg("splits") = 1,
        py::arg("nondeterministic") = false);
  m.def("w4a16_gemm", &w4a16_gemm, "out[M,N] = x[M,K] @ dequant(W)^T (bf16 out, int4 W, group 128)", py::arg("x"),
        py::arg("packed_weight"), py::arg("packed_scales"), py::arg("out"), py::arg("workspace"), py::arg("mode") = 0,
        py::arg("splits") = 1, py::arg("nondeterministic") = false);
  m.def("w4a16_skinny", &w4a16_skinny, "out[M,N] (fp32) += [gate *] x[M,K] @ dequant(W)^T for M <= 64, fragment layout",
        py::arg("x"), py::arg("weight"), py::arg("scales"), py::arg("out"), py::arg("gate") = py::none(),
        py::arg("splits") = 0, py::arg("tiles_per_warp") = 0, py::arg("dependent") = false, py::arg("depth") = 0,
        py::arg("cta_warps") = 0);
  m.def("w4a16_skinny_geglu", &w4a16_skinny_geglu, "act[M,N/2] = gelu_tanh(x @ gate^T) * (x @ up^T), gate/up "
        "interleaved, M <= 64", py::arg("x"), py::arg("weight"), py::arg("scales"), py::arg("act"),
        py::arg("dependent") = false, py::arg("stages") = 0);
  m.def("set_chain_carveout", &triforce::set_chain_carveout, "preferred shared-memory carveout (percent, "
        "-1: the driver's choice) of the wheel's later dependent launches (few-row W4A16, mqa_cluster_attention)", py::arg("percent"));
  m.def("mqa_cluster_attention", &mqa_cluster_attention, "out[R,D] = softmax(q k^T/sqrt(D) + bias) v, one kv head, "
        "few rows (split-KV over one cluster's CTAs, one launch)", py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("bias"), py::arg("out"), py::arg("static_keys") = 0, py::arg("max_splits") = 0,
        py::arg("dependent") = false);
  m.def("lt_matmul_algos", &lt_matmul_algos, "cuBLASLt's heuristic candidates for out = epilogue(x @ w^T): (algos "
        "uint8 [n, 64], info int64 [n, 6]: workspace, algo id, tile, split-K, stages, cluster)", py::arg("x"),
        py::arg("w"), py::arg("out"), py::arg("scale_x"), py::arg("scale_w"), py::arg("bias"), py::arg("gelu"),
        py::arg("fast_accum"), py::arg("max_algos"), py::arg("max_workspace"));
  m.def("lt_matmul", &lt_matmul, "out[M,N] = epilogue(scale_x * scale_w * x @ w^T + bias) by cuBLASLt with a chosen "
        "algorithm (bf16 or E4M3 in; bf16, or E4M3 from E4M3, out)", py::arg("x"), py::arg("w"), py::arg("out"),
        py::arg("scale_x"), py::arg("scale_w"), py::arg("bias"), py::arg("gelu"), py::arg("fast_accum"),
        py::arg("algo"), py::arg("workspace"));
  m.def("rmsnorm_quant_fp8", &rmsnorm_quant_fp8, "Gemma RMSNorm of bf16 x, then fp8 e4m3 (* inv_scale, saturated)");
  m.def("rmsnorm_quant_nvfp4", &rmsnorm_quant_nvfp4, "Gemma RMSNorm of bf16 x, then NVFP4 + swizzled block scales");
  m.def("geglu_quant_fp8", &geglu_quant_fp8, "gelu_tanh(gate) * up of bf16 [M, 2I], then fp8 e4m3");
  m.def("geglu_quant_nvfp4", &geglu_quant_nvfp4, "gelu_tanh(gate) * up of bf16 [M, 2I], then NVFP4");
  m.def("quant_nvfp4", &quant_nvfp4, "bf16 [M, K] -> NVFP4 codes [M, K/2] + swizzled block scales");
#if defined(TRIFORCE_FAMILY_BLACKWELL)
  m.def("nvfp4_sf_bytes", &nvfp4_sf_bytes, "bytes of a swizzled NVFP4 scale-factor tensor for [rows, K]");
  m.def("nvfp4_workspace_size", &nvfp4_workspace_size, "workspace bytes of nvfp4_gemm for (M, N, K)");
  m.def("nvfp4_gemm", &nvfp4_gemm, "out[M,N] = alpha * dequant(a) @ dequant(b)^T (NVFP4 in, bf16 out)");
#endif
}
