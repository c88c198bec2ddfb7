// lp Lewis weights (Cohen & Peng, "lp Row Sampling by Lewis Weights", STOC 2015).
//
// The Lewis weights of X (n x d, rows are points) are the unique w >= 0 with
//   w_i = tau_i(W^(1-2/p) X)^(p/2),   tau_i(S X) := x_i^T (X^T S X)^+ x_i,
// p = 2 gives the leverage scores and sum_i w_i = rank(X). The fixed-point iteration
// w <- tau(W^(1-2/p) X)^(p/2) contracts for p < 4 with rate |1 - p/2| in log w.
//
// Scale correction. The map f(w) = tau(W^(1-2/p) X)^(p/2) is homogeneous: f(c w) =
// c^(1-p/2) f(w), and the slowest mode of the plain iteration is exactly this overall scale
// (eigenvalue 1 - p/2 of its Jacobian in log w). Each step therefore evaluates f(w) once and
// returns f(c w) = c^(1-p/2) f(w) with c = (sum f(w) / sum w)^(2/p), the c for which the new
// iterate and c w have the same sum. Fixed points are unchanged (c = 1 there), and on
// embedding-like data the iteration needs ~8 steps instead of ~30 for tol = 1e-8 at p = 1.
//
// Exact method, per step: the Gram M = X^T diag(s) X (s = w^(1-2/p)) accumulated in double
// by gram.hpp (fixed segments, the same for any thread count); M is equilibrated to unit
// diagonal and Cholesky-factored; tau_i = |L^-1 x_i|^2 by triangular solves over blocks of
// rows (in the input precision; in double for float input whose Gram's condition bound
// exceeds 1e6). A rank-deficient or numerically singular M (condition bound
// d trace(M^-1) of the equilibrated M above 1 / rcond, rcond = 100 d eps(double); the
// pivots alone do not reveal the rank) switches to the pseudo-inverse from an
// eigendecomposition that keeps eigenvalues above rcond times the largest.
// Cost per step: 2 n d^2 flops + O(d^3).
//
// Sketch method (for tall X, n >= 8 d; otherwise the exact method runs): a CountSketch Pi
// with 4 d rows (fixed for the call) replaces the Gram by (Pi S^1/2 X)^T (Pi S^1/2 X), and
// a Gaussian Johnson-Lindenstrauss map G (d x k) estimates tau_i = |x_i^T L^-T G|^2 / k.
// The iteration uses one fixed G with k = 16 (so it is a deterministic map and can stop on
// max(tol, 0.01)), then one final evaluation uses a fresh G with k = ceil(128 p^2), or
// exact row norms with the sketched factor when that is cheaper (2 k >= d). Finally w is
// rescaled to sum to the sketch's rank (removing the sketch's overall bias). Cost per
// step: O(n d k + d^3), i.e. n d (2 k + 1) + 4 d^3 flops instead of 2 n d^2.
//
// This file holds the iteration; lewis_tau.hpp computes the scores tau of each step.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <stdexcept>
#include <vector>

#include <Eigen/Core>

#include "lewis_tau.hpp"
#include "parallel.hpp"
#include "rng.hpp"
#include "types.hpp"

namespace lpfast {

struct LewisOptions {
  double p = 1.0;
  double tol = 1e-8;
  int max_iter = 100;
  bool sketch = false;
  std::uint64_t seed = 0;
};

struct LewisInfo {
  int iterations = 0;      // evaluations of the fixed-point map
  double max_change = 0;   // max relative change of the last step
  std::int64_t rank = 0;   // numerical rank used (sum of the weights)
  bool converged = false;
  bool sketched = false;   // false when method = sketch fell back to exact (short X)
};

namespace lewis_detail {

// One scale-corrected step: w <- c^(1-p/2) f with f = tau^(p/2), c = (sum f / sum w)^(2/p).
// Returns the max relative change.
inline double update(std::vector<double>& w, const std::vector<double>& tau, double p) {
  const std::int64_t n = static_cast<std::int64_t>(w.size());
  double sum_f = 0, sum_w = 0;
  std::vector<double> f(n);
  for (std::int64_t i = 0; i < n; ++i) {
    f[i] = tau[i] > 0 ? std::pow(tau[i], 0.5 * p) : 0.0;
    sum_f += f[i];
    sum_w += w[i];
  }
  const double c = (sum_f > 0 && sum_w > 0) ? std::pow(sum_f / sum_w, 2.0 / p) : 1.0;
  const double gain = std::pow(c, 1.0 - 0.5 * p);
  double change = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const double next = gain * f[i];
    if (w[i] > 0) change = std::max(change, std::abs(next - w[i]) / w[i]);
    else if (next > 0) change = std::numeric_limits<double>::infinity();
    w[i] = next;
  }
  return change;
}

inline void reweight(const std::vector<double>& w, double p, std::vector<double>& sqrt_s) {
  const double e = 0.5 - 1.0 / p;  // sqrt(w^(1 - 2/p))
  for (std::size_t i = 0; i < w.size(); ++i) sqrt_s[i] = w[i] > 0 ? std::pow(w[i], e) : 0.0;
}

}  // namespace lewis_detail

// Sketch rows of the CountSketch, and the minimum n for which the sketch is used.
inline std::int64_t lewis_sketch_rows(std::int64_t d) { return 4 * std::max<std::int64_t>(d, 1); }
inline std::int64_t lewis_sketch_min_rows(std::int64_t d) { return 2 * lewis_sketch_rows(d); }

// X: (n, d) row-major; w: n outputs. Requires 0 < p < 4 (the Python layer restricts p to
// [1, 4)) and finite X. Safe to call concurrently (all scratch is per call).
template <class T>
LewisInfo lewis_weights(const T* X, std::int64_t n, std::int64_t d, const LewisOptions& opt, T* w_out) {
  using namespace lewis_detail;
  if (!(opt.p > 0 && opt.p < 4)) throw std::invalid_argument("p: expected 0 < p < 4");
  if (opt.max_iter < 1) throw std::invalid_argument("max_iter: expected at least 1");
  if (n < 0 || d < 0) throw std::invalid_argument("X: negative shape");
  LewisInfo info;
  if (n == 0) return info;
  const double p = opt.p;
  const bool leverage = p == 2.0;  // one evaluation is exact: s = w^0 = 1
  const bool sketch = opt.sketch && n >= lewis_sketch_min_rows(d) && d > 0;
  info.sketched = sketch;
  // Below this the change is rounding noise of the input precision.
  const double floor = 64.0 * std::numeric_limits<T>::epsilon();
  const double tol = std::max({opt.tol, floor, sketch ? 1e-2 : 0.0});

  std::vector<double> w(n, 1.0), sqrt_s(n), tau(n);
  Rng rng(opt.seed);
  std::unique_ptr<CountSketch> cs;
  MatD G0;
  if (sketch) {
    cs = std::make_unique<CountSketch>(n, lewis_sketch_rows(d), rng);
    G0 = gaussian(d, kJlIterCols, rng);
  }
  Factor f;
  for (int it = 1; it <= opt.max_iter; ++it) {
    reweight(w, p, sqrt_s);
    if (sketch) {
      f = factor_gram(cs->gram(X, d, sqrt_s));
      jl_tau(X, n, d, f.jl_map(G0), tau);
    } else {
      f = factor_gram(weighted_gram(X, n, d, sqrt_s));
      exact_tau(X, n, d, f, tau);
    }
    info.max_change = update(w, tau, p);
    info.iterations = it;
    info.rank = f.rank;
    if (leverage || info.max_change <= tol) {
      info.converged = true;
      break;
    }
  }
  if (sketch) {
    // Final evaluation with a fresh, wider JL map (or exact norms when that is cheaper),
    // then remove the sketch's overall bias: Lewis weights sum to the rank.
    reweight(w, p, sqrt_s);
    f = factor_gram(cs->gram(X, d, sqrt_s));
    const std::int64_t k = static_cast<std::int64_t>(std::ceil(128.0 * p * p));
    if (2 * k >= d) {
      exact_tau(X, n, d, f, tau);
    } else {
      jl_tau(X, n, d, f.jl_map(gaussian(d, k, rng)), tau);
    }
    double sum = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      w[i] = tau[i] > 0 ? std::pow(tau[i], 0.5 * p) : 0.0;
      sum += w[i];
    }
    info.rank = f.rank;
    const double scale = sum > 0 ? static_cast<double>(f.rank) / sum : 0.0;
    for (auto& v : w) v *= scale;
  }
  for (std::int64_t i = 0; i < n; ++i) w_out[i] = static_cast<T>(w[i]);
  return info;
}

}  // namespace lpfast
