// k-subspace seeding: the top-j basis of a group of rows (through their small m x m kernel
// matrix), and the initial bases of a restart: D^p sampling of aligned row groups, or
// random row groups. Restart r draws from stream r of the seed (rng.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include <Eigen/Core>
#include <Eigen/Eigenvalues>

#include "ks_assign.hpp"
#include "ks_problem.hpp"
#include "rng.hpp"
#include "sym_eigen.hpp"
#include "types.hpp"

namespace lpfast {
namespace ks {

template <class T>
MatD group_basis(const Data<T>& data, const std::vector<std::int64_t>& rows, int j,
                 const double* scale = nullptr) {
  const std::int64_t d = data.d, m = static_cast<std::int64_t>(rows.size());
  MatD Xs(m, d);
  for (std::int64_t r = 0; r < m; ++r) {
    const double f = scale ? scale[r] : 1.0;
    for (std::int64_t t = 0; t < d; ++t) Xs(r, t) = f * static_cast<double>(data.row(rows[r])[t]);
  }
  MatD V = MatD::Zero(d, j);
  int have = 0;
  if (m > 0) {
    MatD K = MatD::Zero(m, m);
    K.selfadjointView<Eigen::Lower>().rankUpdate(Xs);  // half the flops of Xs Xs^T
    K.triangularView<Eigen::StrictlyUpper>() = K.transpose();
    // The top j eigenpairs of K, largest first. Only those are used: on coresets (m of a few
    // hundred) all m eigenvectors from Eigen's solver were 57% of a p = 1 fit.
    const std::int64_t want = std::min<std::int64_t>(j, m);
    MatD U;
    VecD lam;
    bool ok = false;
    if (2 * want < m) U = top_eigs_tridiagonal(K, static_cast<int>(want), ok, &lam);
    if (!ok) {
      Eigen::SelfAdjointEigenSolver<MatD> es(K);
      U = es.eigenvectors().rightCols(want).rowwise().reverse();
      lam = es.eigenvalues().tail(want).reverse();
    }
    const double top = std::max(lam(0), 0.0);
    const MatD W = Xs.transpose() * U;  // one GEMM, not `want` matrix-vector products
    for (std::int64_t t = 0; t < want && have < j; ++t) {
      if (!(lam(t) > 1e-10 * top) || top == 0) break;
      VecD v = W.col(t) / std::sqrt(lam(t));
      for (int pass = 0; pass < 2; ++pass)  // re-orthogonalize against rounding
        for (int c = 0; c < have; ++c) v -= V.col(c).dot(v) * V.col(c);
      const double nv = v.norm();
      if (!(nv > 0.5)) break;
      V.col(have++) = v / nv;
    }
  }
  for (std::int64_t e = 0; e < d && have < j; ++e) {
    VecD v = VecD::Unit(d, e);
    for (int pass = 0; pass < 2; ++pass)
      for (int c = 0; c < have; ++c) v -= V.col(c).dot(v) * V.col(c);
    const double nv = v.norm();
    if (nv > 0.5) V.col(have++) = v / nv;
  }
  return V;
}

// Row a plus the rows most aligned with it (largest |cos|, ties lowest index): 2j rows.
template <class T>
std::vector<std::int64_t> aligned_group(const Data<T>& data, std::int64_t a, int j) {
  const std::int64_t n = data.n, d = data.d;
  const std::int64_t m = std::min<std::int64_t>(n, 2 * static_cast<std::int64_t>(j));
  std::vector<double> score(n);
  const T* xa = data.row(a);
  const double na = std::sqrt(data.xn2[a]);
  for (std::int64_t i = 0; i < n; ++i) {
    const T* x = data.row(i);
    double dot = 0;
    for (std::int64_t t = 0; t < d; ++t) dot += static_cast<double>(x[t]) * xa[t];
    const double den = na * std::sqrt(data.xn2[i]);
    score[i] = den > 0 ? std::abs(dot) / den : 0.0;
  }
  score[a] = std::numeric_limits<double>::infinity();
  std::vector<std::int64_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  auto better = [&](std::int64_t u, std::int64_t v) {
    return score[u] > score[v] || (score[u] == score[v] && u < v);
  };
  std::partial_sort(idx.begin(), idx.begin() + m, idx.end(), better);
  idx.resize(m);
  return idx;
}

// 2j distinct rows drawn with probability proportional to w (without replacement).
template <class T>
std::vector<std::int64_t> random_group(const Data<T>& data, int j, Rng& rng) {
  const std::int64_t n = data.n;
  const std::int64_t m = std::min<std::int64_t>(n, 2 * static_cast<std::int64_t>(j));
  std::vector<double> score(data.w, data.w + n);
  std::vector<std::int64_t> out;
  while (static_cast<std::int64_t>(out.size()) < m) {
    std::int64_t i = sample_index(score, rng);
    if (i < 0) {  // weights exhausted: lowest unused rows
      for (std::int64_t r = 0; r < n && static_cast<std::int64_t>(out.size()) < m; ++r)
        if (std::find(out.begin(), out.end(), r) == out.end()) out.push_back(r);
      break;
    }
    out.push_back(i);
    score[i] = 0;
  }
  return out;
}

// Initial bases for one restart.
//   kDp:     row a_1 ~ w; then a_c ~ w * D(x)^p, D = distance to the nearest basis so far;
//            basis c = top-j of a_c's aligned group (a_c and its 2j-1 rows of largest |cos|).
//   kRandom: basis c = top-j of 2j distinct rows drawn ~ w.
template <class T>
std::vector<MatD> seed_bases(const Data<T>& data, const Options& opt, Seeding how, Rng& rng) {
  std::vector<MatD> V;
  V.reserve(opt.k);
  if (how == Seeding::kRandom) {
    for (int c = 0; c < opt.k; ++c) V.push_back(group_basis(data, random_group(data, opt.j, rng), opt.j));
    return V;
  }
  const std::int64_t n = data.n;
  std::vector<double> score(data.w, data.w + n);
  std::vector<double> mind2(n, std::numeric_limits<double>::infinity());
  std::vector<std::int64_t> all(n);
  std::iota(all.begin(), all.end(), 0);
  std::vector<double> d2(n);
  for (int c = 0; c < opt.k; ++c) {
    std::int64_t a = sample_index(score, rng);
    if (a < 0) {  // every row already on a subspace: fall back to ~ w
      std::vector<double> wv(data.w, data.w + n);
      a = sample_index(wv, rng);
      if (a < 0) a = 0;
    }
    V.push_back(group_basis(data, aligned_group(data, a, opt.j), opt.j));
    if (c + 1 == opt.k) break;
    member_dist2(data, all, V.back(), d2.data());
    for (std::int64_t i = 0; i < n; ++i) {
      mind2[i] = std::min(mind2[i], d2[i]);
      score[i] = row_cost(data.w[i], mind2[i], opt.p);
    }
  }
  return V;
}

}  // namespace ks
}  // namespace lpfast
