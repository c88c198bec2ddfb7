// Weighted Gram matrices G = sum_r s_r^2 x_r x_r^T over (a list of) rows of a row-major X:
// the one routine behind the IRLS steps (irls.hpp), the k-subspace refits and the Lewis
// weights (lewis.hpp).
//
// How: the rows are cut into at most kMaxGramSegments segments, a number fixed by the row
// count (not the thread count); each segment gathers chunks of its rows, scaled by s_r and
// converted to the accumulation type Acc, into a contiguous block and adds the block's
// Gram into its own accumulator with the register-blocked small_gram_lower (Eigen's
// rank update where no AVX2/AVX-512 kernel is compiled); the segments are then summed in
// order in double. The result is the same for any number of threads.
// Acc = float serves float32 data whose Grams only need float accuracy (IRLS, k-subspaces);
// Acc = double serves factorizations that need more (Lewis weights' Cholesky).
// Cost: m * d^2 flops for m rows (the lower triangle of each block's d x d Gram).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "parallel.hpp"
#include "small_gemm.hpp"
#include "types.hpp"

namespace lpfast {

// Rows per gathered block: 256 rows of d = 384 floats (384 KB) stay in a 512 KB L2 while
// the kernel streams them once per 6-row block of G.
inline constexpr std::int64_t kGramChunk = 256;
inline constexpr int kMaxGramSegments = 8;

// Reusable per-segment scratch of gram_accumulate (keeps allocations out of Lloyd's loop).
template <class Acc>
struct GramWork {
  std::vector<RowMat<Acc>> acc;     // per segment, d x d (lower triangle used)
  std::vector<RowMat<Acc>> gather;  // per segment, kGramChunk x d
};

// Segments for m rows: one per 2048 rows, at most kMaxGramSegments.
inline int gram_segments(std::int64_t m) {
  return static_cast<int>(std::clamp<std::int64_t>(m / 2048, 1, kMaxGramSegments));
}

// Lower triangle of acc (d x d) += Y^T Y for the first `rows` rows of Y (row-major, d wide).
template <class Acc>
void gram_block_lower(const RowMat<Acc>& Y, std::int64_t rows, RowMat<Acc>& acc) {
  if (rows == 0) return;
#if defined(LPFAST_SIMD)
  const std::int64_t d = Y.cols();
  small_gram_lower<Acc>(Y.data(), d, acc.data(), d, d, rows);
#else
  acc.template selfadjointView<Eigen::Lower>().rankUpdate(Y.topRows(rows).transpose());
#endif
}

// G (d x d, lower triangle) += sign * sum_r scale[r]^2 x_{rows[r]} x_{rows[r]}^T for
// r < m. rows == nullptr: rows 0..m-1; scale == nullptr: all ones. Rows with scale 0 are
// skipped. X is (*, d) row-major with row stride d.
template <class Acc, class T>
void gram_accumulate(const T* X, std::int64_t d, const std::int64_t* rows, const double* scale,
                     std::int64_t m, double sign, MatD& G, GramWork<Acc>& ws) {
  if (m == 0 || d == 0) return;
  const int nseg = gram_segments(m);
  if (static_cast<int>(ws.acc.size()) < nseg) {
    ws.acc.resize(nseg);
    ws.gather.resize(nseg);
  }
  for (int s = 0; s < nseg; ++s) {
    ws.acc[s].setZero(d, d);
    if (ws.gather[s].rows() != kGramChunk || ws.gather[s].cols() != d)
      ws.gather[s].resize(kGramChunk, d);
  }
  const int nt = std::min(nseg, threads_for(static_cast<double>(m) * d * d, 1.0e6));
  parallel_for_dynamic(nt, nseg, [&](std::int64_t s) {
    const auto [lo, hi] = static_range(m, static_cast<int>(s), nseg);
    RowMat<Acc>& buf = ws.gather[s];
    std::int64_t filled = 0;
    for (std::int64_t r = lo; r < hi; ++r) {
      const double f = scale != nullptr ? scale[r] : 1.0;
      if (f == 0.0) continue;
      const T* x = X + (rows != nullptr ? rows[r] : r) * d;
      Acc* dst = buf.row(filled).data();
      const Acc fa = static_cast<Acc>(f);
      for (std::int64_t t = 0; t < d; ++t) dst[t] = fa * static_cast<Acc>(x[t]);
      if (++filled == kGramChunk) {
        gram_block_lower(buf, filled, ws.acc[s]);
        filled = 0;
      }
    }
    gram_block_lower(buf, filled, ws.acc[s]);
  });
  for (int s = 0; s < nseg; ++s)
    G.template triangularView<Eigen::Lower>() += sign * ws.acc[s].template cast<double>();
}

// G = X^T diag(scale^2) X (d x d, lower triangle; upper left as it was) for all n rows.
template <class Acc, class T>
void weighted_gram_lower(const T* X, std::int64_t n, std::int64_t d, const double* scale,
                         MatD& G) {
  GramWork<Acc> ws;
  G.setZero(d, d);
  gram_accumulate<Acc>(X, d, nullptr, scale, n, 1.0, G, ws);
}

// out[i] = ||x_i||^2 in double for the n rows of X. Eight partial sums, so the loop
// vectorizes: 30522 x 384 float32 in 1.9 ms against 9.1 ms for one in-order sum.
template <class T>
void row_norms2(const T* X, std::int64_t n, std::int64_t d, double* out) {
  constexpr int kLanes = 8;
  for (std::int64_t i = 0; i < n; ++i) {
    double acc[kLanes] = {};
    const T* x = X + i * d;
    std::int64_t t = 0;
    for (; t + kLanes <= d; t += kLanes)
      for (int u = 0; u < kLanes; ++u) acc[u] += static_cast<double>(x[t + u]) * x[t + u];
    double s = 0;
    for (; t < d; ++t) s += static_cast<double>(x[t]) * x[t];
    for (int u = 0; u < kLanes; ++u) s += acc[u];
    out[i] = s;
  }
}

}  // namespace lpfast
