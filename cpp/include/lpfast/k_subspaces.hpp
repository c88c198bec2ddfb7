// k-subspace projective clustering: Lloyd iterations over k orthonormal bases V_c (d x j),
// seeded by D^p sampling or random row groups, with restarts in parallel.
//
// Conventions (DESIGN.md): rows are points, dist(x, V)^2 = ||x||^2 - ||V^T x||^2, and the
// cost is sum_i w_i * min_c dist(x_i, V_c)^p.
//
// One Lloyd iteration:
//   assign   one GEMM of X against the stacked bases B = [V_1 ... V_k] (d x k*j), in fixed
//            chunks of rows, so every row's result is independent of the thread count;
//            the label is the cluster with the smallest distance (ties: lowest index).
//            After the first, distance bounds carried between iterations skip the
//            (row, basis) pairs they rule out (Lloyd::assign_bounded), with the same labels.
//   reseed   each empty cluster takes the next j rows of the worst-served order (largest
//            w_i * dist_i^p, ties by lowest row) and becomes their top-j subspace;
//   refit    p = 2: V_c = top-j eigenvectors of G_c = sum_{i in c} w_i x_i x_i^T. G_c is kept
//            in double between iterations and updated by the rows that changed cluster
//            (+/- rank updates), rebuilt when more than half its rows changed; the cluster
//            whose update would read the most rows is derived as G_total - sum of the others.
//            p != 2: `irls_steps` IRLS steps per Lloyd iteration, each with
//            omega_i = w_i * max(dist(x_i, V_c), eps)^(p - 2) and V_c = top-j of
//            sum omega_i x_i x_i^T (a majorize-minimize step for p in [1, 2]).
//            A cluster of m rows with j < m <= d (typical on coresets) is refit from its
//            m x m kernel matrix instead of the d x d Gram.
//   top-j    warm-started block Krylov / Rayleigh-Ritz on span[V, R, G R] (R the residual
//            G V - V Theta) to a relative residual of 1e-10 (1e-6 for float32 data); when
//            the residual's decay says 2 steps will not do, a dense solver:
//            tridiagonalization (in the data's precision), the top j eigenvalues by
//            bisection, inverse iteration (Eigen's full solver as last resort).
// The run stops when the cost fails to drop by more than tol * cost, and returns the
// iterate of lowest cost.
//
// Grams: each cluster's rows are cut into at most 8 segments (a number fixed by the
// cluster size, not the thread count), each segment gathers its rows (scaled by
// sqrt(weight)) into a contiguous block and rank-updates its own accumulator; segments are
// summed in order in double. Results are therefore the same for any number of threads.
// Restarts run one per thread; restart r draws from its own RNG stream seeded from
// (seed, r). The kernels hold no global state: concurrent calls are safe.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <Eigen/Householder>
#include <Eigen/Jacobi>
#include <Eigen/QR>

#include "parallel.hpp"
#include "small_gemm.hpp"

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

using MatD = Eigen::MatrixXd;
using VecD = Eigen::VectorXd;
template <class T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ColMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

// -- random numbers: xoshiro256** seeded through splitmix64 -----------------------------------

inline std::uint64_t splitmix64(std::uint64_t& x) {
  std::uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

class Rng {
 public:
  // Stream `stream` of `seed`: independent generators for restarts 0, 1, ...
  Rng(std::uint64_t seed, std::uint64_t stream) {
    std::uint64_t x = seed;
    std::uint64_t mix = splitmix64(x) ^ (stream * 0xD1B54A32D192ED03ull + 0x8CB92BA72F3D8DD7ull);
    for (auto& s : s_) s = splitmix64(mix);
  }
  std::uint64_t next() {
    const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::uint64_t s_[4];
};

// Index drawn with probability proportional to score (non-negative); -1 if all are zero.
inline std::int64_t sample_index(const std::vector<double>& score, Rng& rng) {
  double total = 0;
  for (double s : score) total += s;
  if (!(total > 0) || !std::isfinite(total)) return -1;
  const double u = rng.uniform() * total;
  double acc = 0;
  std::int64_t last = -1;
  for (std::size_t i = 0; i < score.size(); ++i) {
    if (score[i] <= 0) continue;
    acc += score[i];
    last = static_cast<std::int64_t>(i);
    if (u < acc) return last;
  }
  return last;  // rounding: u landed past the last partial sum
}

// -- problem ----------------------------------------------------------------------------------

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
    // Eight partial sums, so the loop vectorizes: 30522 x 384 float32 in 1.9 ms against
    // 9.1 ms for one in-order sum.
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
      xn2[i] = s;
    }
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
  // Every thread must reach the worksharing loop (and its barrier) even if its scratch
  // allocation failed: the guard wraps the allocation and each chunk, not the loop.
  ExceptionGuard guard;
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    RowMat<T> P, Xg;
    bool ready = false;
    const bool in_place = small_gemm_serves<T>(d);
    guard.run([&] {
      P.resize(kAssignChunk, kj);
      Xg.resize(rows != nullptr && !in_place ? kAssignChunk : 0, d);
      ready = true;
    });
#pragma omp for schedule(static)
    for (std::int64_t ch = 0; ch < chunks; ++ch) guard.run([&] {
      if (!ready) return;
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
    });
  }
  guard.rethrow();
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
  ExceptionGuard guard;  // around the allocation and each chunk, as in assign_rows
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    RowMat<T> Xc, P;
    bool ready = false;
    guard.run([&] {
      Xc.resize(small_gemm_serves<T>(d) ? 0 : kAssignChunk, d);  // rowmajor_gemm_indexed's
      P.resize(kAssignChunk, j);
      ready = true;
    });
#pragma omp for schedule(static)
    for (std::int64_t ch = 0; ch < chunks; ++ch) guard.run([&] {
      if (!ready) return;
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
    });
  }
  guard.rethrow();
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
template <class T>
struct GramWork {
  std::vector<RowMat<T>> acc;      // per segment, d x d (lower triangle used)
  std::vector<RowMat<T>> gather;   // per segment, chunk x d
};

constexpr std::int64_t kGramChunk = 512;
constexpr int kMaxSegments = 8;

// G (lower triangle) += sign * sum_r scale[r]^2 x_{rows[r]} x_{rows[r]}^T.
template <class T>
void gram_accumulate(const Data<T>& data, const std::int64_t* rows, const double* scale,
                     std::int64_t m, double sign, MatD& G, GramWork<T>& ws) {
  if (m == 0) return;
  const std::int64_t d = data.d;
  const int nseg = static_cast<int>(std::clamp<std::int64_t>(m / 2048, 1, kMaxSegments));
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
  ExceptionGuard guard;  // Eigen's rank update may allocate
#pragma omp parallel for num_threads(nt) schedule(static, 1) if (nt > 1)
  for (int s = 0; s < nseg; ++s) guard.run([&] {
    const std::int64_t lo = m * s / nseg, hi = m * (s + 1) / nseg;
    RowMat<T>& buf = ws.gather[s];
    for (std::int64_t c0 = lo; c0 < hi; c0 += kGramChunk) {
      const std::int64_t c1 = std::min(hi, c0 + kGramChunk);
      for (std::int64_t r = c0; r < c1; ++r) {
        const T* x = data.row(rows[r]);
        T* dst = buf.row(r - c0).data();
        const T f = static_cast<T>(scale[r]);
        for (std::int64_t t = 0; t < d; ++t) dst[t] = f * x[t];
      }
#if defined(__AVX512F__)
      if constexpr (std::is_same_v<T, float>) {
        small_gram_lower(buf.data(), d, ws.acc[s].data(), d, d, c1 - c0);
        continue;
      }
#endif
      ws.acc[s].template selfadjointView<Eigen::Lower>().rankUpdate(
          buf.topRows(c1 - c0).transpose());
    }
  });
  guard.rethrow();
  for (int s = 0; s < nseg; ++s)
    G.template triangularView<Eigen::Lower>() += sign * ws.acc[s].template cast<double>();
}

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

// Orthonormal d x j basis whose leading columns are the top eigenvectors of sum x x^T over
// `rows` (computed through the small m x m Gram), completed deterministically with
// Gram-Schmidt on e_0, e_1, ... when the rows span fewer than j directions.
// With `scale`, row r counts as scale[r] * x (so the Gram is sum scale^2 x x^T): this is
// also the refit of clusters with few rows (m <= d / 2), cheaper than a d x d eigensolve.
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

// -- seeding ----------------------------------------------------------------------------------

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

// -- Lloyd ------------------------------------------------------------------------------------

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
        gram_accumulate(data_, mem.data(), scale.data(), static_cast<std::int64_t>(mem.size()),
                        1.0, G_[c], work_);
      } else {
        sqrt_w(added[c]);
        gram_accumulate(data_, added[c].data(), scale.data(),
                        static_cast<std::int64_t>(added[c].size()), 1.0, G_[c], work_);
        sqrt_w(removed[c]);
        gram_accumulate(data_, removed[c].data(), scale.data(),
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
      gram_accumulate(data_, mem.data(), scale.data(), m, 1.0, G, work_);
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

// Lloyd from given bases (k of them, d x j).
template <class T>
Fit lloyd_from(const Data<T>& data, const Options& opt, std::vector<MatD> V) {
  check_options(data.n, data.d, opt);
  for (auto& Vc : V) Vc = orthonormal_columns(Vc);
  Fit f = Lloyd<T>(data, opt).run(std::move(V));
  canonical_signs(f.V);
  return f;
}

// n_init restarts of seeding + Lloyd, the best kept (lowest cost; ties: lowest restart).
// Restarts run in parallel (one per thread); each kernel inside then runs on its thread.
template <class T>
Fit fit_restarts(const Data<T>& data, const Options& opt, Seeding how, int n_init,
                 std::uint64_t seed) {
  check_options(data.n, data.d, opt);
  if (n_init < 1) throw std::invalid_argument("n_init: expected >= 1");
  std::vector<Fit> fits(n_init);
  const double work = static_cast<double>(data.n) * data.d * opt.k * opt.j;
  const int nt = std::min(n_init, threads_for(work * n_init, 1.0e6));
  ExceptionGuard guard;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
  for (int r = 0; r < n_init; ++r) {
    guard.run([&] {
      Rng rng(seed, static_cast<std::uint64_t>(r));
      fits[r] = Lloyd<T>(data, opt).run(seed_bases(data, opt, how, rng));
      fits[r].restart = r;
    });
  }
  guard.rethrow();
  int best = 0;
  for (int r = 1; r < n_init; ++r)
    if (fits[r].cost < fits[best].cost) best = r;
  Fit f = std::move(fits[best]);
  canonical_signs(f.V);
  return f;
}

// Seed bases only (stream `stream` of `seed`), for coreset pilots and tests.
template <class T>
std::vector<MatD> seed_only(const Data<T>& data, const Options& opt, Seeding how,
                            std::uint64_t seed, std::uint64_t stream) {
  check_options(data.n, data.d, opt);
  Rng rng(seed, stream);
  return seed_bases(data, opt, how, rng);
}

}  // namespace ks
}  // namespace lpfast
