// k-subspace Lloyd iterations from given bases: assignment with Elkan-style distance
// bounds, reseeding of empty clusters, and the refit (kept Grams updated by the rows that
// moved for p = 2; a few IRLS steps per iteration otherwise). See k_subspaces.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <utility>
#include <vector>

#include <Eigen/Core>
#include <Eigen/Eigenvalues>

#include "gram.hpp"
#include "ks_assign.hpp"
#include "ks_problem.hpp"
#include "ks_seed.hpp"
#include "small_gemm.hpp"
#include "sym_eigen.hpp"
#include "types.hpp"

#ifdef LPFAST_KS_PROFILE
#include <chrono>
#include <cstdio>
#define KS_T0(name) const auto t0_##name = std::chrono::steady_clock::now()
#define KS_T1(name)                                                                    \
  std::fprintf(stderr, "%s %.4f\n", #name,                                             \
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_##name).count())
#else
#define KS_T0(name)
#define KS_T1(name)
#endif

namespace lpfast {
namespace ks {

template <class T>
class Lloyd {
 public:
  Lloyd(const Data<T>& data, const Options& opt) : data_(data), opt_(opt) {}

  Fit run(std::vector<MatD> V) {
    const std::int64_t n = data_.n;
    Fit cur;
    cur.V = std::move(V);
    cur.labels.resize(n);
    cur.dist2.resize(n);
    assign_all(cur);
    cur.cost = total_cost(data_, cur.dist2, opt_.p);
    Fit best = cur;
    best.history = {cur.cost};
    double prev = cur.cost;
    for (int it = 1; it <= opt_.max_iter; ++it) {
      const std::vector<MatD> before = cur.V;
      KS_T0(refit);
      refit(cur);
      KS_T1(refit);
      KS_T0(assign);
      assign_bounded(before, cur);
      KS_T1(assign);
      cur.cost = total_cost(data_, cur.dist2, opt_.p);
      best.history.push_back(cur.cost);
      best.n_iter = it;
      if (cur.cost < best.cost) {
        best.V = cur.V;
        best.labels = cur.labels;
        best.dist2 = cur.dist2;
        best.cost = cur.cost;
      }
      if (!(prev - cur.cost > opt_.tol * prev)) break;
      prev = cur.cost;
    }
    return best;
  }

 private:
  // -- assignment with Elkan-style bounds -----------------------------------------------------
  // upper_[i] >= dist(x_i, V_label_i) and lower_[i k + c] <= dist(x_i, V_c) hold for the exact
  // distances (not squared). When a basis moves from V to V', every row's distance to it moves
  // by at most ||x|| sin theta_max(V, V') = ||x|| ||(I - V V^T) V'||_2, so the bounds are
  // loosened by that much. Every row then gets its own distance (the cost needs it), which
  // tightens its upper bound, and the exact distance to each basis whose lower bound does not
  // clear that by the rounding error of the assignment GEMM; its label moves to the nearest
  // of those (ties: lowest index). Bases that moved little are thereby skipped even while
  // another moved far (k = 10 here: one basis turning fully used to send every row to the
  // full product). Labels are therefore those of the full assignment.
  // |computed - exact| squared distance <= round_ * ||x||^2 for a (d x k j) GEMM in T:
  // each coefficient is off by at most gamma_d ||x||, so the sum of j squares by
  // 2 sqrt(j) gamma_d ||x||^2 (+ second order); a factor 2 on top, and the double sums.
  double rounding() const {
    const double u = 0.5 * std::numeric_limits<T>::epsilon();
    const double gamma = (data_.d + 2) * u / (1.0 - (data_.d + 2) * u);
    return 4.0 * std::sqrt(static_cast<double>(opt_.j)) * gamma + 1e-14;
  }

  void assign_all(Fit& f) {
    const std::int64_t n = data_.n;
    const int k = opt_.k;
    all_d2_.resize(static_cast<std::size_t>(n) * k);
    assign_rows<T>(data_, f.V, nullptr, n, f.labels.data(), f.dist2.data(), nullptr, all_d2_.data());
    upper_.resize(n);
    lower_.resize(static_cast<std::size_t>(n) * k);
    const double eta = rounding();
    for (std::int64_t i = 0; i < n; ++i) set_bounds(i, eta * data_.xn2[i], f);
  }

  void set_bounds(std::int64_t i, double E, const Fit& f) {
    const int k = opt_.k;
    upper_[i] = std::sqrt(f.dist2[i] + E);
    for (int c = 0; c < k; ++c)
      lower_[i * k + c] = std::sqrt(std::max(all_d2_[i * k + c] - E, 0.0));
  }

  void assign_bounded(const std::vector<MatD>& before, Fit& f) {
    const std::int64_t n = data_.n;
    const int k = opt_.k;
    std::vector<double> move(k);
    for (int c = 0; c < k; ++c) {
      const MatD W = f.V[c] - before[c] * (before[c].transpose() * f.V[c]);
      const MatD WtW = W.transpose() * W;
      Eigen::SelfAdjointEigenSolver<MatD> es(WtW, Eigen::EigenvaluesOnly);
      const double lam = std::max(es.eigenvalues().maxCoeff(), 0.0);
      move[c] = std::sqrt(lam) * (1.0 + 1e-6) + 1e-12;  // margin for the eigenvalue's rounding
    }
    const double eta = rounding();
    // A basis c needs row i's exact distance unless its lower bound clears the upper one.
    auto clears = [&](std::int64_t i, int c) {
      const double l = lower_[i * k + c];
      return l > 0 && upper_[i] * upper_[i] + 2.0 * eta * data_.xn2[i] < l * l;
    };
    const auto members = members_by_label(f.labels, k);
    std::int64_t pairs = 0;  // (row, other basis) pairs the loosened bounds leave open
    for (std::int64_t i = 0; i < n; ++i) {
      const double xnorm = std::sqrt(data_.xn2[i]);
      const int a = static_cast<int>(f.labels[i]);
      upper_[i] += move[a] * xnorm;
      for (int c = 0; c < k; ++c) lower_[i * k + c] -= move[c] * xnorm;
      for (int c = 0; c < k; ++c) pairs += c != a && !clears(i, c);
    }
#ifdef LPFAST_KS_PROFILE
    std::fprintf(stderr, "open pairs %lld of %lld\n", static_cast<long long>(pairs),
                 static_cast<long long>(n) * (k - 1));
#endif
    // Nearly everything open (early iterations): one product, no gathers.
    if (10 * (n + pairs) >= 9 * n * k) {
      assign_rows<T>(data_, f.V, nullptr, n, f.labels.data(), f.dist2.data(), nullptr,
                     all_d2_.data());
      for (std::int64_t i = 0; i < n; ++i) set_bounds(i, eta * data_.xn2[i], f);
      return;
    }
    // Own distances, one GEMM per cluster against its basis; they tighten the upper bounds.
    std::vector<double> d2;
    for (int c = 0; c < k; ++c) {
      d2.resize(members[c].size());
      if (!d2.empty()) member_dist2(data_, members[c], f.V[c], d2.data());
      for (std::size_t r = 0; r < d2.size(); ++r) {
        const std::int64_t i = members[c][r];
        f.dist2[i] = d2[r];
        upper_[i] = std::sqrt(d2[r] + eta * data_.xn2[i]);
      }
    }
    std::vector<std::vector<std::int64_t>> open(k);
    std::vector<std::int64_t> open_rows;  // rows with at least one open basis
    for (std::int64_t i = 0; i < n; ++i) {
      bool any = false;
      for (int c = 0; c < k; ++c)
        if (c != f.labels[i] && !clears(i, c)) {
          open[c].push_back(i);
          any = true;
        }
      if (any) open_rows.push_back(i);
    }
    // A row's distance to a basis must not depend on which list it was computed in, or equal
    // bases could break ties differently: small_gemm computes each entry alone, in a fixed
    // order; Eigen's blocking varies with the operands' shape, so there the open rows take
    // the full product, where equal bases get equal products.
    if (!small_gemm_serves<T>(data_.d)) {
      if (open_rows.empty()) return;
      assign_rows<T>(data_, f.V, open_rows.data(), static_cast<std::int64_t>(open_rows.size()),
                     f.labels.data(), f.dist2.data(), nullptr, all_d2_.data());
      for (std::int64_t i : open_rows) set_bounds(i, eta * data_.xn2[i], f);
      return;
    }
    // Exact distances to the open bases; each row keeps the nearest (ties: lowest index).
    const std::vector<std::int64_t> was = f.labels;
    for (int c = 0; c < k; ++c) {
      d2.resize(open[c].size());
      if (!d2.empty()) member_dist2(data_, open[c], f.V[c], d2.data());
      for (std::size_t r = 0; r < d2.size(); ++r) {
        const std::int64_t i = open[c][r];
        lower_[i * k + c] = std::sqrt(std::max(d2[r] - eta * data_.xn2[i], 0.0));
        if (d2[r] < f.dist2[i] || (d2[r] == f.dist2[i] && c < f.labels[i])) {
          if (f.labels[i] == was[i])  // the old cluster's distance now bounds it from below
            lower_[i * k + was[i]] = std::sqrt(std::max(f.dist2[i] - eta * data_.xn2[i], 0.0));
          f.labels[i] = c;
          f.dist2[i] = d2[r];
          upper_[i] = std::sqrt(d2[r] + eta * data_.xn2[i]);
        }
      }
    }
  }

  void refit(Fit& f) {
    const int k = opt_.k;
    const auto members = members_by_label(f.labels, k);
    std::vector<int> empty;
    for (int c = 0; c < k; ++c)
      if (members[c].empty()) empty.push_back(c);
    if (!empty.empty()) reseed(f, empty);
    if (opt_.p == 2.0) {
      refit_l2(f, members);
    } else {
      for (int c = 0; c < k; ++c)
        if (!members[c].empty()) refit_irls(f, c, members[c]);
    }
  }

  // Clusters this small are refit through their m x m kernel matrix (group_basis): up to
  // m = d its top-j eigenpairs cost less than the d x d Gram's (k = 10 on a 1251-row coreset
  // of 30522 x 384, p = 1: 10.2 s -> 7.0 s for 10 restarts with the bound at d / 2).
  bool small(std::size_t m) const {
    return m > static_cast<std::size_t>(opt_.j) && static_cast<std::int64_t>(m) <= data_.d;
  }

  void reseed(Fit& f, const std::vector<int>& empty) {
    const std::int64_t n = data_.n;
    const std::int64_t ne = static_cast<std::int64_t>(empty.size());
    const std::int64_t g = std::max<std::int64_t>(1, std::min<std::int64_t>(opt_.j, n / ne));
    const std::int64_t take = std::min<std::int64_t>(n, g * ne);
    std::vector<double> score(n);
    for (std::int64_t i = 0; i < n; ++i) score[i] = row_cost(data_.w[i], f.dist2[i], opt_.p);
    std::vector<std::int64_t> idx(n);
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + take, idx.end(), [&](std::int64_t u, std::int64_t v) {
      return score[u] > score[v] || (score[u] == score[v] && u < v);
    });
    for (std::int64_t e = 0; e < ne; ++e) {
      const std::int64_t lo = std::min(take, e * g), hi = std::min(take, (e + 1) * g);
      std::vector<std::int64_t> rows(idx.begin() + lo, idx.begin() + hi);
      f.V[empty[e]] = group_basis(data_, rows, opt_.j);
    }
  }

  void refit_l2(Fit& f, const std::vector<std::vector<std::int64_t>>& members) {
    const std::int64_t n = data_.n, d = data_.d;
    const int k = opt_.k;
    const bool first = gram_labels_.empty();
    if (first) {
      gram_labels_.assign(n, -1);
      G_.assign(k, MatD::Zero(d, d));
    }
    std::vector<std::vector<std::int64_t>> added(k), removed(k);
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t now = f.labels[i], was = gram_labels_[i];
      if (now == was) continue;
      added[now].push_back(i);
      if (was >= 0) removed[was].push_back(i);
    }
    // Rows each cluster's Gram update would read: all members (rebuild) or the rows that
    // moved in and out, whichever is fewer. The most expensive large one is instead derived
    // from the sum of all Grams, which never changes (a third of the Gram work at k = 3 in
    // the early iterations, where most rows move).
    // Only a cluster holding at least 1/(2k) of the rows is derived: the subtraction's
    // rounding is relative to the total Gram, which would swamp a small cluster's.
    std::vector<std::size_t> work(k);
    int derived = -1;
    for (int c = 0; c < k; ++c) {
      work[c] = std::min(members[c].size(), added[c].size() + removed[c].size());
      const bool large =
          2 * static_cast<std::size_t>(k) * members[c].size() >= static_cast<std::size_t>(n);
      if (!first && large && work[c] > 0 && (derived < 0 || work[c] > work[derived])) derived = c;
    }
    std::vector<double> scale;
    auto sqrt_w = [&](const std::vector<std::int64_t>& rows) {
      scale.resize(rows.size());
      for (std::size_t r = 0; r < rows.size(); ++r) scale[r] = std::sqrt(data_.w[rows[r]]);
    };
    auto refit_basis = [&](int c) {
      KS_T0(eig);
      const auto& mem = members[c];
      if (small(mem.size())) {
        sqrt_w(mem);
        f.V[c] = group_basis(data_, mem, opt_.j, scale.data());
      } else if (!mem.empty()) {
        f.V[c] = top_eigenvectors<T>(G_[c], f.V[c], opt_.j);
      }
      KS_T1(eig);
    };
    for (int c = 0; c < k; ++c) {
      if (c == derived) continue;
      const auto& mem = members[c];
      KS_T0(gram);
      if (work[c] == mem.size()) {  // rebuild
        G_[c].setZero();
        sqrt_w(mem);
        gram_accumulate<T>(data_.X, data_.d, mem.data(), scale.data(), static_cast<std::int64_t>(mem.size()),
                        1.0, G_[c], work_);
      } else {
        sqrt_w(added[c]);
        gram_accumulate<T>(data_.X, data_.d, added[c].data(), scale.data(),
                        static_cast<std::int64_t>(added[c].size()), 1.0, G_[c], work_);
        sqrt_w(removed[c]);
        gram_accumulate<T>(data_.X, data_.d, removed[c].data(), scale.data(),
                        static_cast<std::int64_t>(removed[c].size()), -1.0, G_[c], work_);
      }
      KS_T1(gram);
      refit_basis(c);
    }
    if (first) {
      G_total_ = MatD::Zero(d, d);
      for (int c = 0; c < k; ++c) G_total_.triangularView<Eigen::Lower>() += G_[c];
    } else if (derived >= 0) {
      G_[derived].triangularView<Eigen::Lower>() = G_total_;
      for (int c = 0; c < k; ++c)
        if (c != derived) G_[derived].triangularView<Eigen::Lower>() -= G_[c];
      refit_basis(derived);
    }
    gram_labels_ = f.labels;
  }

  void refit_irls(Fit& f, int c, const std::vector<std::int64_t>& mem) {
    const std::int64_t m = static_cast<std::int64_t>(mem.size()), d = data_.d;
    std::vector<double> d2(m), scale(m);
    for (std::int64_t r = 0; r < m; ++r) d2[r] = f.dist2[mem[r]];
    MatD G(d, d);
    for (int s = 0; s < opt_.irls_steps; ++s) {
      if (s > 0) member_dist2(data_, mem, f.V[c], d2.data());
      for (std::int64_t r = 0; r < m; ++r) {
        const double dist = std::max(std::sqrt(d2[r]), opt_.eps);
        // sqrt(omega) = sqrt(w) * dist^((p - 2) / 2)
        scale[r] = std::sqrt(data_.w[mem[r]]) * std::pow(dist, 0.5 * (opt_.p - 2.0));
      }
      if (small(mem.size())) {
        f.V[c] = group_basis(data_, mem, opt_.j, scale.data());
        continue;
      }
      KS_T0(gram);
      G.setZero();
      gram_accumulate<T>(data_.X, data_.d, mem.data(), scale.data(), m, 1.0, G, work_);
      KS_T1(gram);
      KS_T0(eig);
      f.V[c] = top_eigenvectors<T>(G, f.V[c], opt_.j);
      KS_T1(eig);
    }
  }

  const Data<T>& data_;
  Options opt_;
  std::vector<std::int64_t> gram_labels_;
  std::vector<double> upper_, lower_, all_d2_;
  std::vector<MatD> G_;
  MatD G_total_;  // sum of all rows' w x x^T (lower triangle), from the first refit
  GramWork<T> work_;
};

// Sign convention of returned bases: each column's largest-|.| entry is positive.

}  // namespace ks
}  // namespace lpfast
