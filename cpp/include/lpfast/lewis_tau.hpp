// Leverage scores of a reweighted point set, tau_i = x_i^T M^+ x_i for the rows x_i of X
// (n x d, row-major) and M = X^T diag(s) X: the one quantity each Lewis-weight step
// evaluates (lewis.hpp). Exact: M factored (Cholesky, else a pseudo-inverse) and triangular
// solves per row block; sketched: a CountSketch of the reweighted rows for M and a Gaussian
// Johnson-Lindenstrauss map for the row norms.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <Eigen/Eigenvalues>

#include "gram.hpp"
#include "parallel.hpp"
#include "rng.hpp"
#include "types.hpp"

namespace lpfast {
namespace lewis_detail {

constexpr std::int64_t kBlock = 256;  // rows per block in the solve passes

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
  // Upper bound on the condition number of the equilibrated Gram over the kept range: a
  // factor cast to float represents that Gram only to ~cond * eps(float) relative.
  double cond = 1.0;
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
      // Cholesky pivots do not reveal the rank: an exactly rank-deficient Gram (rank 6 of 7)
      // came through with its smallest pivot^2 at 7e-13 against an eigenvalue ratio of
      // 1e-17, and the float solves then returned weights summing to 76. trace(Mt^-1) =
      // ||Lt^-1||_F^2 bounds the spectrum instead: l_min >= 1 / trace(Mt^-1) >= l_min / d,
      // and l_max <= trace(Mt) = d. Cost d^3 / 3, next to the Gram's n d^2.
      MatD Linv = MatD::Identity(d, d);
      llt.matrixL().solveInPlace(Linv);
      const double cond = static_cast<double>(d) * Linv.squaredNorm();  // >= l_max / l_min
      if (d == 0 || (std::isfinite(cond) && cond * rcond < 1.0)) {
        // M = D^1/2 Lt Lt^T D^1/2, so L = D^1/2 Lt.
        f.L = MatD(llt.matrixL());
        for (std::int64_t j = 0; j < d; ++j) f.L.row(j) /= scale(j);
        f.rank = d;
        f.cond = std::max(cond, 1.0);
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
  f.cond = r > 0 ? lmax / l(d - r) : 1.0;
  f.B.resize(d, r);
  for (std::int64_t c = 0; c < r; ++c) {
    const std::int64_t src = d - 1 - c;
    f.B.col(c) = scale.cwiseProduct(eig.eigenvectors().col(src)) / std::sqrt(l(src));
  }
  return f;
}

// M = X^T diag(s) X (lower and upper), accumulated in double (the Cholesky needs it).
template <class T>
MatD weighted_gram(const T* X, std::int64_t n, std::int64_t d, const std::vector<double>& sqrt_s) {
  MatD M;
  weighted_gram_lower<double>(X, n, d, sqrt_s.data(), M);
  M.triangularView<Eigen::StrictlyUpper>() = M.transpose();
  return M;
}

// Condition bound of the equilibrated Gram above which float solves would lose the
// weights: a triangular solve (or product) in float with the factor rounded to float errs
// by ~eps(float) sqrt(cond) relative in tau, at most 1.2e-4 below this bound.
inline constexpr double kFloatSolveMaxCond = 1.0e6;

// tau_i = x_i^T M^+ x_i for all rows, computed in S (the input precision T, or double).
template <class S, class T>
void exact_tau_in(const T* X, std::int64_t n, std::int64_t d, const Factor& f,
                  std::vector<double>& tau) {
  const ColMat<S> L = f.cholesky ? f.L.cast<S>() : ColMat<S>();
  const ColMat<S> Bt = f.cholesky ? ColMat<S>() : ColMat<S>(f.B.transpose().cast<S>());
  const int nt = threads_for(static_cast<double>(n) * d * d, 2.0e7);
  parallel_region(nt, [&](int tid, int team) {
    ColMat<S> buf(f.cholesky ? d : Bt.rows(), kBlock);
    ColMat<S> xs(std::is_same_v<S, T> ? 0 : d, std::is_same_v<S, T> ? 0 : kBlock);
    const auto [r0, r1] = static_range(n, tid, team);
    for (std::int64_t b0 = r0; b0 < r1; b0 += kBlock) {
      const std::int64_t nb = std::min(kBlock, r1 - b0);
      const ConstColMap<T> xt(X + b0 * d, d, nb);  // rows of the block as columns
      auto z = buf.leftCols(nb);
      if constexpr (std::is_same_v<S, T>) {
        if (f.cholesky) {
          z = xt;
          L.template triangularView<Eigen::Lower>().solveInPlace(z);
        } else {
          z.noalias() = Bt * xt;
        }
      } else {
        auto x = xs.leftCols(nb);
        x = xt.template cast<S>();
        if (f.cholesky) {
          z = x;
          L.template triangularView<Eigen::Lower>().solveInPlace(z);
        } else {
          z.noalias() = Bt * x;
        }
      }
      for (std::int64_t j = 0; j < nb; ++j) tau[b0 + j] = static_cast<double>(z.col(j).squaredNorm());
    }
  });
}

// tau_i = x_i^T M^+ x_i for all rows: in the input precision, or in double for float input
// whose Gram is too ill-conditioned for float solves (kFloatSolveMaxCond).
template <class T>
void exact_tau(const T* X, std::int64_t n, std::int64_t d, const Factor& f, std::vector<double>& tau) {
  if (std::is_same_v<T, double> || f.cond <= kFloatSolveMaxCond) return exact_tau_in<T>(X, n, d, f, tau);
  exact_tau_in<double>(X, n, d, f, tau);
}

// Columns of the JL map of the sketched iterations (the final evaluation uses more).
inline constexpr int kJlIterCols = 16;

// tau_i ~ |x_i^T H|^2 / K for a narrow H (d x K, K = kJlIterCols: the iterations' JL map): each row
// is streamed once and z_i = sum_t x_it H_t accumulated by broadcast FMAs, four rows at a
// time for independent dependency chains. A GEMM would pack every block of X first: perf
// showed packing plus the skinny GEMM at 45% of a sketched fit (30522 x 384).
template <int K, class T>
void jl_tau_narrow(const T* X, std::int64_t n, std::int64_t d, const ColMat<T>& Ht,
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
  const ColMat<T> Ht = H.cast<T>();
  if (k == kJlIterCols) return jl_tau_narrow<kJlIterCols>(X, n, d, Ht, tau);
  const int nt = threads_for(2.0 * n * d * k, 2.0e7);
  parallel_region(nt, [&](int tid, int team) {
    // Blocks of kJlBlock rows: fewer, larger GEMMs (each one packs its block of X).
    constexpr std::int64_t kJlBlock = 4096;
    RowMat<T> z(kJlBlock, k);
    const auto [r0, r1] = static_range(n, tid, team);
    for (std::int64_t b0 = r0; b0 < r1; b0 += kJlBlock) {
      const std::int64_t nb = std::min(kJlBlock, r1 - b0);
      const ConstRowMap<T> xb(X + b0 * d, nb, d);
      z.topRows(nb).noalias() = xb * Ht;
      for (std::int64_t j = 0; j < nb; ++j)
        tau[b0 + j] = static_cast<double>(z.row(j).squaredNorm()) / static_cast<double>(k);
    }
  });
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
    const int nt = threads_for(static_cast<double>(n) * d, 2.0e7);
    MatD SX(d, rows);  // bucket b is column b
    parallel_region(nt, [&](int tid, int team) {
      const auto [c0, c1] = static_range(rows, tid, team);
      SX.middleCols(c0, c1 - c0).setZero();
      // Rows in increasing order (each bucket's sum in that order, as before): streaming X
      // instead of visiting its rows bucket by bucket was 3x faster (hardware prefetch).
      for (std::int64_t i = 0; i < n; ++i) {
        const std::int64_t b = bucket[i];
        if (b < c0 || b >= c1 || sqrt_s[i] == 0) continue;
        SX.col(b) += (sign[i] * sqrt_s[i]) * ConstVecMap<T>(X + i * d, d).template cast<double>();
      }
    });
    // The buckets (columns of SX) are the rows of the row-major SX^T the Gram reads.
    return weighted_gram(SX.data(), rows, d, std::vector<double>(rows, 1.0));
  }
};

}  // namespace lewis_detail
}  // namespace lpfast
