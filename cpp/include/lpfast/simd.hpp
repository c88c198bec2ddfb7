// The vector instructions of the Gram/GEMM (small_gemm.hpp), CSR (csr.hpp) and SELL
// (sell.hpp) kernels: one small traits class Simd<T> per (ISA, scalar), chosen once here
// from the compiler's target macros. AVX-512 where the compiler targets it (-march=native on
// such a CPU), else AVX2 + FMA; LPFAST_SIMD is defined when either is, and the kernels fall
// back to Eigen or scalar loops without it. No other header includes <immintrin.h>.
//
// kNV vectors per row of a GEMM block: kRows x kNV accumulators + kNV row vectors of Q + one
// broadcast fit the register file (AVX-512: 6 x 4 + 4 of 32; AVX2: 6 x 2 + 2 + 1 of 16).
// kFastGather: a hardware gather beats scalar loads for CSR rows (AVX-512 float on Zen 4:
// 1.15x over the scalar loop, where compiler-vectorized gathers were 1.6x slower; AVX2's
// gather was not measured, so CSR stays scalar there). fetch(x, idx) is x[idx[0 .. kWidth)]
// as one vector, by whichever way measured fastest for SELL's slices (sell.hpp).
#pragma once

#include <cstdint>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#define LPFAST_SIMD 1
#include <immintrin.h>
#endif

// The accumulators live in registers only if every loop over them is unrolled; GCC left
// them in memory (a store per FMA, 1.6x slower) when the GEMM kernel was not inlined.
#if defined(__clang__)
#define LPFAST_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define LPFAST_UNROLL _Pragma("GCC unroll 16")
#else
#define LPFAST_UNROLL
#endif

namespace lpfast {
namespace detail {

template <class T>
struct Simd;

// x[idx[0 .. W)] through a buffer: scalar loads, then one vector load.
template <class S, class T, class J>
inline typename S::V fetch_buffered(const T* x, const J* idx) {
  alignas(64) T buf[S::kWidth];
  for (int c = 0; c < S::kWidth; ++c) buf[c] = x[idx[c]];
  return S::load(buf);
}

#if defined(__AVX512F__)
inline constexpr int kSimdBits = 512;

// Index vectors of gathers: one int32 per lane (16 for float, 8 for double).
inline __m256i index8(const std::uint16_t* idx) {
  return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(idx)));
}
inline __m256i index8(const std::int32_t* idx) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx));
}

template <>
struct Simd<float> {
  using V = __m512;
  using Mask = __mmask16;
  using Index = __m512i;
  static constexpr int kWidth = 16, kNV = 4;
  static constexpr bool kFastGather = true;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load(Mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void store(float* p, Mask m, V v) { _mm512_mask_storeu_ps(p, m, v); }
  static Mask tail(int last) { return static_cast<Mask>((1u << last) - 1u); }
  static float sum(V v) { return _mm512_reduce_add_ps(v); }
  static Index index(const std::int32_t* p) { return _mm512_loadu_si512(p); }
  static Index index(Mask m, const std::int32_t* p) { return _mm512_maskz_loadu_epi32(m, p); }
  static V gather(const float* x, Index i) { return _mm512_i32gather_ps(i, x, 4); }
  static V gather(Mask m, const float* x, Index i) {
    return _mm512_mask_i32gather_ps(zero(), m, i, x, 4);
  }
  // Lanes 0-7 by scalar loads inserted into registers, lanes 8-15 by one 8-wide gather: the
  // load ports and the gather unit busy at once (SELL, 4096 x 4096 at 1%, one Zen 4 core:
  // 83 us with gathers, 49 us through a buffer, 42 us mixed; bitwise equal results).
  template <class J>
  static V fetch(const float* x, const J* idx) {
    auto four = [&](int b) {
      __m128 v = _mm_load_ss(x + idx[b]);
      v = _mm_insert_ps(v, _mm_load_ss(x + idx[b + 1]), 0x10);
      v = _mm_insert_ps(v, _mm_load_ss(x + idx[b + 2]), 0x20);
      return _mm_insert_ps(v, _mm_load_ss(x + idx[b + 3]), 0x30);
    };
    const __m256 hi = _mm256_i32gather_ps(x, index8(idx + 8), 4);
    const __m256 lo = _mm256_insertf128_ps(_mm256_castps128_ps256(four(0)), four(4), 1);
    // The two halves joined as doubles: _mm512_insertf32x8 would need AVX512DQ.
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lo)),
                                               _mm256_castps_pd(hi), 1));
  }
};

template <>
struct Simd<double> {
  using V = __m512d;
  using Mask = __mmask8;
  using Index = __m256i;
  static constexpr int kWidth = 8, kNV = 4;
  static constexpr bool kFastGather = true;
  static V zero() { return _mm512_setzero_pd(); }
  static V load(const double* p) { return _mm512_loadu_pd(p); }
  static V load(Mask m, const double* p) { return _mm512_maskz_loadu_pd(m, p); }
  static V set1(double x) { return _mm512_set1_pd(x); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
  static void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  static void store(double* p, Mask m, V v) { _mm512_mask_storeu_pd(p, m, v); }
  static Mask tail(int last) { return static_cast<Mask>((1u << last) - 1u); }
  static double sum(V v) { return _mm512_reduce_add_pd(v); }
  static Index index(const std::int32_t* p) { return index8(p); }
  // A 16-lane masked load narrowed to 8 lanes: AVX512F alone (the 8-lane form needs VL).
  static Index index(Mask m, const std::int32_t* p) {
    return _mm512_castsi512_si256(_mm512_maskz_loadu_epi32(static_cast<__mmask16>(m), p));
  }
  static V gather(const double* x, Index i) { return _mm512_i32gather_pd(i, x, 8); }
  static V gather(Mask m, const double* x, Index i) {
    return _mm512_mask_i32gather_pd(zero(), m, i, x, 8);
  }
  template <class J>
  static V fetch(const double* x, const J* idx) {
    return fetch_buffered<Simd<double>>(x, idx);
  }
};

#elif defined(__AVX2__) && defined(__FMA__)
inline constexpr int kSimdBits = 256;

template <>
struct Simd<float> {
  using V = __m256;
  using Mask = __m256i;
  static constexpr int kWidth = 8, kNV = 2;
  static constexpr bool kFastGather = false;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V load(Mask m, const float* p) { return _mm256_maskload_ps(p, m); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static void store(float* p, Mask m, V v) { _mm256_maskstore_ps(p, m, v); }
  static Mask tail(int last) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(last), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  template <class J>
  static V fetch(const float* x, const J* idx) {
    return fetch_buffered<Simd<float>>(x, idx);
  }
};

template <>
struct Simd<double> {
  using V = __m256d;
  using Mask = __m256i;
  static constexpr int kWidth = 4, kNV = 2;
  static constexpr bool kFastGather = false;
  static V zero() { return _mm256_setzero_pd(); }
  static V load(const double* p) { return _mm256_loadu_pd(p); }
  static V load(Mask m, const double* p) { return _mm256_maskload_pd(p, m); }
  static V set1(double x) { return _mm256_set1_pd(x); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static void store(double* p, Mask m, V v) { _mm256_maskstore_pd(p, m, v); }
  static Mask tail(int last) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(last), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  template <class J>
  static V fetch(const double* x, const J* idx) {
    return fetch_buffered<Simd<double>>(x, idx);
  }
};

#else
inline constexpr int kSimdBits = 0;
#endif

}  // namespace detail
}  // namespace lpfast
