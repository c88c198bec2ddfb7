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
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "csr.hpp"
#include "parallel.hpp"
#include "sell.hpp"
#include "small_gemm.hpp"
#include "types.hpp"

namespace lpfast {

template <class T>
struct KronFactors {
  const T* A = nullptr;  // (rank, m1, n1) row-major
  const T* B = nullptr;  // (rank, m2, n2) row-major
  std::int64_t rank = 1, m1 = 0, n1 = 0, m2 = 0, n2 = 0;
  const T* Bt = nullptr;  // optional: B transposed, (rank, n2, m2) row-major

  std::int64_t rows() const { return m1 * m2; }
  std::int64_t cols() const { return n1 * n2; }
};

namespace detail {

// All scratch of one call, shared by its team: t holds X B_r^T for every row of x; xt holds
// a WIDTH-wide slice of x transposed for the batched sparse product.
template <class T>
struct Workspace {
  std::vector<T> t;
  std::vector<T, Eigen::aligned_allocator<T>> xt;
  std::vector<T> bt;  // B transposed, when the caller did not supply it
};

// kp with Bt set (transposing B into ws.bt if needed) when small_gemm will serve the
// product with B^T (inner dimension n2).
template <class T>
KronFactors<T> with_transposed_b(KronFactors<T> kp, Workspace<T>& ws) {
  if (kp.Bt != nullptr || !small_gemm_serves<T>(kp.n2)) return kp;
  ws.bt.resize(static_cast<std::size_t>(kp.rank * kp.m2 * kp.n2));
  for (std::int64_t r = 0; r < kp.rank; ++r) {
    const ConstRowMap<T> b(kp.B + r * kp.m2 * kp.n2, kp.m2, kp.n2);
    RowMap<T>(ws.bt.data() + r * kp.m2 * kp.n2, kp.n2, kp.m2) = b.transpose();
  }
  kp.Bt = ws.bt.data();
  return kp;
}

// Runs inside the team: each thread computes its own rows of every GEMM, so no GEMM
// needs Eigen's internal threading (which stalled badly when the second core was busy).
// With team == 1 it runs without barriers, so one thread of a larger team may call it alone.
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
    if (kp.Bt != nullptr) {
      rowmajor_gemm(x + t0 * kp.n2, kp.n2, kp.Bt + r * kp.m2 * kp.n2, kp.m2,
                    ws.t.data() + t0 * kp.m2, kp.m2, t1 - t0, kp.m2, kp.n2, false);
    } else {
      const ConstRowMap<T> b(kp.B + r * kp.m2 * kp.n2, kp.m2, kp.n2);
      t_all.middleRows(t0, t1 - t0).noalias() = x_all.middleRows(t0, t1 - t0) * b.transpose();
    }
    if (team > 1) {
#pragma omp barrier
    }
    for (std::int64_t i = o0 / kp.m1; i * kp.m1 < o1; ++i) {
      const std::int64_t lo = std::max<std::int64_t>(o0 - i * kp.m1, 0);
      const std::int64_t hi = std::min<std::int64_t>(o1 - i * kp.m1, kp.m1);
      rowmajor_gemm(a.data() + lo * kp.n1, kp.n1, ws.t.data() + i * kp.n1 * kp.m2, kp.m2,
                    y + i * m + lo * kp.m2, kp.m2, hi - lo, kp.m2, kp.n1, r > 0);
      if (r + 1 == kp.rank && bias != nullptr) {
        const auto span = (hi - lo) * kp.m2;
        Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(y + i * m + lo * kp.m2, span) +=
            Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(bias + lo * kp.m2, span);
      }
    }
    if (team > 1) {
#pragma omp barrier
    }
  }
}

template <int WIDTH, class T, class I>
void sparse_part_batched(const T* x, std::int64_t batch, const CsrView<T, I>& S, T* y,
                         Workspace<T>& ws, std::int64_t r0, std::int64_t r1, int tid, int team) {
  const std::int64_t n = S.cols, m = S.rows;
  const auto [j0, j1] = static_range(n, tid, team);
  for (std::int64_t b0 = 0; b0 < batch; b0 += WIDTH) {
    const std::int64_t nb = std::min<std::int64_t>(WIDTH, batch - b0);
    // Transposed in tiles of 16 columns: reading x column by column (a power-of-two stride
    // of n floats) thrashed the cache and took half of the sparse part (batch 32,
    // 4096 x 4096: 232 us -> 40 us).
    constexpr std::int64_t kTile = 16;
    for (std::int64_t jt = j0; jt < j1; jt += kTile) {
      const std::int64_t je = std::min(j1, jt + kTile);
      for (std::int64_t b = 0; b < nb; ++b) {
        const T* src = x + (b0 + b) * n;
        for (std::int64_t j = jt; j < je; ++j) ws.xt[j * WIDTH + b] = src[j];
      }
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

namespace detail {

// The team both parts run in: the Kronecker GEMMs, a barrier, then `sparse(tid, team)`
// (which adds its rows of S x to y). `prepare` receives the team size asked for.
template <class T, class Prepare, class Sparse>
void doped_kron_team(const T* x, std::int64_t batch, const KronFactors<T>& kp, std::int64_t nnz,
                     const T* bias, T* y, Workspace<T>& ws, Prepare&& prepare, Sparse&& sparse) {
  if (kp.rank < 1) throw std::invalid_argument("A, B: Kronecker rank must be at least 1");
  if (batch == 0 || kp.rows() == 0) return;
  const double flops =
      2.0 * batch * (kp.rank * kp.n1 * kp.m2 * (kp.n2 + kp.m1) + static_cast<double>(nnz));
  const int nt = threads_for(flops, 2.0e5);
  ws.t.resize(static_cast<std::size_t>(batch * kp.n1 * kp.m2));
  const KronFactors<T> kpt = with_transposed_b(kp, ws);
  prepare(nt);
  // Everything that can throw (allocation, checks) happens above: the region holds
  // barriers, so a thread leaving it early would hang its team.
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int tid = thread_id(), team = team_size();
    kron_part(x, batch, kpt, bias, y, ws, tid, team);
    if (nnz > 0) sparse(nt, tid, team);
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
  const std::int64_t nnz = S != nullptr ? S->nnz() : 0;
  detail::Workspace<T> ws;
  std::vector<std::int64_t> bounds;
  auto prepare = [&](int nt) {
    if (nnz > 0 && batch > 1) ws.xt.assign(static_cast<std::size_t>(kp.cols() * 32), T(0));
    if (nnz > 0) bounds = balanced_row_split(S->indptr, S->rows, nt);
  };
  auto sparse = [&](int nt, int tid, int team) {
    // The runtime may grant fewer threads than asked for (nested calls): re-split then.
    const auto mine = team == nt ? bounds : balanced_row_split(S->indptr, S->rows, team);
    detail::sparse_part(x, batch, *S, y, ws, mine, tid, team);
  };
  detail::doped_kron_team(x, batch, kp, nnz, bias, y, ws, prepare, sparse);
}

// The same product with S in the SELL layout of sell.hpp (built once by a prepared
// operator), for the latency-bound call with few rows of x. Thread 0 computes the whole
// Kronecker part alone and the others start on S at once: one barrier instead of one per
// GEMM step, with the slices split so that every thread carries the same estimated work.
// With several threads S x goes to a scratch vector (every row written once) and is added
// after the barrier; one thread adds it to y directly (the same sums, in the same order).
template <class T, class J>
void doped_kron_matmul(const T* x, std::int64_t batch, const KronFactors<T>& kp,
                       const SellView<T, J>& S, const T* bias, T* y) {
  if (S.rows != kp.rows() || S.cols != kp.cols()) {
    throw std::invalid_argument("S: shape does not match kron(A, B)");
  }
  if (kp.rank < 1) throw std::invalid_argument("A, B: Kronecker rank must be at least 1");
  const std::int64_t m = kp.rows(), n = kp.cols();
  if (batch == 0 || m == 0) return;
  const double kron_flops = 2.0 * batch * kp.rank * kp.n1 * kp.m2 * (kp.n2 + kp.m1);
  const double stored = static_cast<double>(S.slices > 0 ? S.slice_ptr[S.slices] : 0);
  // One stored entry costs about as much time as 19 flops of the Kronecker GEMMs
  // (4096 x 4096, 64 x 64 factors, one Zen 4 core: 15 us for 1.05 MFLOP, 47 us for 172k).
  constexpr double kFlopsPerEntry = 19.0;
  const double kron_entries = kron_flops / kFlopsPerEntry / static_cast<double>(batch);
  const int nt = threads_for(kron_flops + kFlopsPerEntry * batch * stored, 2.0e5);
  detail::Workspace<T> ws;
  ws.t.resize(static_cast<std::size_t>(batch * kp.n1 * kp.m2));
  const KronFactors<T> kpt = detail::with_transposed_b(kp, ws);
  if (nt == 1) {
    detail::kron_part(x, batch, kpt, bias, y, ws, 0, 1);
    for (std::int64_t b = 0; b < batch; ++b)
      sell_matvec(S, x + b * n, y + b * m, 0, S.slices, /*accumulate=*/true);
    return;
  }
  std::vector<T> sx(static_cast<std::size_t>(batch * m));
  const auto bounds = sell_split(S, nt, kron_entries);
  // A raw region, not parallel_region: it holds a barrier (as doped_kron_team's does).
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int tid = thread_id(), team = team_size();
    const auto mine = team == nt ? bounds : sell_split(S, team, kron_entries);
    if (tid == 0) detail::kron_part(x, batch, kpt, bias, y, ws, 0, 1);
    for (std::int64_t b = 0; b < batch; ++b) {
      sell_matvec(S, x + b * n, sx.data() + b * m, mine[tid], mine[tid + 1]);
    }
    if (team > 1) {
#pragma omp barrier
    }
    const auto [i0, i1] = static_range(batch * m, tid, team);
    for (std::int64_t i = i0; i < i1; ++i) y[i] += sx[i];
  }
}

// Gradients with respect to the Kronecker factors of y = x W^T, given dy = dL/dy (batch, m):
//   dA_r = sum_b dY_b B_r X_b^T   (m1 x n1),   dB_r = sum_b dY_b^T A_r X_b   (m2 x n2),
// with X_b (n1, n2) and dY_b (m1, m2) the row-major reshapes of row b. Rows of the batch are
// split statically across threads and the per-thread partial sums are added in thread
// order, so a given thread count always gives the same bits. dA, dB: (rank, ., .), written.
template <class T>
void kron_factor_grads(const T* x, const T* dy, std::int64_t batch, const KronFactors<T>& kp,
                       T* dA, T* dB) {
  using Mat = RowMat<T>;
  const std::int64_t m = kp.rows(), n = kp.cols(), R = kp.rank;
  const double flops = 8.0 * batch * R * kp.n1 * kp.m2 * (kp.n2 + kp.m1);
  const int nt = static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(
      threads_for(flops, 2.0e5), batch)));
  std::vector<Mat> part_a(static_cast<std::size_t>(nt * R), Mat::Zero(kp.m1, kp.n1));
  std::vector<Mat> part_b(static_cast<std::size_t>(nt * R), Mat::Zero(kp.m2, kp.n2));
  parallel_region(nt, [&](int tid, int team) {
    const auto [b0, b1] = static_range(batch, tid, team);
    Mat q(kp.m1, kp.n2), p(kp.n1, kp.m2);
    for (std::int64_t r = 0; r < R; ++r) {
      const ConstRowMap<T> a(kp.A + r * kp.m1 * kp.n1, kp.m1, kp.n1);
      const ConstRowMap<T> b(kp.B + r * kp.m2 * kp.n2, kp.m2, kp.n2);
      Mat& ga = part_a[static_cast<std::size_t>(tid * R + r)];
      Mat& gb = part_b[static_cast<std::size_t>(tid * R + r)];
      for (std::int64_t i = b0; i < b1; ++i) {
        const ConstRowMap<T> xb(x + i * n, kp.n1, kp.n2);
        const ConstRowMap<T> dyb(dy + i * m, kp.m1, kp.m2);
        q.noalias() = dyb * b;
        ga.noalias() += q * xb.transpose();
        p.noalias() = a.transpose() * dyb;
        gb.noalias() += p.transpose() * xb;
      }
    }
  });
  for (std::int64_t r = 0; r < R; ++r) {
    RowMap<T> ga(dA + r * kp.m1 * kp.n1, kp.m1, kp.n1);
    RowMap<T> gb(dB + r * kp.m2 * kp.n2, kp.m2, kp.n2);
    ga.setZero();
    gb.setZero();
    for (int t = 0; t < nt; ++t) {
      ga += part_a[static_cast<std::size_t>(t * R + r)];
      gb += part_b[static_cast<std::size_t>(t * R + r)];
    }
  }
}

// The sampled product on S's pattern (the gradient of y = x S^T with respect to S.data):
//   values[k] = sum_b dy[b, row_k] * x[b, col_k],   dy: (batch, rows), x: (batch, cols).
// Both operands are transposed once so that every non-zero is one contiguous dot product.
template <class T, class I>
void csr_sampled_product(const T* dy, const T* x, std::int64_t batch, const CsrView<T, I>& pattern,
                         T* values) {
  const std::int64_t rows = pattern.rows, cols = pattern.cols, nnz = pattern.nnz();
  if (nnz == 0) return;
  const int nt = threads_for(2.0 * nnz * batch);
  const auto bounds = balanced_row_split(pattern.indptr, rows, nt);
  // Column-major (batch x rows) of row-major (rows x batch) data is the transpose we need.
  ColMat<T> dyt, xt;
  if (batch > 1) {
    dyt = ConstRowMap<T>(dy, batch, rows);
    xt = ConstRowMap<T>(x, batch, cols);
  }
  parallel_region(nt, [&](int tid, int team) {
    const auto mine = team == nt ? bounds : balanced_row_split(pattern.indptr, rows, team);
    for (std::int64_t i = mine[tid]; i < mine[tid + 1]; ++i) {
      for (I k = pattern.indptr[i]; k < pattern.indptr[i + 1]; ++k) {
        const std::int64_t j = pattern.indices[k];
        values[k] = batch == 1 ? dy[i] * x[j] : dyt.col(i).dot(xt.col(j));
      }
    }
  });
}

}  // namespace lpfast
