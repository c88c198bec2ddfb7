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

#include <algorithm>
#include <cstdint>
#include <utility>
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

// [lo, hi) of `count` items for thread `tid` of `team`.
inline std::pair<std::int64_t, std::int64_t> static_range(std::int64_t count, int tid, int team) {
  return {count * tid / team, count * (tid + 1) / team};
}

// All scratch of one call, shared by its team: t holds X B_r^T for every row of x; xt holds
// a WIDTH-wide slice of x transposed for the batched sparse product.
template <class T>
struct Workspace {
  std::vector<T> t;
  std::vector<T, Eigen::aligned_allocator<T>> xt;
};

// Runs inside the team: each thread computes its own rows of every GEMM, so no GEMM
// needs Eigen's internal threading (which stalled badly when the second core was busy).
template <class T>
void kron_part(const T* x, std::int64_t batch, const KronFactors<T>& kp, const T* bias, T* y,
               Workspace<T>& ws, int tid, int team) {
  const std::int64_t m = kp.rows();
  const ConstRowMap<T> x_all(x, batch * kp.n1, kp.n2);
  RowMap<T> t_all(ws.t.data(), batch * kp.n1, kp.m2);
  const auto [t0, t1] = static_range(batch * kp.n1, tid, team);
  const auto [o0, o1] = static_range(batch * kp.m1, tid, team);  // (row of x, row of A) pairs
  for (std::int64_t r = 0; r < kp.rank; ++r) {
    const ConstRowMap<T> a(kp.A + r * kp.m1 * kp.n1, kp.m1, kp.n1);
    const ConstRowMap<T> b(kp.B + r * kp.m2 * kp.n2, kp.m2, kp.n2);
    t_all.middleRows(t0, t1 - t0).noalias() = x_all.middleRows(t0, t1 - t0) * b.transpose();
#pragma omp barrier
    for (std::int64_t i = o0 / kp.m1; i * kp.m1 < o1; ++i) {
      const std::int64_t lo = std::max<std::int64_t>(o0 - i * kp.m1, 0);
      const std::int64_t hi = std::min<std::int64_t>(o1 - i * kp.m1, kp.m1);
      RowMap<T> yb(y + i * m, kp.m1, kp.m2);
      const ConstRowMap<T> tb(ws.t.data() + i * kp.n1 * kp.m2, kp.n1, kp.m2);
      if (r == 0)
        yb.middleRows(lo, hi - lo).noalias() = a.middleRows(lo, hi - lo) * tb;
      else
        yb.middleRows(lo, hi - lo).noalias() += a.middleRows(lo, hi - lo) * tb;
      if (r + 1 == kp.rank && bias != nullptr) {
        const auto span = (hi - lo) * kp.m2;
        Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(y + i * m + lo * kp.m2, span) +=
            Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(bias + lo * kp.m2, span);
      }
    }
#pragma omp barrier
  }
}

template <int WIDTH, class T, class I>
void sparse_part_batched(const T* x, std::int64_t batch, const CsrView<T, I>& S, T* y,
                         Workspace<T>& ws, std::int64_t r0, std::int64_t r1, int tid, int team) {
  const std::int64_t n = S.cols, m = S.rows;
  const auto [j0, j1] = static_range(n, tid, team);
  for (std::int64_t b0 = 0; b0 < batch; b0 += WIDTH) {
    const std::int64_t nb = std::min<std::int64_t>(WIDTH, batch - b0);
    for (std::int64_t j = j0; j < j1; ++j) {
      T* row = ws.xt.data() + j * WIDTH;
      for (std::int64_t b = 0; b < nb; ++b) row[b] = x[(b0 + b) * n + j];
    }
#pragma omp barrier
    csr_matmat_add_rows<WIDTH>(S, ws.xt.data(), nb, y + b0 * m, m, r0, r1);
#pragma omp barrier
  }
}

template <class T, class I>
void sparse_part(const T* x, std::int64_t batch, const CsrView<T, I>& S, T* y, Workspace<T>& ws,
                 const std::vector<std::int64_t>& bounds, int tid, int team) {
  const std::int64_t r0 = bounds[tid], r1 = bounds[tid + 1];
  if (batch == 1)
    csr_matvec_add_rows(S, x, y, r0, r1);
  else if (batch <= 4)
    sparse_part_batched<4>(x, batch, S, y, ws, r0, r1, tid, team);
  else if (batch <= 8)
    sparse_part_batched<8>(x, batch, S, y, ws, r0, r1, tid, team);
  else if (batch <= 16)
    sparse_part_batched<16>(x, batch, S, y, ws, r0, r1, tid, team);
  else
    sparse_part_batched<32>(x, batch, S, y, ws, r0, r1, tid, team);
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
  const std::int64_t nnz = S != nullptr ? S->nnz() : 0;
  const double flops =
      2.0 * batch * (kp.rank * kp.n1 * kp.m2 * (kp.n2 + kp.m1) + static_cast<double>(nnz));
  const int nt = threads_for(flops, 2.0e5);

  detail::Workspace<T> ws;
  ws.t.resize(static_cast<std::size_t>(batch * kp.n1 * kp.m2));
  if (nnz > 0 && batch > 1) ws.xt.assign(static_cast<std::size_t>(kp.cols() * 32), T(0));
  const auto bounds = nnz > 0 ? balanced_row_split(S->indptr, S->rows, nt)
                              : std::vector<std::int64_t>();
  // Everything that can throw (allocation, checks) happens above: the region holds
  // barriers, so a thread leaving it early would hang its team.
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int tid = thread_id(), team = team_size();
    detail::kron_part(x, batch, kp, bias, y, ws, tid, team);
    if (nnz > 0) {
      // The runtime may grant fewer threads than asked for (nested calls): re-split then.
      const auto mine = team == nt ? bounds : balanced_row_split(S->indptr, S->rows, team);
      detail::sparse_part(x, batch, *S, y, ws, mine, tid, team);
    }
  }
}

}  // namespace lpfast
