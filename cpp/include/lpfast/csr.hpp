// Compressed sparse row views over caller-owned buffers, their validation, and the
// sparse-times-dense kernels that the doped Kronecker product adds on top of its GEMMs.
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "parallel.hpp"

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

// y[i] += sum_k S[i, k] x[k] for rows i in [r0, r1).
template <class T, class I>
inline void csr_matvec_add_rows(const CsrView<T, I>& S, const T* x, T* y, std::int64_t r0,
                                std::int64_t r1) {
  const I* indices = S.indices;
  const T* data = S.data;
  for (std::int64_t i = r0; i < r1; ++i) {
    T acc = 0;
    const I lo = S.indptr[i], hi = S.indptr[i + 1];
#pragma omp simd reduction(+ : acc)
    for (I k = lo; k < hi; ++k) acc += data[k] * x[indices[k]];
    y[i] += acc;
  }
}

// The batched product: xt holds WIDTH batch columns of x transposed (cols x WIDTH), so each
// non-zero costs one contiguous WIDTH-wide FMA instead of WIDTH scattered loads.
template <int WIDTH, class T, class I>
inline void csr_matmat_add_rows(const CsrView<T, I>& S, const T* xt, std::int64_t nb, T* y,
                                std::int64_t y_stride, std::int64_t r0, std::int64_t r1) {
  const I* indices = S.indices;
  const T* data = S.data;
  alignas(64) T acc[WIDTH];
  for (std::int64_t i = r0; i < r1; ++i) {
    for (int b = 0; b < WIDTH; ++b) acc[b] = 0;
    const I lo = S.indptr[i], hi = S.indptr[i + 1];
    for (I k = lo; k < hi; ++k) {
      const T v = data[k];
      const T* xr = xt + static_cast<std::int64_t>(indices[k]) * WIDTH;
#pragma omp simd
      for (int b = 0; b < WIDTH; ++b) acc[b] += v * xr[b];
    }
    for (std::int64_t b = 0; b < nb; ++b) y[b * y_stride + i] += acc[b];
  }
}

}  // namespace lpfast
