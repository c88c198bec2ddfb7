// Compressed sparse row views over caller-owned buffers, their validation, and the
// sparse-times-dense kernels that the doped Kronecker product adds on top of its GEMMs.
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "parallel.hpp"
#include "simd.hpp"

namespace lpfast {

template <class T, class I>
struct CsrView {
  const I* indptr = nullptr;   // rows + 1
  const I* indices = nullptr;  // nnz column indices
  const T* data = nullptr;     // nnz values
  std::int64_t rows = 0;
  std::int64_t cols = 0;

  std::int64_t nnz() const { return rows > 0 ? static_cast<std::int64_t>(indptr[rows]) : 0; }
};

// Throws std::invalid_argument (ValueError in Python) unless the arrays form a valid CSR
// matrix of shape (rows, cols): every later kernel trusts this and does no bounds checks.
template <class I>
void check_csr(const I* indptr, std::int64_t indptr_len, const I* indices, std::int64_t nnz,
               std::int64_t rows, std::int64_t cols, const std::string& name = "S") {
  if (indptr_len != rows + 1) {
    throw std::invalid_argument(name + ": indptr has length " + std::to_string(indptr_len) +
                                ", expected rows + 1 = " + std::to_string(rows + 1));
  }
  if (indptr[0] != 0) throw std::invalid_argument(name + ": indptr[0] must be 0");
  for (std::int64_t i = 0; i < rows; ++i) {
    if (indptr[i + 1] < indptr[i]) {
      throw std::invalid_argument(name + ": indptr is not non-decreasing at row " +
                                  std::to_string(i));
    }
  }
  if (static_cast<std::int64_t>(indptr[rows]) != nnz) {
    throw std::invalid_argument(name + ": indptr[-1] = " + std::to_string(indptr[rows]) +
                                " but indices/data have " + std::to_string(nnz) + " entries");
  }
  for (std::int64_t k = 0; k < nnz; ++k) {
    if (indices[k] < 0 || static_cast<std::int64_t>(indices[k]) >= cols) {
      throw std::invalid_argument(name + ": column index " + std::to_string(indices[k]) +
                                  " at position " + std::to_string(k) + " is outside [0, " +
                                  std::to_string(cols) + ")");
    }
  }
}

// Row boundaries splitting [0, rows) into `parts` ranges holding about equal non-zeros.
template <class I>
std::vector<std::int64_t> balanced_row_split(const I* indptr, std::int64_t rows, int parts) {
  std::vector<std::int64_t> bounds(parts + 1, rows);
  bounds[0] = 0;
  const double nnz = static_cast<double>(indptr[rows]);
  for (int t = 1; t < parts; ++t) {
    const auto target = static_cast<I>(nnz * t / parts);
    bounds[t] = std::lower_bound(indptr, indptr + rows + 1, target) - indptr;
    bounds[t] = std::max(bounds[t - 1], std::min(bounds[t], rows));
  }
  return bounds;
}

namespace detail {

// Per-row dot products with x. Generic version: four independent accumulators so the
// loads of x[indices[k]] (the bottleneck: one random access per non-zero) overlap.
template <class T, class I>
inline void csr_matvec_rows_generic(const CsrView<T, I>& S, const T* x, T* y, std::int64_t r0,
                                    std::int64_t r1) {
  const I* idx = S.indices;
  const T* val = S.data;
  for (std::int64_t i = r0; i < r1; ++i) {
    I k = S.indptr[i];
    const I end = S.indptr[i + 1];
    T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (; k + 4 <= end; k += 4) {
      a0 += val[k] * x[idx[k]];
      a1 += val[k + 1] * x[idx[k + 1]];
      a2 += val[k + 2] * x[idx[k + 2]];
      a3 += val[k + 3] * x[idx[k + 3]];
    }
    for (; k < end; ++k) a0 += val[k] * x[idx[k]];
    y[i] += (a0 + a1) + (a2 + a3);
  }
}

#if defined(LPFAST_SIMD)
// One vector of non-zeros at a time, their x values gathered (where Simd<T>::kFastGather:
// see simd.hpp), the row's tail masked, one horizontal sum per row.
template <class T>
inline void csr_matvec_rows_gather(const CsrView<T, std::int32_t>& S, const T* x, T* y,
                                   std::int64_t r0, std::int64_t r1) {
  using Sv = Simd<T>;
  constexpr int W = Sv::kWidth;
  for (std::int64_t i = r0; i < r1; ++i) {
    std::int32_t k = S.indptr[i];
    const std::int32_t end = S.indptr[i + 1];
    typename Sv::V acc = Sv::zero();
    for (; k + W <= end; k += W)
      acc = Sv::fma(Sv::load(S.data + k), Sv::gather(x, Sv::index(S.indices + k)), acc);
    if (k < end) {
      const typename Sv::Mask mask = Sv::tail(end - k);
      const typename Sv::V xs = Sv::gather(mask, x, Sv::index(mask, S.indices + k));
      acc = Sv::fma(Sv::load(mask, S.data + k), xs, acc);
    }
    y[i] += Sv::sum(acc);
  }
}
#endif

}  // namespace detail

// y[i] += sum_k S[i, k] x[k] for rows i in [r0, r1).
template <class T, class I>
inline void csr_matvec_add_rows(const CsrView<T, I>& S, const T* x, T* y, std::int64_t r0,
                                std::int64_t r1) {
#if defined(LPFAST_SIMD)
  if constexpr (std::is_same_v<I, std::int32_t> &&
                (std::is_same_v<T, float> || std::is_same_v<T, double>)) {
    if constexpr (detail::Simd<T>::kFastGather) {
      detail::csr_matvec_rows_gather(S, x, y, r0, r1);
      return;
    }
  }
#endif
  detail::csr_matvec_rows_generic(S, x, y, r0, r1);
}

// The batched product for rows [r0, r1): xt holds WIDTH batch columns of x transposed
// (cols x WIDTH, 64-byte aligned), so each non-zero costs one contiguous WIDTH-wide FMA
// instead of WIDTH scattered loads. Results pass through a small row tile so that y,
// whose batch rows lie a power-of-two stride apart, is written in contiguous runs
// (direct strided writes thrashed L1 and were 4.6x slower). Lanes are Eigen's fixed-size
// arrays, not Simd<T>: WIDTH (4 to 32) is often below one AVX-512 vector, and Eigen picks
// the packet that fits.
template <int WIDTH, class T, class I>
inline void csr_matmat_add_rows(const CsrView<T, I>& S, const T* xt, std::int64_t nb, T* y,
                                std::int64_t y_stride, std::int64_t r0, std::int64_t r1) {
  using Lane = Eigen::Array<T, WIDTH, 1>;
  constexpr std::int64_t kTile = 64;
  alignas(64) T tile[kTile * WIDTH];
  for (std::int64_t i0 = r0; i0 < r1; i0 += kTile) {
    const std::int64_t i1 = std::min(r1, i0 + kTile);
    for (std::int64_t i = i0; i < i1; ++i) {
      Lane acc = Lane::Zero();
      for (I k = S.indptr[i]; k < S.indptr[i + 1]; ++k) {
        acc += S.data[k] * Eigen::Map<const Lane, Eigen::Aligned64>(
                               xt + static_cast<std::int64_t>(S.indices[k]) * WIDTH);
      }
      Eigen::Map<Lane, Eigen::Aligned64>(tile + (i - i0) * WIDTH) = acc;
    }
    for (std::int64_t b = 0; b < nb; ++b) {
      T* yb = y + b * y_stride;
      for (std::int64_t i = i0; i < i1; ++i) yb[i] += tile[(i - i0) * WIDTH + b];
    }
  }
}

}  // namespace lpfast
