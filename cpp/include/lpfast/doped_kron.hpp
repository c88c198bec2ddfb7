// y = x W^T (+ bias) for W = sum_r kron(A_r, B_r) + S, without ever forming W.
//
// Row-major convention (NumPy's np.kron): one row of x reshaped to X (n1, n2) gives
// Y (m1, m2) = sum_r A_r X B_r^T, and y is Y read row-major. Over a batch of N rows:
//   step 1: T = X_all B_r^T with X_all = x viewed as (N*n1, n2): one GEMM for the batch;
//   step 2: Y_b = A_r T_b for each row b: N GEMMs of (m1 x n1)(n1 x m2);
//   step 3: the sparse part S, split across threads by non-zeros.
// The kernel reads its inputs, writes only y, and keeps its scratch on the call's stack or
// heap, so concurrent calls from several threads are safe.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <vector>

#include <Eigen/Core>

#include "csr.hpp"
#include "parallel.hpp"

namespace lpfast {

template <class T>
struct KronFactors {
  const T* A = nullptr;  // (rank, m1, n1) row-major
  const T* B = nullptr;  // (rank, m2, n2) row-major
  std::int64_t rank = 1, m1 = 0, n1 = 0, m2 = 0, n2 = 0;

  std::int64_t rows() const { return m1 * m2; }
  std::int64_t cols() const { return n1 * n2; }
};

namespace detail {

template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ConstRowMap = Eigen::Map<const RowMatrix<T>>;
template <class T>
using RowMap = Eigen::Map<RowMatrix<T>>;

template <class T>
void kron_part(const T* x, std::int64_t batch, const KronFactors<T>& kp, const T* bias, T* y,
               int nt) {
  const std::int64_t m = kp.rows();
  std::vector<T> scratch(static_cast<std::size_t>(batch * kp.n1 * kp.m2));
  RowMap<T> t_all(scratch.data(), batch * kp.n1, kp.m2);
  const ConstRowMap<T> x_all(x, batch * kp.n1, kp.n2);
  for (std::int64_t r = 0; r < kp.rank; ++r) {
    const ConstRowMap<T> a(kp.A + r * kp.m1 * kp.n1, kp.m1, kp.n1);
    const ConstRowMap<T> b(kp.B + r * kp.m2 * kp.n2, kp.m2, kp.n2);
    // One GEMM for the whole batch; Eigen parallelizes it itself when large enough.
    t_all.noalias() = x_all * b.transpose();
    const bool first = (r == 0), last = (r + 1 == kp.rank);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && batch > 1)
    for (std::int64_t i = 0; i < batch; ++i) {
      RowMap<T> yb(y + i * m, kp.m1, kp.m2);
      const ConstRowMap<T> tb(scratch.data() + i * kp.n1 * kp.m2, kp.n1, kp.m2);
      if (first)
        yb.noalias() = a * tb;
      else
        yb.noalias() += a * tb;
      if (last && bias != nullptr) {
        Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>>(y + i * m, m) +=
            Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>(bias, m);
      }
    }
  }
}

template <int WIDTH, class T, class I>
void sparse_part_batched(const T* x, std::int64_t batch, const CsrView<T, I>& S, T* y,
                         const std::vector<std::int64_t>& bounds, int nt) {
  const std::int64_t n = S.cols, m = S.rows;
  std::vector<T> xt(static_cast<std::size_t>(n * WIDTH), T(0));
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int tid = thread_id();
    for (std::int64_t b0 = 0; b0 < batch; b0 += WIDTH) {
      const std::int64_t nb = std::min<std::int64_t>(WIDTH, batch - b0);
#pragma omp for schedule(static)
      for (std::int64_t j = 0; j < n; ++j) {
        T* row = xt.data() + j * WIDTH;
        for (std::int64_t b = 0; b < nb; ++b) row[b] = x[(b0 + b) * n + j];
      }
      // (implicit barrier: xt is complete)
      csr_matmat_add_rows<WIDTH>(S, xt.data(), nb, y + b0 * m, m, bounds[tid], bounds[tid + 1]);
#pragma omp barrier
    }
  }
}

template <class T, class I>
void sparse_part(const T* x, std::int64_t batch, const CsrView<T, I>& S, T* y) {
  const std::int64_t nnz = S.nnz();
  if (nnz == 0 || batch == 0) return;
  const int nt = threads_for(2.0 * nnz * batch);
  const auto bounds = balanced_row_split(S.indptr, S.rows, nt);
  if (batch == 1) {
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
      const int tid = thread_id();
      csr_matvec_add_rows(S, x, y, bounds[tid], bounds[tid + 1]);
    }
  } else if (batch <= 4) {
    sparse_part_batched<4>(x, batch, S, y, bounds, nt);
  } else if (batch <= 8) {
    sparse_part_batched<8>(x, batch, S, y, bounds, nt);
  } else if (batch <= 16) {
    sparse_part_batched<16>(x, batch, S, y, bounds, nt);
  } else {
    sparse_part_batched<32>(x, batch, S, y, bounds, nt);
  }
}

}  // namespace detail

// x: (batch, n1*n2) row-major; y: (batch, m1*m2) row-major, overwritten.
// S may be null (no doping), bias may be null. S must have passed check_csr.
template <class T, class I>
void doped_kron_matmul(const T* x, std::int64_t batch, const KronFactors<T>& kp,
                       const CsrView<T, I>* S, const T* bias, T* y) {
  if (S != nullptr && (S->rows != kp.rows() || S->cols != kp.cols())) {
    throw std::invalid_argument("S: shape does not match kron(A, B)");
  }
  if (kp.rank < 1) throw std::invalid_argument("A, B: Kronecker rank must be at least 1");
  if (batch == 0 || kp.rows() == 0) return;
  const double kron_flops = 2.0 * batch * kp.rank * kp.n1 * kp.m2 * (kp.n2 + kp.m1);
  detail::kron_part(x, batch, kp, bias, y, threads_for(kron_flops, 2.0e5));
  if (S != nullptr) detail::sparse_part(x, batch, *S, y);
}

}  // namespace lpfast
