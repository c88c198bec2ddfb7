// Top-k eigenpairs of a symmetric d x d matrix (a Gram), the one eigensolver of the core:
//   dense    Householder tridiagonalization (in the data's precision), the top k eigenvalues
//            by bisection on Sturm counts, eigenvectors by inverse iteration, back-
//            transformed; Eigen's full solver only as the last resort. Several times faster
//            than Eigen's full solver, which rotates all d eigenvectors.
//   warm     from a start basis V0 (the previous IRLS or Lloyd iterate): block Krylov steps
//            with Rayleigh-Ritz on span[V, R, G R] (R = G V - V Theta) to a relative residual
//            of 1e-10 (1e-6 for float32 data); when the residual's decay says two steps will
//            not do, the dense solver.
// Used by the IRLS fit (irls.hpp), weighted PCA and the k-subspace refits.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <type_traits>

#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <Eigen/Householder>
#include <Eigen/QR>

#include "types.hpp"

namespace lpfast {

// -- top-j eigenvectors -----------------------------------------------------------------------

// Eigenvectors of the symmetric H for its `j` largest eigenvalues, largest first.
inline void top_eigs(const MatD& H, int j, MatD& Y, VecD* theta) {
  Eigen::SelfAdjointEigenSolver<MatD> es(H);
  const int m = static_cast<int>(H.rows());
  Y.resize(m, j);
  if (theta) theta->resize(j);
  for (int t = 0; t < j; ++t) {
    Y.col(t) = es.eigenvectors().col(m - 1 - t);
    if (theta) (*theta)(t) = es.eigenvalues()(m - 1 - t);
  }
}

inline MatD orthonormal_columns(const MatD& A) {
  Eigen::HouseholderQR<MatD> qr(A);
  return qr.householderQ() * MatD::Identity(A.rows(), A.cols());
}

// (T - shift I) x = b for the symmetric tridiagonal T (diagonal a, off-diagonal e), by
// Gaussian elimination with partial pivoting (LAPACK dgtsv's scheme); exactly zero pivots,
// expected when the shift is an eigenvalue, are replaced by `tiny`.
inline void tridiag_shift_solve(const VecD& a, const VecD& e, double shift, double tiny, VecD& x) {
  const Eigen::Index n = a.size();
  VecD d = a.array() - shift;
  VecD du = e, dl = e, du2 = VecD::Zero(std::max<Eigen::Index>(n - 2, 0) + 1);
  for (Eigen::Index i = 0; i + 1 < n; ++i) {
    if (std::abs(d(i)) >= std::abs(dl(i))) {
      if (d(i) == 0) d(i) = tiny;
      const double fact = dl(i) / d(i);
      d(i + 1) -= fact * du(i);
      x(i + 1) -= fact * x(i);
    } else {
      const double fact = d(i) / dl(i);
      d(i) = dl(i);
      const double temp = d(i + 1);
      d(i + 1) = du(i) - fact * temp;
      if (i + 2 < n) {
        du2(i) = du(i + 1);
        du(i + 1) = -fact * du2(i);
      }
      du(i) = temp;
      const double tb = x(i);
      x(i) = x(i + 1);
      x(i + 1) = tb - fact * x(i + 1);
    }
  }
  for (Eigen::Index i = 0; i < n; ++i)
    if (d(i) == 0) d(i) = tiny;
  x(n - 1) /= d(n - 1);
  if (n > 1) x(n - 2) = (x(n - 2) - du(n - 2) * x(n - 1)) / d(n - 2);
  for (Eigen::Index i = n - 3; i >= 0; --i)
    x(i) = (x(i) - du(i) * x(i + 1) - du2(i) * x(i + 2)) / d(i);
}

// The j largest eigenvalues of the symmetric tridiagonal T (diagonal a, off-diagonal e),
// largest first, by bisection on Sturm counts; `norm` receives ||T||_inf (>= ||T||_2).
// All j bisections advance together, so the divisions of the count recurrences overlap
// instead of waiting on each other: 0.28 ms for the top 32 of 384 against 2.5 ms for all
// eigenvalues by Eigen's implicit QL. Each stops within a few ulps of ||T||.
inline VecD top_tridiagonal_eigenvalues(const VecD& a, const VecD& e, int j, double& norm) {
  const Eigen::Index n = a.size();
  VecD e2(n);
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  norm = 0;
  for (Eigen::Index i = 0; i < n; ++i) {
    e2(i) = i > 0 ? e(i - 1) * e(i - 1) : 0.0;
    const double r = (i > 0 ? std::abs(e(i - 1)) : 0.0) + (i + 1 < n ? std::abs(e(i)) : 0.0);
    lo = std::min(lo, a(i) - r);
    hi = std::max(hi, a(i) + r);
    norm = std::max(norm, std::abs(a(i)) + r);
  }
  // LAPACK dstebz's guard: a count pivot this small is treated as a tiny negative.
  const double pivmin = std::numeric_limits<double>::min() * std::max(1.0, norm * norm);
  const double width = 2.0 * std::numeric_limits<double>::epsilon() * std::max(norm, pivmin);
  constexpr int kLanes = 32;
  VecD out(j);
  for (int t0 = 0; t0 < j; t0 += kLanes) {
    double l[kLanes], h[kLanes], x[kLanes], q[kLanes];
    std::int64_t below[kLanes], count[kLanes];  // eigenvalue t0 + c has `below` smaller ones
    for (int c = 0; c < kLanes; ++c) {
      l[c] = lo;
      h[c] = hi;
      below[c] = static_cast<std::int64_t>(n) - 1 - std::min(t0 + c, j - 1);
    }
    for (int it = 0; it < 128; ++it) {
      double open = 0;
      for (int c = 0; c < kLanes; ++c) {
        x[c] = 0.5 * (l[c] + h[c]);
        q[c] = 1.0;
        count[c] = 0;
        open = std::max(open, h[c] - l[c]);
      }
      if (open <= width) break;
      for (Eigen::Index i = 0; i < n; ++i) {
        const double ai = a(i), ei = e2(i);
        for (int c = 0; c < kLanes; ++c) {
          double v = (ai - x[c]) - ei / q[c];
          v = std::abs(v) < pivmin ? -pivmin : v;
          count[c] += v < 0.0;
          q[c] = v;
        }
      }
      for (int c = 0; c < kLanes; ++c) (count[c] <= below[c] ? l[c] : h[c]) = x[c];
    }
    for (int c = 0; c < kLanes && t0 + c < j; ++c) out(t0 + c) = 0.5 * (l[c] + h[c]);
  }
  return out;
}

// Residual (relative to ||Gf||) up to which a dense solve in precision S counts as a success.
template <class S>
inline constexpr double kResidual = std::is_same_v<S, float> ? 1e-4 : 1e-9;

// Top-j eigenpairs of the dense symmetric Gf: Householder tridiagonalization in precision S,
// the top j eigenvalues of the tridiagonal by bisection, eigenvectors by inverse iteration
// (re-orthogonalized against the ones before), back-transformed. Several times faster than
// Eigen's full eigensolver (which rotates all d eigenvectors); `ok` is false if the
// residual check fails. With `theta`, also the j eigenvalues.
// S = float serves float32 data, whose Grams carry float rounding and whose bases are returned
// in float32: the reduction and the back-transform, most of the solve, then run about twice as
// fast (d = 384: 4.3 -> 2.6 ms for the reduction). The columns are re-orthonormalized in
// double; their residual, ~3e-7 relative on Lloyd's Grams, is only checked for failure.
template <class S = double>
inline MatD top_eigs_tridiagonal(const MatD& Gf, int j, bool& ok, VecD* theta = nullptr) {
  using MatS = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
  const Eigen::Index d = Gf.rows();
  Eigen::Tridiagonalization<MatS> tri(Gf.template cast<S>());
  const VecD a = tri.diagonal().template cast<double>();
  const VecD e = tri.subDiagonal().template cast<double>();
  double norm = 0;
  const VecD lam = top_tridiagonal_eigenvalues(a, e, j, norm);
  norm = std::max(norm, std::numeric_limits<double>::min());
  const double tiny = norm * std::numeric_limits<double>::epsilon();
  MatD Z(d, j);
  VecD x(d);
  for (int t = 0; t < j; ++t) {
    const double shift = lam(t);
    // A fixed start with no special alignment: 1 + a small multiplicative-hash wiggle (sin()
    // here cost more than the solves on coresets' 125 x 125 kernel matrices).
    for (Eigen::Index i = 0; i < d; ++i) {
      const std::uint32_t h = static_cast<std::uint32_t>((i + 1) * 2654435761u) ^
                              static_cast<std::uint32_t>((t + 1) * 2246822519u);
      x(i) = 1.0 + 0.1 * (static_cast<double>(h >> 8) * 0x1p-24 - 0.5);
    }
    for (int it = 0; it < 2; ++it) {
      tridiag_shift_solve(a, e, shift, tiny, x);
      for (int pass = 0; pass < 2; ++pass)
        for (int c = 0; c < t; ++c) x -= Z.col(c).dot(x) * Z.col(c);
      const double nx = x.norm();
      if (!(nx > 0) || !std::isfinite(nx)) {
        ok = false;
        return Z;
      }
      x /= nx;
    }
    Z.col(t) = x;
  }
  MatD V;
  if constexpr (std::is_same_v<S, double>) {
    V = tri.matrixQ() * Z;
  } else {
    const MatS Vs = tri.matrixQ() * Z.template cast<S>();
    V = orthonormal_columns(Vs.template cast<double>());
  }
  if (theta) *theta = lam;
  const MatD R = Gf * V - V * lam.asDiagonal();
  ok = R.colwise().norm().maxCoeff() <= kResidual<S> * norm &&
       (V.transpose() * V - MatD::Identity(j, j)).cwiseAbs().maxCoeff() <= 1e-9;
  return V;
}

// Top-j eigenvectors of the dense symmetric Gf, largest first (S as in top_eigs_tridiagonal).
template <class S = double>
inline MatD dense_top_eigenvectors(const MatD& Gf, int j) {
  bool ok = false;
  MatD V = top_eigs_tridiagonal<S>(Gf, j, ok);
  if (ok) return V;
  MatD Y;
  top_eigs(Gf, j, Y, nullptr);
  return Y;
}

// Top-j eigenvectors of the symmetric G (lower triangle referenced), warm-started at V0, for
// data of type T (float: the dense fallback reduces in float, and the Krylov steps stop at
// 1e-6 relative residual, about the float rounding of the Grams themselves).
// Block Krylov steps with Rayleigh-Ritz on span[V, R, G R] cost about a third of the dense
// solver below (d = 384, j = 32); the loop gives up for the dense solver as soon as the
// observed residual decay says the budget of kMaxKrylov steps will not do.
template <class T = double>
inline MatD top_eigenvectors(const MatD& G, const MatD& V0, int j) {
  constexpr int kMaxKrylov = 2;
  constexpr double kTol = std::is_same_v<T, float> ? 1e-6 : 1e-10;
  const std::int64_t d = G.rows();
  const MatD Gf = G.selfadjointView<Eigen::Lower>();  // full copy: plain GEMMs are faster
  MatD Y;
  if (3 * static_cast<std::int64_t>(j) >= d) return dense_top_eigenvectors<T>(Gf, j);
  MatD V = orthonormal_columns(V0);
  MatD GV = Gf * V;
  VecD theta;
  double prev_res = std::numeric_limits<double>::infinity();
  for (int it = 0;; ++it) {
    const MatD H = V.transpose() * GV;
    top_eigs(0.5 * (H + H.transpose()), j, Y, &theta);
    V = V * Y;
    GV = GV * Y;
    const MatD R = GV - V * theta.asDiagonal();
    const double target = kTol * std::max(std::abs(theta(0)), std::numeric_limits<double>::min());
    const double res = R.colwise().norm().maxCoeff();
    if (res <= target) return V;
    const int left = kMaxKrylov - it;
    if (left <= 0) break;
    // Before any decay is observed: a start farther than 1e-2 relative goes dense at once.
    // Such starts (early Lloyd iterations, 5e-2 to 4e-1) came with flat spectra on which the
    // steps barely cut the residual, and a wasted step costs about half a dense solve. From
    // 1e-2, the best steps seen (1e-3 to 1e-4 each) reach either tolerance in two.
    if (it == 0 && res > 1e-2 * std::abs(theta(0))) break;
    if (it > 0) {
      const double rate = res / prev_res;
      if (!(rate < 1.0) || std::log(target / res) / std::log(rate) > left) break;
    }
    prev_res = res;
    MatD K(d, 3 * j);
    K.leftCols(j) = V;
    K.middleCols(j, j) = R;
    K.rightCols(j).noalias() = Gf * R;
    const MatD Q = orthonormal_columns(K);
    const MatD GQ = Gf * Q;
    const MatD Hq = Q.transpose() * GQ;
    top_eigs(0.5 * (Hq + Hq.transpose()), j, Y, &theta);
    V = Q * Y;
    GV = GQ * Y;
  }
  return dense_top_eigenvectors<T>(Gf, j);
}

// The top-k eigenvectors of the symmetric G (lower triangle read; d x d, double) written
// to V (d x k, row-major, type T), largest eigenvalue first, each column with its
// largest-magnitude entry made positive (the first such entry on ties) so that the result
// is reproducible. With V0 (d x k row-major, orthonormal columns), warm-started there.
// Cost: O(d^3) dense, O(d^2 k) per warm step.
template <class T>
void top_eigenvectors_rowmajor(const MatD& G, std::int64_t k, const T* V0, T* V) {
  const std::int64_t d = G.rows();
  if (k < 1 || k > d) throw std::invalid_argument("k: expected 1 <= k <= d");
  if (!G.template triangularView<Eigen::Lower>().toDenseMatrix().allFinite())
    throw std::runtime_error("symmetric eigensolver did not converge (non-finite input?)");
  MatD W;
  if (V0 != nullptr) {
    W = top_eigenvectors<T>(G, ConstRowMap<T>(V0, d, k).template cast<double>(), static_cast<int>(k));
  } else {
    W = dense_top_eigenvectors<T>(G.selfadjointView<Eigen::Lower>(), static_cast<int>(k));
  }
  RowMap<T> out(V, d, k);
  for (std::int64_t j = 0; j < k; ++j) {
    Eigen::Index at = 0;
    W.col(j).cwiseAbs().maxCoeff(&at);
    const double sign = W(at, j) < 0 ? -1.0 : 1.0;
    out.col(j) = (sign * W.col(j)).template cast<T>();
  }
}

}  // namespace lpfast
