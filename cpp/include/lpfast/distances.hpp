// Distances of the rows of a row-major point set X (n, d) to a subspace span(V), the
// per-row quantity behind every lp cost and IRLS weight.
//
// The rows are split into fixed blocks of kBlockRows and each thread takes a contiguous
// static range of blocks; block boundaries are global, so every row's distance is the same
// for any thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "parallel.hpp"
#include "small_gemm.hpp"
#include "types.hpp"

namespace lpfast {
namespace la {

// Rows per block: large enough for GEMM efficiency, small enough that a block of X and its
// scratch stay in L2.
inline constexpr std::int64_t kBlockRows = 256;

inline std::int64_t num_blocks(std::int64_t n) { return (n + kBlockRows - 1) / kBlockRows; }

// Per-thread scratch of subspace_distances.
template <class T>
struct DistScratch {
  RowMat<T> proj, xs, ps, resid;
};

// P (rows x k) = X_block V, all row-major. float32: the register-blocked small_gemm
// wherever AVX2 + FMA or AVX-512 is compiled; on a Zen 3 core (AVX2) it ran the 30522 x 384
// x 64 products of one distance pass in 25-27 ms against 35-36 ms for Eigen's GEMM (a /tmp
// microbenchmark of both on the same blocks; `python bench/roofline.py` prints the distance
// pass next to NumPy's X @ V). double stays on Eigen: no clear gain measured there.
template <class T>
void block_times_basis(const T* Xb, const T* V, std::int64_t rows, std::int64_t d,
                       std::int64_t k, T* P) {
#if defined(LPFAST_SIMD)
  if constexpr (std::is_same_v<T, float>) {
    if (d <= kSmallGemmMaxK) {
      small_gemm<float>(Xb, d, V, k, P, k, rows, k, d, false);
      return;
    }
  }
#endif
  RowMap<T>(P, rows, k).noalias() = ConstRowMap<T>(Xb, rows, d) * ConstRowMap<T>(V, d, k);
}

// dist[i] = ||x_i - V V^T x_i||_2 for the rows of X, V (d, k) row-major with orthonormal
// columns; row_sq[i] = ||x_i||^2 (precomputed once per fit).
//
// Accuracy: the cheap form ||x||^2 - ||V^T x||^2 (one GEMM) loses relative accuracy when
// the distance is small against ||x||: its absolute error is ~ eps * ||x||^2. Rows whose
// squared distance falls below `recompute_below` * ||x||^2 are therefore recomputed from the
// explicit residual x - V (V^T x) (a second, small GEMM on just those rows): distances are
// then accurate to ~ eps * ||x|| everywhere. Measured at 30522 x 768, k = 128, float64:
// X V 0.19 s, the full explicit residual another 0.35 s, which this avoids on typical
// (not nearly low-rank) data.
template <class T>
void subspace_distances_rows(const T* X, std::int64_t d, const T* row_sq, const T* V,
                             std::int64_t k, T* dist, std::int64_t r0, std::int64_t rows,
                             double recompute_below, DistScratch<T>& s) {
  const ConstRowMap<T> xb(X + r0 * d, rows, d);
  const ConstRowMap<T> v(V, d, k);
  s.proj.resize(rows, k);
  block_times_basis(X + r0 * d, V, rows, d, k, s.proj.data());
  std::int64_t m = 0;
  std::vector<std::int64_t> redo;
  for (std::int64_t i = 0; i < rows; ++i) {
    const T xx = row_sq[r0 + i];
    const T r2 = xx - s.proj.row(i).squaredNorm();
    if (static_cast<double>(r2) < recompute_below * static_cast<double>(xx)) {
      redo.push_back(i);
      ++m;
    } else {
      dist[r0 + i] = std::sqrt(r2);
    }
  }
  if (m == 0) return;
  s.xs.resize(m, d);
  s.ps.resize(m, k);
  for (std::int64_t j = 0; j < m; ++j) {
    s.xs.row(j) = xb.row(redo[j]);
    s.ps.row(j) = s.proj.row(redo[j]);
  }
  s.xs.noalias() -= s.ps * v.transpose();
  for (std::int64_t j = 0; j < m; ++j) dist[r0 + redo[j]] = s.xs.row(j).norm();
}

// Squared-distance fraction below which a row's distance is recomputed explicitly: the
// cheap form's relative error on dist^2 is ~ eps * sqrt(d) / fraction.
template <class T>
constexpr double recompute_fraction() {
  return sizeof(T) == 4 ? 0.25 : 1e-4;
}

template <class T>
void row_squared_norms(const T* X, std::int64_t n, std::int64_t d, T* out) {
  const int nt = threads_for(static_cast<double>(n) * d, 1.0e6);
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    out[i] = ConstVecMap<T>(X + i * d, d).squaredNorm();
  }
}

// Distances of every row of X to span(V); see subspace_distances_rows. Cost: 2*n*d*k flops
// (plus 2*m*d*k for the m recomputed rows). row_sq == nullptr: each block's squared row
// norms are taken just before its distances, while the block is in cache, so a single
// use (one cost, one set of distances) reads X once instead of twice; the norms are the
// same expression as row_squared_norms', so the distances are the same to the bit.
template <class T>
void subspace_distances(const T* X, std::int64_t n, std::int64_t d, const T* row_sq,
                        const T* V, std::int64_t k, T* dist) {
  if (n == 0) return;
  std::vector<T> own_sq(row_sq == nullptr ? static_cast<std::size_t>(n) : 0);
  const std::int64_t nb = num_blocks(n);
  const int nt = static_cast<int>(std::min<std::int64_t>(
      threads_for(2.0 * static_cast<double>(n) * d * k, 4.0e6), nb));
  parallel_region(nt, [&](int tid, int team) {
    DistScratch<T> s;
    const auto [b0, b1] = static_range(nb, tid, team);
    for (std::int64_t b = b0; b < b1; ++b) {
      const std::int64_t r0 = b * kBlockRows, rows = std::min(kBlockRows, n - r0);
      if (row_sq == nullptr) {
        for (std::int64_t i = r0; i < r0 + rows; ++i)
          own_sq[i] = ConstVecMap<T>(X + i * d, d).squaredNorm();
      }
      subspace_distances_rows(X, d, row_sq != nullptr ? row_sq : own_sq.data(), V, k, dist,
                              r0, rows, recompute_fraction<T>(), s);
    }
  });
}

}  // namespace la
}  // namespace lpfast
