// W4A16 GEMM for Hopper (sm_90a), derived from CUTLASS example 55 (int4 x bf16, scale-only, shuffled int4 layout).
//
// The int4 weight must be the operand that goes through registers, and the TMA epilogue cannot transpose an implicit
// swap, so the problem is swapped explicitly: out^T[N, M] = W[N, K] · x^T. In CUTLASS terms A' = W (int4, K-major,
// shuffled), B' = x (bf16, K-major), D' = out^T stored column-major, i.e. `out` row-major [M, N]. The token count M is
// the N' of the swapped problem, so the tile's N is the token tile (one translation unit per token tile).
#pragma once

#include <stdexcept>
#include <string>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

#include "triforce_gemm.h"

namespace triforce::sm90 {
using namespace cute;

using MmaType            = cutlass::bfloat16_t;   // activations and the MMA
using ElementW           = cutlass::int4b_t;      // weights: signed int4, two per byte, low nibble first
using ElementScale       = cutlass::bfloat16_t;   // one scale per 128 weights along K
using ElementOut         = cutlass::bfloat16_t;
using ElementAccumulator = float;
constexpr int GroupSize  = 128;

using LayoutW   = cutlass::layout::RowMajor;     // A' = W [N, K], K-major
using LayoutX   = cutlass::layout::ColumnMajor;  // B' = x as [K, M] column-major == x [M, K] row-major
using LayoutOut = cutlass::layout::ColumnMajor;  // D' = out^T [N, M] column-major == out [M, N] row-major
constexpr int AlignmentW   = 128 / cutlass::sizeof_bits<ElementW>::value;
constexpr int AlignmentX   = 128 / cutlass::sizeof_bits<MmaType>::value;
constexpr int AlignmentOut = 128 / cutlass::sizeof_bits<ElementOut>::value;
constexpr int TileK        = 128 * 8 / cutlass::sizeof_bits<MmaType>::value;  // 64: one 128-byte swizzle row of bf16

using StrideW = cutlass::detail::TagToStrideA_t<LayoutW>;
using StrideX = cutlass::detail::TagToStrideB_t<LayoutX>;

// The shuffled weight layout. Each thread of a register-sourced wgmma reads 8 bf16 values of A (4 pairs in one row).
// Storing a warp's fragment so that each thread's values are contiguous lets the int4 be read with one wide
// shared-memory load, and permuting them as [0,2,4,6,1,3,5,7] lets the int4 -> bf16 conversion extract nibble pairs
// with a few PRMT/LOP3 instructions. Built from the wgmma A thread/value layout:
//   (m, k) of one warp's 16x16 slice  ->  (thread, value)  ->  offset = value_slot + 8 * thread.
constexpr auto make_shuffled_atom() {
  using Atom  = decltype(SM90::GMMA::rs_op_selector<MmaType, MmaType, float, Shape<_64, _16, _32>>());
  using Tr    = MMA_Traits<Atom>;
  auto tv_a   = typename Tr::ALayout{};                          // (128 threads, 8 values) -> (m, k) in 64x16
  auto mk_all = select<0, 2>(typename Tr::Shape_MNK{});          // (64, 16)
  // One warp owns a quarter of the rows: keep the first 32 threads and invert their map.
  auto tv_warp = make_layout_like(composition(tv_a, make_shape(Int<32>{}, size<1>(tv_a))));
  auto mk_warp = right_inverse(tv_warp).with_shape(shape_div(mk_all, Int<4>{}));  // (16, 16) -> thread + 32*value
  // Value slots in memory order: the conversion-friendly permutation [0,2,4,6,1,3,5,7].
  auto value_perm   = Layout<Shape<_2, _4>, Stride<_4, _1>>{};
  auto value_offset = logical_product(value_perm, Int<size<1>(tv_a) / size(value_perm)>{});
  auto tv_to_offset = select<1, 0>(logical_product(value_offset, make_layout(size<0>(tv_warp))));
  return composition(tv_to_offset, mk_warp);
}
using ShuffledAtom   = decltype(make_shuffled_atom());
using LayoutWShuffled = decltype(tile_to_shape(ShuffledAtom{}, Layout<Shape<int, int, int>, StrideW>{}));

inline LayoutWShuffled shuffled_weight_layout(int n, int k) {
  return tile_to_shape(ShuffledAtom{}, make_shape(n, k, 1));
}

// One kernel configuration: tile (128 weight rows) x (token tile) x 64, cooperative (two consumer warpgroups share
// the 128 rows), stream-K so that the few tiles of a small-M problem still spread over every SM.
template <int TokenTile>
struct W4A16Sm90 {
  using TileShape      = Shape<_128, Int<TokenTile>, Int<TileK>>;
  using ClusterShape   = Shape<_1, _1, _1>;
  using KernelSchedule = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
  using EpiSchedule    = cutlass::epilogue::TmaWarpSpecializedCooperative;
  using TileScheduler  = cutlass::gemm::StreamKScheduler;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAccumulator, ElementAccumulator,
      void, LayoutOut, AlignmentOut,  // no C operand: out = acc
      ElementOut, LayoutOut, AlignmentOut, EpiSchedule>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp,
      cute::tuple<ElementW, ElementScale>, LayoutWShuffled, AlignmentW,
      MmaType, LayoutX, AlignmentX, ElementAccumulator, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<
          static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;

  using GemmKernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,
                                                          CollectiveEpilogue, TileScheduler>;
  using Gemm        = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;
  using StrideScale = typename CollectiveMainloop::StrideScale;
  using StrideOut   = typename GemmKernel::StrideD;

  using Decomposition = cutlass::gemm::kernel::detail::DecompositionMode;
  using Reduction     = cutlass::gemm::kernel::detail::ReductionMode;

  static Decomposition decomposition(W4A16Decomposition mode) {
    switch (mode) {
      case W4A16Decomposition::kDataParallel: return Decomposition::DataParallel;
      case W4A16Decomposition::kSplitK: return Decomposition::SplitK;
      case W4A16Decomposition::kStreamK: return Decomposition::StreamK;
      default: return Decomposition::Heuristic;
    }
  }

  static typename Gemm::Arguments arguments(const W4A16Problem& p) {
    auto stride_x   = cutlass::make_cute_packed_stride(StrideX{}, make_shape(p.m, p.k, 1));
    auto stride_s   = cutlass::make_cute_packed_stride(StrideScale{}, make_shape(p.n, p.k / GroupSize, 1));
    auto stride_out = cutlass::make_cute_packed_stride(StrideOut{}, make_shape(p.n, p.m, 1));
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {p.n, p.m, p.k, 1},
        {static_cast<const ElementW*>(p.weight), shuffled_weight_layout(p.n, p.k),
         static_cast<const MmaType*>(p.x), stride_x,
         static_cast<const ElementScale*>(p.scales), stride_s, GroupSize},
        {{1.0f, 0.0f}, nullptr, stride_out, static_cast<ElementOut*>(p.out), stride_out}};
    args.hw_info.sm_count = p.sm_count;
    args.scheduler.decomposition_mode = decomposition(p.schedule.mode);
    args.scheduler.splits             = p.schedule.splits;
    args.scheduler.reduction_mode     = p.schedule.nondeterministic ? Reduction::Nondeterministic
                                                                     : Reduction::Deterministic;
    return args;
  }

  static size_t workspace(const W4A16Problem& p) { return Gemm::get_workspace_size(arguments(p)); }

  static void run(const W4A16Problem& p, void* ws, size_t ws_bytes, cudaStream_t stream, const char* name) {
    auto args = arguments(p);
    Gemm gemm;
    auto fail = [&](const char* what, cutlass::Status st) {
      throw std::runtime_error(std::string(name) + ": " + what + " failed (" + cutlassGetStatusString(st) +
                               ") for M=" + std::to_string(p.m) + " N=" + std::to_string(p.n) + " K=" +
                               std::to_string(p.k) + "; N must be a multiple of 16 and K of 128");
    };
    size_t need = Gemm::get_workspace_size(args);
    if (ws_bytes < need)
      throw std::runtime_error(std::string(name) + ": workspace has " + std::to_string(ws_bytes) + " bytes, needs " +
                               std::to_string(need) + "; size it with w4a16_workspace_size(M, N, K)");
    if (auto st = gemm.can_implement(args); st != cutlass::Status::kSuccess) fail("can_implement", st);
    if (auto st = gemm.initialize(args, ws, stream); st != cutlass::Status::kSuccess) fail("initialize", st);
    if (auto st = gemm.run(stream); st != cutlass::Status::kSuccess) fail("run", st);
  }
};

}  // namespace triforce::sm90
