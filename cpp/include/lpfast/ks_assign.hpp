// k-subspace assignment: each row's nearest basis (label), squared distance and optional
// coefficients, by one GEMM of fixed chunks of rows against the stacked bases (so every
// row's result is independent of the thread count; ties go to the lowest index); distances
// of listed rows to one basis; each cluster's rows.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "ks_problem.hpp"
#include "parallel.hpp"
#include "small_gemm.hpp"
#include "types.hpp"

namespace lpfast {
namespace ks {

constexpr std::int64_t kAssignChunk = 512;

// labels / dist2 (and optionally coef, (n, j) row-major: V_label^T x; and all_d2, (n, k)
// row-major: the squared distance to every basis) for rows[0..m), or for every row when
// rows == nullptr (then m = n). Outputs are indexed by row number.
template <class T>
void assign_rows(const Data<T>& data, const std::vector<MatD>& V, const std::int64_t* rows,
                 std::int64_t m, std::int64_t* labels, double* dist2, T* coef = nullptr,
                 double* all_d2 = nullptr) {
  const std::int64_t d = data.d;
  const int k = static_cast<int>(V.size());
  const int j = static_cast<int>(V[0].cols());
  const std::int64_t kj = static_cast<std::int64_t>(k) * j;
  RowMat<T> B(d, kj);  // row-major: small_gemm streams its rows
  for (int c = 0; c < k; ++c) B.middleCols(static_cast<std::int64_t>(c) * j, j) = V[c].cast<T>();
  const std::int64_t chunks = (m + kAssignChunk - 1) / kAssignChunk;
  const int nt = threads_for(2.0 * m * d * k * j, 1.0e6);
  parallel_region(nt, [&](int tid, int team) {
    const bool in_place = small_gemm_serves<T>(d);
    RowMat<T> P(kAssignChunk, kj);
    RowMat<T> Xg(rows != nullptr && !in_place ? kAssignChunk : 0, d);
    const auto [ch0, ch1] = static_range(chunks, tid, team);
    for (std::int64_t ch = ch0; ch < ch1; ++ch) {
      const std::int64_t r0 = ch * kAssignChunk, r1 = std::min(m, r0 + kAssignChunk);
      const std::int64_t cnt = r1 - r0;
      // Equal bases must give equal distances, so that ties go to the lowest index as
      // documented: one product when small_gemm serves it, else one per basis.
      if (in_place) {
        if (rows != nullptr)
          rowmajor_gemm_indexed(data.X, d, rows + r0, B.data(), kj, P.data(), kj, cnt, kj, d,
                                static_cast<T*>(nullptr));
        else
          rowmajor_gemm(data.row(r0), d, B.data(), kj, P.data(), kj, cnt, kj, d, false);
      } else {
        const T* Xc = data.row(r0);
        if (rows != nullptr) {
          gather_rows(data.X, d, rows + r0, cnt, d, Xg.data());
          Xc = Xg.data();
        }
        for (int c = 0; c < k; ++c)
          rowmajor_gemm(Xc, d, B.data() + static_cast<std::int64_t>(c) * j, kj,
                        P.data() + static_cast<std::int64_t>(c) * j, kj, cnt, j, d, false);
      }
      for (std::int64_t r = 0; r < cnt; ++r) {
        const std::int64_t i = rows != nullptr ? rows[r0 + r] : r0 + r;
        const T* pr = P.row(r).data();
        int best = 0;
        double best_d2 = std::numeric_limits<double>::infinity();
        for (int c = 0; c < k; ++c) {
          double s = 0;
          for (int t = 0; t < j; ++t) s += static_cast<double>(pr[c * j + t]) * pr[c * j + t];
          const double d2 = std::max(data.xn2[i] - s, 0.0);
          if (all_d2 != nullptr) all_d2[i * k + c] = d2;
          if (d2 < best_d2) {
            best_d2 = d2;
            best = c;
          }
        }
        labels[i] = best;
        dist2[i] = best_d2;
        if (coef != nullptr) std::copy(pr + best * j, pr + (best + 1) * j, coef + i * j);
      }
    }
  });
}

// labels / dist2 (and optionally coef) for every row.
template <class T>
void assign(const Data<T>& data, const std::vector<MatD>& V, std::int64_t* labels, double* dist2,
            T* coef = nullptr) {
  assign_rows(data, V, nullptr, data.n, labels, dist2, coef);
}

// Squared distance of the given rows to one basis V (out[r] for rows[r]); with `coef`
// ((n, j) row-major, indexed by row number), also their coefficients V^T x.
template <class T>
void member_dist2(const Data<T>& data, const std::vector<std::int64_t>& rows, const MatD& V,
                  double* out, T* coef = nullptr) {
  const std::int64_t m = static_cast<std::int64_t>(rows.size()), d = data.d;
  const RowMat<T> Vt = V.cast<T>();
  const std::int64_t j = V.cols();
  const std::int64_t chunks = (m + kAssignChunk - 1) / kAssignChunk;
  const int nt = threads_for(2.0 * m * d * V.cols(), 1.0e6);
  parallel_region(nt, [&](int tid, int team) {
    RowMat<T> Xc(small_gemm_serves<T>(d) ? 0 : kAssignChunk, d);  // rowmajor_gemm_indexed's
    RowMat<T> P(kAssignChunk, j);
    const auto [ch0, ch1] = static_range(chunks, tid, team);
    for (std::int64_t ch = ch0; ch < ch1; ++ch) {
      const std::int64_t r0 = ch * kAssignChunk, r1 = std::min(m, r0 + kAssignChunk);
      rowmajor_gemm_indexed(data.X, d, rows.data() + r0, Vt.data(), j, P.data(), j, r1 - r0, j,
                            d, Xc.data());
      for (std::int64_t r = r0; r < r1; ++r) {
        double s = 0;
        for (std::int64_t t = 0; t < V.cols(); ++t)
          s += static_cast<double>(P(r - r0, t)) * P(r - r0, t);
        out[r] = std::max(data.xn2[rows[r]] - s, 0.0);
        if (coef != nullptr) std::copy(P.row(r - r0).data(), P.row(r - r0).data() + j, coef + rows[r] * j);
      }
    }
  });
}

// The rows of each of the k clusters, in increasing order.
inline std::vector<std::vector<std::int64_t>> members_by_label(
    const std::vector<std::int64_t>& labels, int k) {
  std::vector<std::vector<std::int64_t>> members(k);
  for (std::size_t i = 0; i < labels.size(); ++i)
    members[labels[i]].push_back(static_cast<std::int64_t>(i));
  return members;
}

// Coefficients V_label^T x of every row ((n, j) row-major) under the given labels: one
// product per cluster with its own basis, a k-th of a full assignment.
template <class T>
void coefficients(const Data<T>& data, const std::vector<MatD>& V,
                  const std::vector<std::int64_t>& labels, T* coef) {
  const auto members = members_by_label(labels, static_cast<int>(V.size()));
  std::vector<double> d2;
  for (std::size_t c = 0; c < V.size(); ++c) {
    d2.resize(members[c].size());
    if (!d2.empty()) member_dist2(data, members[c], V[c], d2.data(), coef);
  }
}

// Reusable scratch of the Gram accumulation.

}  // namespace ks
}  // namespace lpfast
