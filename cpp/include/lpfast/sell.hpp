// Sliced ELLPACK with local row sorting (SELL-C-sigma: Kreutzer, Hager, Wellein, Fehske,
// Bishop, SIAM J. Sci. Comput. 2014) for the batch-1 product y += S x of the doped
// Kronecker operator, the latency-critical call of an inference server.
//
// Why not CSR: with ~40 non-zeros per row, a CSR row kernel pays a masked tail and a
// horizontal reduction per row, and its x[indices[k]] loads (AVX-512 gathers) run at about
// 1.2 cycles per element on Zen 4. Here C = 16 consecutive rows (after sorting the rows of
// each window of sigma = 256 rows by length, so a slice pads to its longest row by ~3%) are
// stored column-major: step k of a slice holds the k-th non-zero of its 16 rows, so one
// vector FMA serves 16 rows and no reduction is needed. Fetching the 16 x values is the
// cost: AVX-512 gathers run at about 1.2 cycles per element on Zen 4 and scalar loads into
// a buffer need three memory operations per element, so in float32 with AVX-512 half the
// lanes are loaded straight into registers (vinsertps) and the other half gathered by one
// 8-wide gather, which keeps the load ports and the gather unit busy at once (4096 x 4096,
// 1% density, float32, one Zen 4 core: 83 us with gathers, 49 us with the buffer, 42 us
// mixed, in a standalone microbenchmark; results are bitwise equal). Column indices are
// stored as uint16 when the matrix has at most 65536 columns (6 instead of 8 bytes per
// non-zero in float32).
//
// Every row is summed in order of its CSR non-zeros by one thread, so results do not
// depend on the thread count. Padding entries have value 0 and column 0.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "csr.hpp"
#include "simd.hpp"

namespace lpfast {

inline constexpr std::int64_t kSellC = 16;       // rows per slice (one float32 AVX-512 vector)
inline constexpr std::int64_t kSellSigma = 256;  // rows sorted by length within such windows

template <class T, class J>
struct SellView {
  const std::int64_t* slice_ptr = nullptr;  // slices + 1 offsets into indices/data
  const std::int32_t* row_of = nullptr;     // slices * C: the row held by each slot, or -1
  const J* indices = nullptr;               // slice_ptr[slices] column indices
  const T* data = nullptr;                  // slice_ptr[slices] values
  std::int64_t rows = 0, cols = 0, slices = 0;
};

inline std::int64_t sell_slices(std::int64_t rows) { return (rows + kSellC - 1) / kSellC; }

// The layout's shape: row_of (slices * C) and slice_ptr (slices + 1) from a checked CSR
// pattern. Rows of each sigma-window are ordered by decreasing length, ties by row index.
template <class I>
void sell_structure(const I* indptr, std::int64_t rows, std::int32_t* row_of,
                    std::int64_t* slice_ptr) {
  if (rows > INT32_MAX) throw std::invalid_argument("S: too many rows for the SELL layout");
  const std::int64_t slices = sell_slices(rows);
  std::vector<std::int32_t> order(static_cast<std::size_t>(rows));
  std::iota(order.begin(), order.end(), 0);
  auto len = [&](std::int32_t r) { return indptr[r + 1] - indptr[r]; };
  for (std::int64_t w = 0; w < rows; w += kSellSigma) {
    std::stable_sort(order.begin() + w, order.begin() + std::min(rows, w + kSellSigma),
                     [&](std::int32_t a, std::int32_t b) { return len(a) > len(b); });
  }
  slice_ptr[0] = 0;
  for (std::int64_t s = 0; s < slices; ++s) {
    std::int64_t longest = 0;
    for (std::int64_t c = 0; c < kSellC; ++c) {
      const std::int64_t slot = s * kSellC + c;
      row_of[slot] = slot < rows ? order[static_cast<std::size_t>(slot)] : -1;
      if (slot < rows) longest = std::max<std::int64_t>(longest, len(row_of[slot]));
    }
    slice_ptr[s + 1] = slice_ptr[s] + longest * kSellC;
  }
}

// Fills indices/data (slice_ptr[slices] entries) from the CSR matrix; row_of and slice_ptr
// come from sell_structure on the same pattern.
template <class T, class I, class J>
void sell_fill(const CsrView<T, I>& S, const std::int32_t* row_of, const std::int64_t* slice_ptr,
               J* indices, T* data) {
  const std::int64_t slices = sell_slices(S.rows);
  for (std::int64_t s = 0; s < slices; ++s) {
    const std::int64_t steps = (slice_ptr[s + 1] - slice_ptr[s]) / kSellC;
    for (std::int64_t c = 0; c < kSellC; ++c) {
      const std::int32_t r = row_of[s * kSellC + c];
      const std::int64_t k0 = r >= 0 ? static_cast<std::int64_t>(S.indptr[r]) : 0;
      const std::int64_t len = r >= 0 ? static_cast<std::int64_t>(S.indptr[r + 1]) - k0 : 0;
      for (std::int64_t k = 0; k < steps; ++k) {
        const std::int64_t at = slice_ptr[s] + k * kSellC + c;
        indices[at] = k < len ? static_cast<J>(S.indices[k0 + k]) : J(0);
        data[at] = k < len ? S.data[k0 + k] : T(0);
      }
    }
  }
}

// Slice boundaries splitting [0, slices) among `parts` threads so that each carries about
// the same work, thread 0 also carrying `head` units of other work (in stored entries).
template <class T, class J>
std::vector<std::int64_t> sell_split(const SellView<T, J>& S, int parts, double head = 0.0) {
  std::vector<std::int64_t> bounds(parts + 1, S.slices);
  bounds[0] = 0;
  const double total = static_cast<double>(S.slice_ptr[S.slices]) + head;
  for (int t = 1; t < parts; ++t) {
    const auto target = static_cast<std::int64_t>(std::max(0.0, total * t / parts - head));
    bounds[t] = std::lower_bound(S.slice_ptr, S.slice_ptr + S.slices + 1, target) - S.slice_ptr;
    bounds[t] = std::max(bounds[t - 1], std::min(bounds[t], S.slices));
  }
  return bounds;
}

// y[row] = (S x)[row] (or y[row] += (S x)[row] with `accumulate`) for the rows of slices
// [s0, s1) (every row sits in one slice). Each step of a slice: kSellC / kWidth vectors of
// values times x fetched by Simd<T>::fetch (simd.hpp: mixed scalar loads and a gather for
// float32 on AVX-512, scalar loads into a buffer otherwise, faster than a gather on Zen 4).
template <class T, class J>
void sell_matvec(const SellView<T, J>& S, const T* x, T* y, std::int64_t s0, std::int64_t s1,
                 bool accumulate = false) {
  alignas(64) T out[kSellC];
  for (std::int64_t s = s0; s < s1; ++s) {
#if defined(LPFAST_SIMD)
    using Sv = detail::Simd<T>;
    constexpr int W = Sv::kWidth, NV = static_cast<int>(kSellC) / W;
    static_assert(NV * W == kSellC, "a slice is a whole number of vectors");
    typename Sv::V acc[NV];
    LPFAST_UNROLL for (int v = 0; v < NV; ++v) acc[v] = Sv::zero();
    for (std::int64_t at = S.slice_ptr[s]; at < S.slice_ptr[s + 1]; at += kSellC)
      LPFAST_UNROLL for (int v = 0; v < NV; ++v)
        acc[v] = Sv::fma(Sv::load(S.data + at + W * v), Sv::fetch(x, S.indices + at + W * v),
                         acc[v]);
    LPFAST_UNROLL for (int v = 0; v < NV; ++v) Sv::store(out + W * v, acc[v]);
#else
    for (std::int64_t c = 0; c < kSellC; ++c) out[c] = T(0);
    for (std::int64_t at = S.slice_ptr[s]; at < S.slice_ptr[s + 1]; at += kSellC)
      for (std::int64_t c = 0; c < kSellC; ++c) out[c] += S.data[at + c] * x[S.indices[at + c]];
#endif
    for (std::int64_t c = 0; c < kSellC; ++c) {
      const std::int32_t r = S.row_of[s * kSellC + c];
      if (r >= 0) y[r] = accumulate ? y[r] + out[c] : out[c];
    }
  }
}

}  // namespace lpfast
