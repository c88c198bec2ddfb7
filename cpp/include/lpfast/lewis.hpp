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
// by a symmetric rank-k update over blocks of rows, split across threads and summed in
// thread order (deterministic for a given thread count); M is equilibrated to unit
// diagonal and Cholesky-factored; tau_i = |L^-1 x_i|^2 by triangular solves over blocks of
// rows (in the input precision). A rank-deficient or numerically singular M (a pivot of
// the equilibrated factor below rcond = 100 d eps(double)) switches to the pseudo-inverse
// from an eigendecomposition that keeps eigenvalues above rcond times the largest.
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
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <stdexcept>
#include <vector>

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <Eigen/Eigenvalues>

#include "parallel.hpp"

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

using MatD = Eigen::MatrixXd;
template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
template <class T>
using RowMatMap = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
template <class T>
using ColMatMap = Eigen::Map<const Mat<T>>;

constexpr std::int64_t kBlock = 256;  // rows per block in the Gram and solve passes

inline std::pair<std::int64_t, std::int64_t> split(std::int64_t count, int tid, int team) {
  return {count * tid / team, count * (tid + 1) / team};
}

// splitmix64: tiny, portable, and the same stream on every platform.
struct Rng {
  std::uint64_t s;
  explicit Rng(std::uint64_t seed) : s(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  double uniform() { return (static_cast<double>(next() >> 11) + 0.5) * 0x1.0p-53; }
  double normal() {  // Box-Muller, one value per call (simple beats fast here)
    const double u = uniform(), v = uniform();
    return std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * v);
  }
};

inline MatD gaussian(std::int64_t rows, std::int64_t cols, Rng& rng) {
  MatD G(rows, cols);
  for (std::int64_t j = 0; j < cols; ++j)
    for (std::int64_t i = 0; i < rows; ++i) G(i, j) = rng.normal();
  return G;
}

// tau_i = x_i^T M^+ x_i through either a lower-triangular L with M = L L^T (full rank) or
// B (d x r) with M^+ = B B^T (pseudo-inverse of a rank-r M).
struct Factor {
  bool cholesky = true;
  std::int64_t rank = 0;
  MatD L;  // d x d lower triangular
  MatD B;  // d x r

  // H (d x k) with tau_i = |x_i^T H|^2 / k in expectation over the Gaussian G (d x k).
  MatD jl_map(const MatD& G) const {
    if (cholesky) return L.transpose().triangularView<Eigen::Upper>().solve(G);
    return B * G.topRows(B.cols());
  }
};

// Factor the symmetric (full) Gram M, d x d, after equilibrating it to unit diagonal.
inline Factor factor_gram(const MatD& M) {
  const std::int64_t d = M.rows();
  const double rcond = 100.0 * static_cast<double>(d) * std::numeric_limits<double>::epsilon();
  Eigen::VectorXd scale(d);  // 1/sqrt(M_jj), 0 for a zero column
  bool zero_col = false;
  for (std::int64_t j = 0; j < d; ++j) {
    const double m = M(j, j);
    scale(j) = m > 0 ? 1.0 / std::sqrt(m) : 0.0;
    zero_col |= !(m > 0);
  }
  const MatD Mt = scale.asDiagonal() * M * scale.asDiagonal();
  Factor f;
  if (!zero_col) {
    Eigen::LLT<MatD> llt(Mt);
    if (llt.info() == Eigen::Success) {
      const Eigen::VectorXd diag = llt.matrixLLT().diagonal();
      if (diag.size() == 0 || diag.cwiseAbs2().minCoeff() > rcond) {
        // M = D^1/2 Lt Lt^T D^1/2, so L = D^1/2 Lt.
        f.L = MatD(llt.matrixL());
        for (std::int64_t j = 0; j < d; ++j) f.L.row(j) /= scale(j);
        f.rank = d;
        return f;
      }
    }
  }
  // Pseudo-inverse: M = D^1/2 Q diag(l) Q^T D^1/2 restricted to the kept eigenpairs;
  // tau_i = |l^-1/2 Q^T D^-1/2 x_i|^2 for x_i in the range of M (rows of X are).
  Eigen::SelfAdjointEigenSolver<MatD> eig(Mt);
  if (eig.info() != Eigen::Success) throw std::runtime_error("X: eigendecomposition failed");
  const Eigen::VectorXd& l = eig.eigenvalues();  // ascending
  const double lmax = d > 0 ? l(d - 1) : 0.0;
  std::int64_t r = 0;
  while (r < d && lmax > 0 && l(d - 1 - r) > rcond * lmax) ++r;
  f.cholesky = false;
  f.rank = r;
  f.B.resize(d, r);
  for (std::int64_t c = 0; c < r; ++c) {
    const std::int64_t src = d - 1 - c;
    f.B.col(c) = scale.cwiseProduct(eig.eigenvectors().col(src)) / std::sqrt(l(src));
  }
  return f;
}

// M = X^T diag(s) X (lower and upper), via per-thread rank-k updates in double.
template <class T>
MatD weighted_gram(const T* X, std::int64_t n, std::int64_t d, const std::vector<double>& sqrt_s) {
  const int nt = threads_for(static_cast<double>(n) * d * d, 2.0e7);
  // Zero-filled up front: the runtime may grant a smaller team and leave some parts unused.
  std::vector<MatD> parts(nt, MatD::Zero(d, d));
  ExceptionGuard guard;
#pragma omp parallel num_threads(nt) if (nt > 1)
  guard.run([&] {
    const int tid = thread_id(), team = team_size();
    MatD& G = parts[tid];
    G.setZero(d, d);
    MatD buf(d, kBlock);
    const auto [r0, r1] = split(n, tid, team);
    for (std::int64_t b0 = r0; b0 < r1; b0 += kBlock) {
      const std::int64_t nb = std::min(kBlock, r1 - b0);
      std::int64_t cols = 0;
      for (std::int64_t i = b0; i < b0 + nb; ++i) {
        if (sqrt_s[i] == 0) continue;
        buf.col(cols++) =
            sqrt_s[i] * Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>(X + i * d, d).template cast<double>();
      }
      if (cols > 0) G.selfadjointView<Eigen::Lower>().rankUpdate(buf.leftCols(cols));
    }
  });
  guard.rethrow();
  MatD M = parts[0];
  for (int t = 1; t < nt; ++t) M += parts[t];  // fixed order: deterministic
  M.triangularView<Eigen::StrictlyUpper>() = M.transpose();
  return M;
}

// tau_i = x_i^T M^+ x_i for all rows, in the input precision.
template <class T>
void exact_tau(const T* X, std::int64_t n, std::int64_t d, const Factor& f, std::vector<double>& tau) {
  const Mat<T> L = f.cholesky ? f.L.cast<T>() : Mat<T>();
  const Mat<T> Bt = f.cholesky ? Mat<T>() : Mat<T>(f.B.transpose().cast<T>());
  const int nt = threads_for(static_cast<double>(n) * d * d, 2.0e7);
  ExceptionGuard guard;
#pragma omp parallel num_threads(nt) if (nt > 1)
  guard.run([&] {
    const int tid = thread_id(), team = team_size();
    Mat<T> buf(f.cholesky ? d : Bt.rows(), kBlock);
    const auto [r0, r1] = split(n, tid, team);
    for (std::int64_t b0 = r0; b0 < r1; b0 += kBlock) {
      const std::int64_t nb = std::min(kBlock, r1 - b0);
      const ColMatMap<T> xt(X + b0 * d, d, nb);  // rows of the block as columns
      auto z = buf.leftCols(nb);
      if (f.cholesky) {
        z = xt;
        L.template triangularView<Eigen::Lower>().solveInPlace(z);
      } else {
        z.noalias() = Bt * xt;
      }
      for (std::int64_t j = 0; j < nb; ++j) tau[b0 + j] = static_cast<double>(z.col(j).squaredNorm());
    }
  });
  guard.rethrow();
}

// Columns of the JL map of the sketched iterations (the final evaluation uses more).
inline constexpr int kJlIterCols = 16;

// tau_i ~ |x_i^T H|^2 / K for a narrow H (d x K, K = kJlIterCols: the iterations' JL map): each row
// is streamed once and z_i = sum_t x_it H_t accumulated by broadcast FMAs, four rows at a
// time for independent dependency chains. A GEMM would pack every block of X first: perf
// showed packing plus the skinny GEMM at 45% of a sketched fit (30522 x 384).
template <int K, class T>
void jl_tau_narrow(const T* X, std::int64_t n, std::int64_t d, const Mat<T>& Ht,
                   std::vector<double>& tau) {
  using Lane = Eigen::Array<T, K, 1>;
  std::vector<Lane, Eigen::aligned_allocator<Lane>> rows(static_cast<std::size_t>(d));
  for (std::int64_t t = 0; t < d; ++t) rows[t] = Ht.row(t).transpose().array();
  const int nt = threads_for(2.0 * n * d * K, 2.0e7);
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
  for (std::int64_t i0 = 0; i0 < n; i0 += 4) {
    const std::int64_t m = std::min<std::int64_t>(4, n - i0);
    Lane z[4] = {Lane::Zero(), Lane::Zero(), Lane::Zero(), Lane::Zero()};
    const T* x[4];
    for (std::int64_t r = 0; r < 4; ++r) x[r] = X + (i0 + std::min(r, m - 1)) * d;
    for (std::int64_t t = 0; t < d; ++t) {
      const Lane& h = rows[t];
      z[0] += x[0][t] * h;
      z[1] += x[1][t] * h;
      z[2] += x[2][t] * h;
      z[3] += x[3][t] * h;
    }
    for (std::int64_t r = 0; r < m; ++r)
      tau[i0 + r] = static_cast<double>(z[r].matrix().squaredNorm()) / static_cast<double>(K);
  }
}

// tau_i ~ |x_i^T H|^2 / k for H = d x k.
template <class T>
void jl_tau(const T* X, std::int64_t n, std::int64_t d, const MatD& H, std::vector<double>& tau) {
  const std::int64_t k = H.cols();
  const Mat<T> Ht = H.cast<T>();
  if (k == kJlIterCols) return jl_tau_narrow<kJlIterCols>(X, n, d, Ht, tau);
  const int nt = threads_for(2.0 * n * d * k, 2.0e7);
  ExceptionGuard guard;
#pragma omp parallel num_threads(nt) if (nt > 1)
  guard.run([&] {
    const int tid = thread_id(), team = team_size();
    // Blocks of kJlBlock rows: fewer, larger GEMMs (each one packs its block of X).
    constexpr std::int64_t kJlBlock = 4096;
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> z(kJlBlock, k);
    const auto [r0, r1] = split(n, tid, team);
    for (std::int64_t b0 = r0; b0 < r1; b0 += kJlBlock) {
      const std::int64_t nb = std::min(kJlBlock, r1 - b0);
      const RowMatMap<T> xb(X + b0 * d, nb, d);
      z.topRows(nb).noalias() = xb * Ht;
      for (std::int64_t j = 0; j < nb; ++j)
        tau[b0 + j] = static_cast<double>(z.row(j).squaredNorm()) / static_cast<double>(k);
    }
  });
  guard.rethrow();
}

// CountSketch with `rows` buckets: row i goes to bucket[i] with sign sign[i];
// each bucket sums its rows in increasing row order, so the sketch is deterministic.
struct CountSketch {
  std::int64_t rows = 0;
  std::vector<std::int64_t> bucket;  // n
  std::vector<double> sign;          // n

  CountSketch(std::int64_t n, std::int64_t m, Rng& rng) : rows(m), bucket(n), sign(n) {
    for (std::int64_t i = 0; i < n; ++i) {
      const std::uint64_t r = rng.next();
      bucket[i] = static_cast<std::int64_t>((r >> 1) % static_cast<std::uint64_t>(m));
      sign[i] = (r & 1) ? 1.0 : -1.0;
    }
  }

  // (Pi diag(sqrt_s) X)^T (Pi diag(sqrt_s) X), d x d, full.
  template <class T>
  MatD gram(const T* X, std::int64_t d, const std::vector<double>& sqrt_s) const {
    const std::int64_t n = static_cast<std::int64_t>(bucket.size());
    const int nt = threads_for(static_cast<double>(rows) * d * d + static_cast<double>(n) * d, 2.0e7);
    MatD SX(d, rows);  // bucket b is column b
    // Zero-filled up front: the runtime may grant a smaller team and leave some parts unused.
  std::vector<MatD> parts(nt, MatD::Zero(d, d));
    ExceptionGuard guard;
#pragma omp parallel num_threads(nt) if (nt > 1)
    guard.run([&] {
      const int tid = thread_id(), team = team_size();
      const auto [c0, c1] = split(rows, tid, team);
      SX.middleCols(c0, c1 - c0).setZero();
      // Rows in increasing order (each bucket's sum in that order, as before): streaming X
      // instead of visiting its rows bucket by bucket was 3x faster (hardware prefetch).
      for (std::int64_t i = 0; i < n; ++i) {
        const std::int64_t b = bucket[i];
        if (b < c0 || b >= c1 || sqrt_s[i] == 0) continue;
        SX.col(b) += (sign[i] * sqrt_s[i]) *
                     Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>(X + i * d, d).template cast<double>();
      }
      MatD& G = parts[tid];
      G.setZero(d, d);
      if (c1 > c0) G.selfadjointView<Eigen::Lower>().rankUpdate(SX.middleCols(c0, c1 - c0));
    });
    guard.rethrow();
    MatD M = parts[0];
    for (int t = 1; t < nt; ++t) M += parts[t];
    M.triangularView<Eigen::StrictlyUpper>() = M.transpose();
    return M;
  }
};

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
