// C = P Q (or C += P Q) for small row-major float32 matrices, the Kronecker part's GEMMs.
//
// Why not Eigen: at the doped Kronecker operator's shapes (64 x 64 x 64 per row of x) Eigen's
// GEMM packs both operands on every call and ran at about 70% of the FMA peak (12.9 us for
// the two GEMMs of one 4096 x 4096 product on one Zen 4 core); broadcasting P and streaming
// rows of Q, with Q already row-major (B transposed once by the prepared operator), runs at
// the peak (9.2 us). Blocks of kRows rows x 64 columns keep 24 accumulators in registers;
// the last column block is masked, so any N works. Each C entry is summed over k in order.
#pragma once

#include <cstdint>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace lpfast {

#if defined(__AVX512F__)
inline constexpr bool kHasSmallGemm = true;

namespace detail {

// Rows [i0, i0 + RB) and columns [j0, j0 + 16 * NV) of C (the last 16 masked by `tail`).
template <int RB, int NV>
inline void small_gemm_block(const float* P, std::int64_t ldp, const float* Q, std::int64_t ldq,
                             float* C, std::int64_t ldc, std::int64_t K, std::int64_t i0,
                             std::int64_t j0, __mmask16 tail, bool accumulate) {
  __m512 acc[RB][NV];
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (std::int64_t k = 0; k < K; ++k) {
    const float* q = Q + k * ldq + j0;
    __m512 qv[NV];
    for (int v = 0; v < NV; ++v)
      qv[v] = v + 1 < NV ? _mm512_loadu_ps(q + 16 * v) : _mm512_maskz_loadu_ps(tail, q + 16 * v);
    for (int r = 0; r < RB; ++r) {
      const __m512 p = _mm512_set1_ps(P[(i0 + r) * ldp + k]);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(p, qv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < RB; ++r) {
    float* c = C + (i0 + r) * ldc + j0;
    for (int v = 0; v < NV; ++v) {
      const __mmask16 m = v + 1 < NV ? __mmask16(0xFFFF) : tail;
      __m512 out = acc[r][v];
      if (accumulate) out = _mm512_add_ps(_mm512_maskz_loadu_ps(m, c + 16 * v), out);
      _mm512_mask_storeu_ps(c + 16 * v, m, out);
    }
  }
}

template <int NV>
inline void small_gemm_columns(const float* P, std::int64_t ldp, const float* Q,
                               std::int64_t ldq, float* C, std::int64_t ldc, std::int64_t M,
                               std::int64_t K, std::int64_t j0, __mmask16 tail, bool accumulate) {
  constexpr int kRows = 6;  // 6 x 4 accumulators + 4 rows of Q: 28 of the 32 registers
  std::int64_t i0 = 0;
  for (; i0 + kRows <= M; i0 += kRows)
    small_gemm_block<kRows, NV>(P, ldp, Q, ldq, C, ldc, K, i0, j0, tail, accumulate);
  switch (M - i0) {
    case 5: small_gemm_block<5, NV>(P, ldp, Q, ldq, C, ldc, K, i0, j0, tail, accumulate); break;
    case 4: small_gemm_block<4, NV>(P, ldp, Q, ldq, C, ldc, K, i0, j0, tail, accumulate); break;
    case 3: small_gemm_block<3, NV>(P, ldp, Q, ldq, C, ldc, K, i0, j0, tail, accumulate); break;
    case 2: small_gemm_block<2, NV>(P, ldp, Q, ldq, C, ldc, K, i0, j0, tail, accumulate); break;
    case 1: small_gemm_block<1, NV>(P, ldp, Q, ldq, C, ldc, K, i0, j0, tail, accumulate); break;
    default: break;
  }
}

}  // namespace detail

// C (M x N, row stride ldc) = P (M x K, ldp) Q (K x N, ldq), all row-major; with
// `accumulate`, C += P Q (the product is formed first, then added).
inline void small_gemm(const float* P, std::int64_t ldp, const float* Q, std::int64_t ldq, float* C,
                       std::int64_t ldc, std::int64_t M, std::int64_t N, std::int64_t K,
                       bool accumulate) {
  for (std::int64_t j0 = 0; j0 < N; j0 += 64) {
    const std::int64_t w = N - j0 < 64 ? N - j0 : 64;
    const int nv = static_cast<int>((w + 15) / 16);
    const int last = static_cast<int>(w - 16 * (nv - 1));
    const auto tail = static_cast<__mmask16>((1u << last) - 1u);
    switch (nv) {
      case 4: detail::small_gemm_columns<4>(P, ldp, Q, ldq, C, ldc, M, K, j0, tail, accumulate); break;
      case 3: detail::small_gemm_columns<3>(P, ldp, Q, ldq, C, ldc, M, K, j0, tail, accumulate); break;
      case 2: detail::small_gemm_columns<2>(P, ldp, Q, ldq, C, ldc, M, K, j0, tail, accumulate); break;
      default: detail::small_gemm_columns<1>(P, ldp, Q, ldq, C, ldc, M, K, j0, tail, accumulate); break;
    }
  }
}
#else
inline constexpr bool kHasSmallGemm = false;
#endif

}  // namespace lpfast
