// k-subspace projective clustering, the problem: options, the data view (rows, weights,
// squared row norms), a fit's result, the cost, and the checks and sign convention every
// entry point applies. See k_subspaces.hpp for the algorithm.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include <Eigen/Core>

#include "gram.hpp"
#include "types.hpp"

namespace lpfast {
namespace ks {

struct Options {
  int k = 1;               // subspaces
  int j = 1;               // dimension of each
  double p = 2.0;          // cost exponent
  int max_iter = 100;      // Lloyd iterations
  double tol = 1e-6;       // relative cost decrease to continue
  double eps = 0.0;        // IRLS distance floor (p != 2)
  int irls_steps = 3;      // IRLS steps per Lloyd iteration (p != 2)
};

enum class Seeding : int { kDp = 0, kRandom = 1 };

template <class T>
struct Data {
  const T* X = nullptr;  // (n, d) row-major
  const double* w = nullptr;  // (n,) sample weights
  std::int64_t n = 0, d = 0;
  std::vector<double> xn2;  // ||x_i||^2

  Data(const T* X_, const double* w_, std::int64_t n_, std::int64_t d_)
      : X(X_), w(w_), n(n_), d(d_), xn2(static_cast<std::size_t>(n_)) {
    row_norms2(X, n, d, xn2.data());
  }
  const T* row(std::int64_t i) const { return X + i * d; }
};

struct Fit {
  std::vector<MatD> V;  // k bases, d x j, orthonormal columns
  std::vector<std::int64_t> labels;
  std::vector<double> dist2;  // squared distance of each row to its subspace
  double cost = 0;
  int n_iter = 0;
  std::vector<double> history;  // cost after seeding, then after each iteration
  int restart = 0;
};

inline double row_cost(double w, double d2, double p) {
  d2 = std::max(d2, 0.0);
  return p == 2.0 ? w * d2 : w * std::pow(d2, 0.5 * p);
}

template <class T>
double total_cost(const Data<T>& data, const std::vector<double>& dist2, double p) {
  double c = 0;
  for (std::int64_t i = 0; i < data.n; ++i) c += row_cost(data.w[i], dist2[i], p);
  return c;
}

inline void canonical_signs(std::vector<MatD>& V) {
  for (auto& Vc : V)
    for (std::int64_t t = 0; t < Vc.cols(); ++t) {
      Eigen::Index at;
      Vc.col(t).cwiseAbs().maxCoeff(&at);
      if (Vc(at, t) < 0) Vc.col(t) = -Vc.col(t);
    }
}

inline void check_options(std::int64_t n, std::int64_t d, const Options& opt) {
  if (opt.k < 1 || opt.k > n)
    throw std::invalid_argument("n_subspaces: expected an integer in [1, n_rows]");
  if (opt.j < 1 || opt.j >= d) throw std::invalid_argument("dim: expected an integer in [1, d - 1]");
  if (!(opt.p >= 1.0) || !std::isfinite(opt.p)) throw std::invalid_argument("p: expected p >= 1");
  if (opt.max_iter < 0) throw std::invalid_argument("max_iter: expected >= 0");
  if (opt.irls_steps < 1) throw std::invalid_argument("irls_steps: expected >= 1");
}

}  // namespace ks
}  // namespace lpfast
