// C = P Q (or C += P Q) for row-major float32 matrices with short inner dimension, and the
// lower triangle of Y^T Y: the doped Kronecker operator's GEMMs, and k-subspaces' assignment
// GEMMs and Grams.
//
// Why not Eigen: at these shapes Eigen's GEMM packs both operands on every call and ran at
// 60-70% of the FMA peak (the two 64 x 64 x 64 GEMMs of one 4096 x 4096 Kronecker product:
// 12.9 us on one Zen 4 core; 512 x 384 x 320 assignment chunks: 67 GFLOP/s). Broadcasting
// entries of P and streaming rows of Q (B transposed once by the prepared operator) runs near
// the peak (9.2 us; 104 GFLOP/s). Blocks of kRows rows x 64 columns keep 24 accumulators in
// registers; the last column block is masked, so any N works. Each C entry is summed over k
// in order.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include <Eigen/Core>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace lpfast {

#if defined(__AVX512F__)
inline constexpr bool kHasSmallGemm = true;

namespace detail {

// The accumulators live in registers only if every loop over them is unrolled; GCC left
// them in memory (a store per FMA, 1.6x slower) when the kernel was not inlined.
#if defined(__clang__)
#define LPFAST_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define LPFAST_UNROLL _Pragma("GCC unroll 16")
#else
#define LPFAST_UNROLL
#endif

// Where the kernels read their operands: p(k, i) is P's entry (i, k) and q(k) points at row
// k of Q.
struct RowMajorOperands {  // P (M x K) and Q (K x N), row-major
  const float* P;
  std::int64_t ldp;
  const float* Q;
  std::int64_t ldq;
  float p(std::int64_t k, std::int64_t i) const { return P[i * ldp + k]; }
  const float* q(std::int64_t k) const { return Q + k * ldq; }
};
struct IndexedRowOperands {  // P = rows `rows` of X (row-major), Q (K x N) row-major
  const float* X;
  std::int64_t ldx;
  const std::int64_t* rows;
  const float* Q;
  std::int64_t ldq;
  float p(std::int64_t k, std::int64_t i) const { return X[rows[i] * ldx + k]; }
  const float* q(std::int64_t k) const { return Q + k * ldq; }
};
struct GramOperands {  // P = Y^T and Q = Y for Y (K x d) row-major: C = Y^T Y
  const float* Y;
  std::int64_t ldy;
  float p(std::int64_t k, std::int64_t i) const { return Y[k * ldy + i]; }
  const float* q(std::int64_t k) const { return Y + k * ldy; }
};
// Rows [i0, i0 + RB) and columns [j0, j0 + 16 * NV) of C (the last 16 masked by `tail`).
template <int RB, int NV, class Ops>
inline void small_gemm_block(const Ops& ops, float* C, std::int64_t ldc, std::int64_t K,
                             std::int64_t i0, std::int64_t j0, __mmask16 tail, bool accumulate) {
  __m512 acc[RB][NV];
  LPFAST_UNROLL for (int r = 0; r < RB; ++r)
    LPFAST_UNROLL for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (std::int64_t k = 0; k < K; ++k) {
    const float* q = ops.q(k) + j0;
    __m512 qv[NV];
    LPFAST_UNROLL for (int v = 0; v < NV; ++v)
      qv[v] = v + 1 < NV ? _mm512_loadu_ps(q + 16 * v) : _mm512_maskz_loadu_ps(tail, q + 16 * v);
    LPFAST_UNROLL for (int r = 0; r < RB; ++r) {
      const __m512 p = _mm512_set1_ps(ops.p(k, i0 + r));
      LPFAST_UNROLL for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(p, qv[v], acc[r][v]);
    }
  }
  LPFAST_UNROLL for (int r = 0; r < RB; ++r) {
    float* c = C + (i0 + r) * ldc + j0;
    LPFAST_UNROLL for (int v = 0; v < NV; ++v) {
      const __mmask16 m = v + 1 < NV ? __mmask16(0xFFFF) : tail;
      __m512 out = acc[r][v];
      if (accumulate) out = _mm512_add_ps(_mm512_maskz_loadu_ps(m, c + 16 * v), out);
      _mm512_mask_storeu_ps(c + 16 * v, m, out);
    }
  }
}

// Rows [row0, M) of the column block at j0.
template <int NV, class Ops>
inline void small_gemm_columns(const Ops& ops, float* C, std::int64_t ldc, std::int64_t row0,
                               std::int64_t M, std::int64_t K, std::int64_t j0, __mmask16 tail,
                               bool accumulate, bool lower) {
  constexpr int kRows = 6;  // 6 x 4 accumulators + 4 rows of Q: 28 of the 32 registers
  std::int64_t i0 = row0;
  for (; i0 + kRows <= M; i0 += kRows) {
    // For the lower triangle, a row block on the diagonal needs only the vectors up to its
    // last row's column: a tenth of a 384 x 384 Gram's multiply-adds.
    const std::int64_t need = lower ? (i0 + kRows - j0 + 15) / 16 : NV;
    switch (need < NV ? need : NV) {
      case 1:
        small_gemm_block<kRows, 1>(ops, C, ldc, K, i0, j0, NV == 1 ? tail : 0xFFFF, accumulate);
        break;
      case 2:
        small_gemm_block<kRows, 2>(ops, C, ldc, K, i0, j0, NV == 2 ? tail : 0xFFFF, accumulate);
        break;
      case 3:
        small_gemm_block<kRows, 3>(ops, C, ldc, K, i0, j0, NV == 3 ? tail : 0xFFFF, accumulate);
        break;
      default:
        small_gemm_block<kRows, NV>(ops, C, ldc, K, i0, j0, tail, accumulate);
    }
  }
  switch (M - i0) {
#define LPFAST_SMALL_GEMM_REST(R)                                            \
  case R:                                                                    \
    small_gemm_block<R, NV>(ops, C, ldc, K, i0, j0, tail, accumulate);       \
    break;
    LPFAST_SMALL_GEMM_REST(5)
    LPFAST_SMALL_GEMM_REST(4)
    LPFAST_SMALL_GEMM_REST(3)
    LPFAST_SMALL_GEMM_REST(2)
    LPFAST_SMALL_GEMM_REST(1)
#undef LPFAST_SMALL_GEMM_REST
    default: break;
  }
}

// Column blocks of 64; with `lower` only the rows at or below each block's first column.
template <class Ops>
inline void small_gemm_impl(const Ops& ops, float* C, std::int64_t ldc, std::int64_t M,
                            std::int64_t N, std::int64_t K, bool accumulate, bool lower) {
  for (std::int64_t j0 = 0; j0 < N; j0 += 64) {
    const std::int64_t w = N - j0 < 64 ? N - j0 : 64;
    const int nv = static_cast<int>((w + 15) / 16);
    const int last = static_cast<int>(w - 16 * (nv - 1));
    const auto tail = static_cast<__mmask16>((1u << last) - 1u);
    const std::int64_t row0 = lower ? (j0 < M ? j0 : M) : 0;
    switch (nv) {
#define LPFAST_SMALL_GEMM_NV(V)                                                       \
  case V:                                                                             \
    small_gemm_columns<V>(ops, C, ldc, row0, M, K, j0, tail, accumulate, lower);      \
    break;
      LPFAST_SMALL_GEMM_NV(4)
      LPFAST_SMALL_GEMM_NV(3)
      LPFAST_SMALL_GEMM_NV(2)
      LPFAST_SMALL_GEMM_NV(1)
#undef LPFAST_SMALL_GEMM_NV
      default: break;
    }
  }
}

}  // namespace detail

// C (M x N, row stride ldc) = P (M x K, ldp) Q (K x N, ldq), all row-major; with
// `accumulate`, C += P Q (the product is formed first, then added).
inline void small_gemm(const float* P, std::int64_t ldp, const float* Q, std::int64_t ldq, float* C,
                       std::int64_t ldc, std::int64_t M, std::int64_t N, std::int64_t K,
                       bool accumulate) {
  detail::small_gemm_impl(detail::RowMajorOperands{P, ldp, Q, ldq}, C, ldc, M, N, K, accumulate,
                          false);
}

// C (M x N) = X[rows] Q, the listed rows of X read in place.
inline void small_gemm_indexed(const float* X, std::int64_t ldx, const std::int64_t* rows,
                               const float* Q, std::int64_t ldq, float* C, std::int64_t ldc,
                               std::int64_t M, std::int64_t N, std::int64_t K) {
  detail::small_gemm_impl(detail::IndexedRowOperands{X, ldx, rows, Q, ldq}, C, ldc, M, N, K,
                          false, false);
}

// The lower triangle of C (d x d, row stride ldc) += Y^T Y for Y (K x d, row stride ldy)
// row-major (some entries just above the diagonal, inside the diagonal blocks, are written
// too).
inline void small_gram_lower(const float* Y, std::int64_t ldy, float* C, std::int64_t ldc,
                             std::int64_t d, std::int64_t K) {
  detail::small_gemm_impl(detail::GramOperands{Y, ldy}, C, ldc, d, d, K, true, true);
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
  return std::is_same_v<T, float> && kHasSmallGemm && K <= kSmallGemmMaxK;
}

// C (rows x N) (+)= P (rows x K) Q (K x N), all row-major with the given row strides:
// small_gemm for float32 when it applies, Eigen otherwise.
template <class T>
void rowmajor_gemm(const T* P, std::int64_t ldp, const T* Q, std::int64_t ldq, T* C,
                   std::int64_t ldc, std::int64_t rows, std::int64_t N, std::int64_t K,
                   bool accumulate) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    if (small_gemm_serves<T>(K)) {
      small_gemm(P, ldp, Q, ldq, C, ldc, rows, N, K, accumulate);
      return;
    }
  }
#endif
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
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
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    if (small_gemm_serves<T>(K)) {
      small_gemm_indexed(X, ldx, rows, Q, ldq, C, ldc, m, N, K);
      return;
    }
  }
#endif
  gather_rows(X, ldx, rows, m, K, scratch);
  rowmajor_gemm(scratch, K, Q, ldq, C, ldc, m, N, K, false);
}

}  // namespace lpfast
