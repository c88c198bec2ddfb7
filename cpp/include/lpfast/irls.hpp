// lp subspace fitting by iteratively reweighted least squares (IRLS).
//
// Minimizes cost_p(X, V; w) = sum_i w_i * dist(x_i, V)^p over (d, k) bases V with
// orthonormal columns, dist(x, V) = ||x - V V^T x||_2, points x_i the rows of X (n, d).
// One IRLS step: omega_i = w_i * max(dist(x_i, V), eps)^(p - 2), V <- top-k eigenvectors of
// X^T diag(omega) X. For p in [1, 2], t -> t^(p/2) is concave, so the weighted squared
// distances majorize the cost: every step is a majorize-minimize step and the cost never
// increases. For p > 2 there is no such guarantee: a step that raises the cost is rejected
// and the fit stops at the last improving basis.
//
// How a step is computed, and why (30522 x 768, k = 128, float64, one Zen 4 core, before
// the shared blocks below):
//   * NumPy reference, SVD of sqrt(omega) X:                              5.4 s
//   * weighted Gram X^T diag(omega) X as blocked symmetric rank updates:  0.50 s
//     + Eigen SelfAdjointEigenSolver on the (d, d) Gram:                  0.17 s
//   * the distances for the next weights, one GEMM X V (n*d*k):           0.19 s
// A matrix-free block subspace iteration on the Gram, X^T (omega * (X V)), costs about
// 0.2 s per power step here (k/d of the Gram), but one power step per IRLS step is not the
// exact IRLS step: the iterates then drift from the exact IRLS path (and from the
// reference), and on flat spectra (e.g. Gaussian data: Marchenko-Pastur eigenvalues all
// within ~[0.7, 1.3] of each other at this aspect ratio) many power steps are needed per
// IRLS step before the top-k subspace is resolved, so the Gram's fixed n*d^2/2 wins. The
// Gram is formed once per step (gram.hpp: the register-blocked kernel, fixed segments, so
// results do not depend on the thread count) and its top-k eigenvectors come from
// sym_eigen.hpp, warm-started at the current basis (a Krylov step or two once the
// iterates settle; the dense bisection solver otherwise): the eigensolve then costs little
// next to the Gram's n*d^2 and the distances' 2*n*d*k.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <vector>

#include <Eigen/Core>

#include "gram.hpp"
#include "distances.hpp"
#include "sym_eigen.hpp"
#include "types.hpp"

namespace lpfast {

struct IrlsOptions {
  double p = 1.0;      // exponent, >= 1
  double eps = 0.0;    // distance floor in the weights, > 0
  double tol = 1e-6;   // stop when the relative cost decrease is <= tol
  int max_iter = 100;  // at most this many IRLS steps
};

struct IrlsResult {
  std::vector<double> history;  // cost of the initial basis, then after each accepted step
  int n_iter = 0;               // accepted steps
  bool converged = false;
};

// Called after the initial cost (iteration 0) and after each accepted step; returning true
// stops the fit (converged stays false). Called on the thread that called the fit.
using IrlsCallback = std::function<bool(int iteration, double cost)>;

// sum_i w_i * dist_i^p (w == nullptr: ones), summed in double in index order.
template <class T>
double lp_cost_from_distances(const T* dist, const T* w, std::int64_t n, double p) {
  double total = 0.0;
  for (std::int64_t i = 0; i < n; ++i) {
    const double di = static_cast<double>(dist[i]);
    const double term = p == 1.0 ? di : p == 2.0 ? di * di : std::pow(di, p);
    total += w != nullptr ? static_cast<double>(w[i]) * term : term;
  }
  return total;
}

// sum_i w_i * dist(x_i, V)^p (w == nullptr: ones) for V (d, k) row-major with orthonormal
// columns, p >= 0: one pass over X (subspace_distances with the row norms taken per
// block), summed in double in index order, so it equals the IRLS history's cost of V.
template <class T>
double subspace_cost(const T* X, std::int64_t n, std::int64_t d, const T* w, const T* V,
                     std::int64_t k, double p) {
  std::vector<T> dist(static_cast<std::size_t>(n));
  la::subspace_distances(X, n, d, static_cast<const T*>(nullptr), V, k, dist.data());
  return lp_cost_from_distances(dist.data(), w, n, p);
}

// sqrt(omega_i) with omega_i = w_i * max(dist_i, eps)^(p - 2), computed in double and
// scaled so that the largest omega is 1 (a common factor does not change the eigenvectors,
// and the scaling keeps float32 Grams in range for large p). These are the row scales of
// the weighted Gram (gram.hpp).
template <class T>
void irls_sqrt_weights(const T* dist, const T* w, std::int64_t n, double p, double eps,
                       std::vector<double>& sqrt_omega) {
  sqrt_omega.resize(static_cast<std::size_t>(n));
  double top = 0.0;
  for (std::int64_t i = 0; i < n; ++i) {
    const double di = std::max(static_cast<double>(dist[i]), eps);
    const double base = p == 1.0 ? 1.0 / di : p == 2.0 ? 1.0 : std::pow(di, p - 2.0);
    sqrt_omega[i] = w != nullptr ? static_cast<double>(w[i]) * base : base;
    top = std::max(top, sqrt_omega[i]);
  }
  const double scale = top > 0.0 && std::isfinite(top) ? 1.0 / top : 1.0;
  for (auto& s : sqrt_omega) s = std::sqrt(s * scale);
}

// sqrt(w_i) in double (w == nullptr: an empty vector, meaning ones).
template <class T>
std::vector<double> sqrt_weights(const T* w, std::int64_t n) {
  std::vector<double> s;
  if (w == nullptr) return s;
  s.resize(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) s[i] = std::sqrt(static_cast<double>(w[i]));
  return s;
}

// The weighted PCA basis: top-k eigenvectors of X^T diag(w) X (w == nullptr: ones), i.e. the
// optimal p = 2 subspace and the "svd" start of the IRLS. V: (d, k) row-major, output.
template <class T>
void weighted_pca(const T* X, std::int64_t n, std::int64_t d, const T* w, std::int64_t k, T* V) {
  if (k < 1 || k > d) throw std::invalid_argument("k: expected 1 <= k <= d");
  const std::vector<double> s = sqrt_weights(w, n);
  MatD G;
  weighted_gram_lower<T>(X, n, d, s.empty() ? nullptr : s.data(), G);
  top_eigenvectors_rowmajor<T>(G, k, static_cast<const T*>(nullptr), V);
}

// The IRLS fit. V (d, k) row-major holds the start basis (orthonormal columns) on entry and
// the fitted basis on exit. w (n) may be null (all ones); entries must be >= 0 and finite.
// Does not touch X or w. Throws std::invalid_argument on bad options.
template <class T>
IrlsResult lp_subspace_irls(const T* X, std::int64_t n, std::int64_t d, const T* w,
                            std::int64_t k, T* V, const IrlsOptions& opt,
                            const IrlsCallback& callback = {}) {
  if (!(opt.p >= 1.0) || !std::isfinite(opt.p)) throw std::invalid_argument("p: expected p >= 1");
  if (!(opt.eps > 0.0)) throw std::invalid_argument("eps: expected eps > 0");
  if (!(opt.tol >= 0.0)) throw std::invalid_argument("tol: expected tol >= 0");
  if (opt.max_iter < 1) throw std::invalid_argument("max_iter: expected max_iter >= 1");
  if (n < 1 || d < 1) throw std::invalid_argument("X: expected a non-empty (n, d) matrix");
  if (k < 1 || k > d) throw std::invalid_argument("k: expected 1 <= k <= d");

  const std::size_t nn = static_cast<std::size_t>(n);
  std::vector<T> row_sq(nn), dist(nn), next_dist(nn);
  std::vector<double> sqrt_omega;
  std::vector<T> next_v(static_cast<std::size_t>(d * k));
  MatD G;
  la::row_squared_norms(X, n, d, row_sq.data());

  IrlsResult res;
  la::subspace_distances(X, n, d, row_sq.data(), V, k, dist.data());
  double cost = lp_cost_from_distances(dist.data(), w, n, opt.p);
  res.history.push_back(cost);
  if (callback && callback(0, cost)) return res;
  if (cost == 0.0) {  // already exact: every step would return an equally good basis
    res.converged = true;
    return res;
  }
  for (int it = 1; it <= opt.max_iter; ++it) {
    irls_sqrt_weights(dist.data(), w, n, opt.p, opt.eps, sqrt_omega);
    weighted_gram_lower<T>(X, n, d, sqrt_omega.data(), G);
    // Warm-started at the current basis: after the first steps it is close to the next one.
    top_eigenvectors_rowmajor<T>(G, k, V, next_v.data());
    la::subspace_distances(X, n, d, row_sq.data(), next_v.data(), k, next_dist.data());
    const double next_cost = lp_cost_from_distances(next_dist.data(), w, n, opt.p);
    const bool small = std::abs(cost - next_cost) <= opt.tol * cost;
    if (opt.p > 2.0 && next_cost > cost) {  // safeguard: keep only improving steps
      res.converged = small;
      return res;
    }
    std::copy(next_v.begin(), next_v.end(), V);
    dist.swap(next_dist);
    res.history.push_back(next_cost);
    res.n_iter = it;
    // For p <= 2 a cost increase can only be rounding at the fixed point: it also stops.
    const bool done = cost - next_cost <= opt.tol * cost;
    cost = next_cost;
    const bool stop = callback && callback(it, cost);
    if (done) {
      res.converged = true;
      return res;
    }
    if (stop) return res;
  }
  return res;
}

}  // namespace lpfast
