// C = P Q (or C += P Q) for row-major matrices with short inner dimension, and the lower
// triangle of Y^T Y: the doped Kronecker operator's GEMMs, k-subspaces' assignment GEMMs,
// and every weighted Gram of the core (gram.hpp), in float and double.
//
// Why not Eigen: at these shapes Eigen's GEMM packs both operands on every call and ran at
// 60-70% of the FMA peak (the two 64 x 64 x 64 GEMMs of one 4096 x 4096 Kronecker product:
// 12.9 us on one Zen 4 core; 512 x 384 x 320 assignment chunks: 67 GFLOP/s). Broadcasting
// entries of P and streaming rows of Q (B transposed once by the prepared operator) runs near
// the peak (9.2 us; 104 GFLOP/s). Blocks of 6 rows x kNV vectors keep the accumulators in
// registers; the last column block is masked, so any N works. Each C entry is summed over k
// in order. The kernel is written once over the SIMD traits of simd.hpp (AVX-512 or AVX2 +
// FMA). The GEMMs use it with AVX-512 only (small_gemm_serves): their AVX2 speed against
// Eigen's was not measured; the Gram uses it with AVX2 too (30522 x 384 float32 on a Zen 3
// core: 82-95 ms against 88-118 ms for Eigen's rank updates, CPU time, loaded machine), and
// so do the subspace distances (distances.hpp: block_times_basis, measured there).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include <Eigen/Core>

#include "simd.hpp"
#include "types.hpp"

namespace lpfast {

#if defined(LPFAST_SIMD)
inline constexpr bool kHasSmallGemm = true;

namespace detail {

// Where the kernels read their operands: p(k, i) is P's entry (i, k) and q(k, j0) points at
// row k of Q from column j0 (a multiple of the column block width).
template <class T>
struct RowMajorOperands {  // P (M x K) and Q (K x N), row-major
  const T* P;
  std::int64_t ldp;
  const T* Q;
  std::int64_t ldq;
  T p(std::int64_t k, std::int64_t i) const { return P[i * ldp + k]; }
  const T* q(std::int64_t k, std::int64_t j0) const { return Q + k * ldq + j0; }
};
template <class T>
struct IndexedRowOperands {  // P = rows `rows` of X (row-major), Q (K x N) row-major
  const T* X;
  std::int64_t ldx;
  const std::int64_t* rows;
  const T* Q;
  std::int64_t ldq;
  T p(std::int64_t k, std::int64_t i) const { return X[rows[i] * ldx + k]; }
  const T* q(std::int64_t k, std::int64_t j0) const { return Q + k * ldq + j0; }
};
template <class T>
struct GramOperands {  // P = Y^T and Q = Y for Y (K x d) row-major: C = Y^T Y
  const T* Y;
  std::int64_t ldy;
  T p(std::int64_t k, std::int64_t i) const { return Y[k * ldy + i]; }
  const T* q(std::int64_t k, std::int64_t j0) const { return Y + k * ldy + j0; }
};

// Rows [i0, i0 + RB) and columns [j0, j0 + W * NV) of C (the last W masked by `tail`).
template <int RB, int NV, class T, class Ops>
inline void small_gemm_block(const Ops& ops, T* C, std::int64_t ldc, std::int64_t K,
                             std::int64_t i0, std::int64_t j0, bool masked,
                             typename Simd<T>::Mask tail, bool accumulate) {
  using S = Simd<T>;
  constexpr int W = S::kWidth;
  typename S::V acc[RB][NV];
  LPFAST_UNROLL for (int r = 0; r < RB; ++r)
    LPFAST_UNROLL for (int v = 0; v < NV; ++v) acc[r][v] = S::zero();
  for (std::int64_t k = 0; k < K; ++k) {
    const T* q = ops.q(k, j0);
    typename S::V qv[NV];
    LPFAST_UNROLL for (int v = 0; v < NV; ++v)
      qv[v] = v + 1 < NV || !masked ? S::load(q + W * v) : S::load(tail, q + W * v);
    LPFAST_UNROLL for (int r = 0; r < RB; ++r) {
      const typename S::V p = S::set1(ops.p(k, i0 + r));
      LPFAST_UNROLL for (int v = 0; v < NV; ++v) acc[r][v] = S::fma(p, qv[v], acc[r][v]);
    }
  }
  LPFAST_UNROLL for (int r = 0; r < RB; ++r) {
    T* c = C + (i0 + r) * ldc + j0;
    LPFAST_UNROLL for (int v = 0; v < NV; ++v) {
      typename S::V out = acc[r][v];
      if (v + 1 < NV || !masked) {
        if (accumulate) out = S::add(S::load(c + W * v), out);
        S::store(c + W * v, out);
      } else {
        if (accumulate) out = S::add(S::load(tail, c + W * v), out);
        S::store(c + W * v, tail, out);
      }
    }
  }
}

// Calls f(std::integral_constant<int, v>) for the runtime v in [1, Max].
template <int Max, class F>
inline void with_nv(int v, F&& f) {
  if constexpr (Max >= 1) {
    if (v == Max) return f(std::integral_constant<int, Max>{});
    with_nv<Max - 1>(v, f);
  }
}

// Rows [row0, M) of the column block at j0 (NV vectors wide, the last masked if `masked`).
template <int NV, class T, class Ops>
inline void small_gemm_columns(const Ops& ops, T* C, std::int64_t ldc, std::int64_t row0,
                               std::int64_t M, std::int64_t K, std::int64_t j0, bool masked,
                               typename Simd<T>::Mask tail, bool accumulate, bool lower) {
  constexpr int kRows = 6;
  constexpr int W = Simd<T>::kWidth;
  std::int64_t i0 = row0;
  for (; i0 + kRows <= M; i0 += kRows) {
    // For the lower triangle, a row block on the diagonal needs only the vectors up to its
    // last row's column: a tenth of a 384 x 384 Gram's multiply-adds.
    const std::int64_t need = lower ? (i0 + kRows - j0 + W - 1) / W : NV;
    if (need >= NV) {
      small_gemm_block<kRows, NV, T>(ops, C, ldc, K, i0, j0, masked, tail, accumulate);
    } else {
      with_nv<NV - 1>(static_cast<int>(need), [&](auto nv) {
        small_gemm_block<kRows, decltype(nv)::value, T>(ops, C, ldc, K, i0, j0, false, tail,
                                                         accumulate);
      });
    }
  }
  with_nv<kRows - 1>(static_cast<int>(M - i0), [&](auto rb) {
    small_gemm_block<decltype(rb)::value, NV, T>(ops, C, ldc, K, i0, j0, masked, tail,
                                                 accumulate);
  });
}

// Column blocks of W * kNV; with `lower` only the rows at or below each block's first column.
template <class T, class Ops>
inline void small_gemm_impl(const Ops& ops, T* C, std::int64_t ldc, std::int64_t M,
                            std::int64_t N, std::int64_t K, bool accumulate, bool lower) {
  using S = Simd<T>;
  constexpr std::int64_t kCols = S::kWidth * S::kNV;
  for (std::int64_t j0 = 0; j0 < N; j0 += kCols) {
    const std::int64_t w = N - j0 < kCols ? N - j0 : kCols;
    const int nv = static_cast<int>((w + S::kWidth - 1) / S::kWidth);
    const int last = static_cast<int>(w - S::kWidth * (nv - 1));
    const bool masked = last < S::kWidth;
    const typename S::Mask tail = S::tail(last);
    const std::int64_t row0 = lower ? (j0 < M ? j0 : M) : 0;
    with_nv<S::kNV>(nv, [&](auto v) {
      small_gemm_columns<decltype(v)::value, T>(ops, C, ldc, row0, M, K, j0, masked, tail,
                                                accumulate, lower);
    });
  }
}

}  // namespace detail

// C (M x N, row stride ldc) = P (M x K, ldp) Q (K x N, ldq), all row-major; with
// `accumulate`, C += P Q (the product is formed first, then added).
template <class T>
inline void small_gemm(const T* P, std::int64_t ldp, const T* Q, std::int64_t ldq, T* C,
                       std::int64_t ldc, std::int64_t M, std::int64_t N, std::int64_t K,
                       bool accumulate) {
  detail::small_gemm_impl<T>(detail::RowMajorOperands<T>{P, ldp, Q, ldq}, C, ldc, M, N, K,
                             accumulate, false);
}

// C (M x N) = X[rows] Q, the listed rows of X read in place.
template <class T>
inline void small_gemm_indexed(const T* X, std::int64_t ldx, const std::int64_t* rows,
                               const T* Q, std::int64_t ldq, T* C, std::int64_t ldc,
                               std::int64_t M, std::int64_t N, std::int64_t K) {
  detail::small_gemm_impl<T>(detail::IndexedRowOperands<T>{X, ldx, rows, Q, ldq}, C, ldc, M, N,
                             K, false, false);
}

// The lower triangle of C (d x d, row stride ldc) += Y^T Y for Y (K x d, row stride ldy)
// row-major (some entries just above the diagonal, inside the diagonal blocks, are written
// too). Packing Y's column panels first (so that their rows are contiguous) did not help on
// a Zen 3 core (30522 x 384 float32: 84 ms either way, /tmp microbenchmark, loaded machine).
template <class T>
inline void small_gram_lower(const T* Y, std::int64_t ldy, T* C, std::int64_t ldc,
                             std::int64_t d, std::int64_t K) {
  detail::small_gemm_impl<T>(detail::GramOperands<T>{Y, ldy}, C, ldc, d, d, K, true, true);
}

#else
inline constexpr bool kHasSmallGemm = false;
#endif

// small_gemm serves products whose Q panels (K x 64 floats, 256 KB at the limit) stay in L2;
// longer ones go to Eigen, which blocks for the cache.
inline constexpr std::int64_t kSmallGemmMaxK = 1024;

// Whether rowmajor_gemm hands a product with inner dimension K to small_gemm. Then every
// entry of C is the same in-order sum of the same numbers wherever its column sits, so equal
// columns of Q give bitwise equal columns of C; Eigen's kernels treat edge columns
// differently.
template <class T>
bool small_gemm_serves(std::int64_t K) {
  return std::is_same_v<T, float> && detail::kSimdBits == 512 && K <= kSmallGemmMaxK;
}

// C (rows x N) (+)= P (rows x K) Q (K x N), all row-major with the given row strides:
// small_gemm for float32 when it applies, Eigen otherwise.
template <class T>
void rowmajor_gemm(const T* P, std::int64_t ldp, const T* Q, std::int64_t ldq, T* C,
                   std::int64_t ldc, std::int64_t rows, std::int64_t N, std::int64_t K,
                   bool accumulate) {
#if defined(LPFAST_SIMD)
  if constexpr (std::is_same_v<T, float>) {
    if (small_gemm_serves<T>(K)) {
      small_gemm<float>(P, ldp, Q, ldq, C, ldc, rows, N, K, accumulate);
      return;
    }
  }
#endif
  using Mat = RowMat<T>;
  using Stride = Eigen::OuterStride<>;
  const Eigen::Map<const Mat, 0, Stride> p(P, rows, K, Stride(ldp));
  const Eigen::Map<const Mat, 0, Stride> q(Q, K, N, Stride(ldq));
  Eigen::Map<Mat, 0, Stride> c(C, rows, N, Stride(ldc));
  if (accumulate)
    c.noalias() += p * q;
  else
    c.noalias() = p * q;
}

// Copies the m rows of X (row stride ldx) listed in `rows` into `out` (m x K, contiguous).
template <class T>
void gather_rows(const T* X, std::int64_t ldx, const std::int64_t* rows, std::int64_t m,
                 std::int64_t K, T* out) {
  for (std::int64_t r = 0; r < m; ++r)
    std::copy(X + rows[r] * ldx, X + rows[r] * ldx + K, out + r * K);
}

// C (m x N) = X[rows] Q for the m rows of X (row stride ldx) listed in `rows`: small_gemm
// reads them in place (the copies were 5% of a p = 1 k-subspaces profile); for Eigen they are
// first copied into `scratch` (m x K).
template <class T>
void rowmajor_gemm_indexed(const T* X, std::int64_t ldx, const std::int64_t* rows, const T* Q,
                           std::int64_t ldq, T* C, std::int64_t ldc, std::int64_t m,
                           std::int64_t N, std::int64_t K, T* scratch) {
#if defined(LPFAST_SIMD)
  if constexpr (std::is_same_v<T, float>) {
    if (small_gemm_serves<T>(K)) {
      small_gemm_indexed<float>(X, ldx, rows, Q, ldq, C, ldc, m, N, K);
      return;
    }
  }
#endif
  gather_rows(X, ldx, rows, m, K, scratch);
  rowmajor_gemm(scratch, K, Q, ldq, C, ldc, m, N, K, false);
}

}  // namespace lpfast
