// Checks of lpfast's C++ core without Python: the shared building blocks (weighted Gram,
// top-k eigensolver, RNG, range splitter, exception rethrow from parallel regions), an IRLS
// fit's descent, and the doped Kronecker product, each in float and double against a
// direct computation. Exits non-zero on the first failed check (run by ctest).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include <Eigen/Core>
#include <Eigen/Eigenvalues>

#include "lpfast/csr.hpp"
#include "lpfast/doped_kron.hpp"
#include "lpfast/gram.hpp"
#include "lpfast/irls.hpp"
#include "lpfast/lewis.hpp"
#include "lpfast/parallel.hpp"
#include "lpfast/rng.hpp"
#include "lpfast/sym_eigen.hpp"
#include "lpfast/types.hpp"

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

template <class T>
const char* name() {
  return sizeof(T) == 4 ? "float" : "double";
}

// Relative accuracy expected of a T computation of length-n sums.
template <class T>
double tol(double n) {
  return 8.0 * std::sqrt(n) * std::numeric_limits<T>::epsilon();
}

// n x d points with a decaying spectrum (so top eigenvalues are separated).
template <class T>
lpfast::RowMat<T> points(std::int64_t n, std::int64_t d, lpfast::Rng& rng) {
  lpfast::RowMat<T> X(n, d);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t t = 0; t < d; ++t)
      X(i, t) = static_cast<T>(rng.normal() / std::sqrt(1.0 + t));
  return X;
}

// gram_accumulate against the naive triple loop in double, on listed rows with scales,
// widths that leave a masked column tail, and a subtraction.
template <class T>
void test_gram() {
  lpfast::Rng rng(1);
  for (std::int64_t d : {1, 7, 37, 70}) {
    const std::int64_t n = 3000;
    const auto X = points<T>(n, d, rng);
    std::vector<std::int64_t> rows;
    std::vector<double> scale;
    for (std::int64_t i = 0; i < n; i += 2) {
      rows.push_back(i);
      scale.push_back(i % 10 == 0 ? 0.0 : rng.uniform());  // some rows weigh nothing
    }
    const std::int64_t m = static_cast<std::int64_t>(rows.size());
    lpfast::MatD G = lpfast::MatD::Zero(d, d), ref = lpfast::MatD::Zero(d, d);
    lpfast::GramWork<T> ws;
    lpfast::gram_accumulate<T>(X.data(), d, rows.data(), scale.data(), m, 1.0, G, ws);
    lpfast::gram_accumulate<T>(X.data(), d, rows.data(), scale.data(), m / 3, -1.0, G, ws);
    for (std::int64_t r = m / 3; r < m; ++r)
      for (std::int64_t a = 0; a < d; ++a)
        for (std::int64_t b = 0; b <= a; ++b)
          ref(a, b) += scale[r] * scale[r] * static_cast<double>(X(rows[r], a)) * X(rows[r], b);
    const lpfast::MatD diff = (G - ref).triangularView<Eigen::Lower>();
    check(diff.cwiseAbs().maxCoeff() <= tol<T>(m) * ref.cwiseAbs().maxCoeff(),
          std::string("weighted Gram vs naive loop, ") + name<T>() + ", d = " + std::to_string(d));
  }
}

// top_eigenvectors_rowmajor (dense and warm-started) against Eigen's full solver: the same
// eigenvalues (Rayleigh quotients) and the same subspace, orthonormal, sign-fixed.
template <class T>
void test_top_eigen() {
  lpfast::Rng rng(2);
  for (std::int64_t k : {1, 5, 20}) {
    const std::int64_t n = 800, d = 60;
    const auto X = points<T>(n, d, rng);
    lpfast::MatD G;
    lpfast::weighted_gram_lower<T>(X.data(), n, d, nullptr, G);
    const lpfast::MatD Gf = G.selfadjointView<Eigen::Lower>();
    Eigen::SelfAdjointEigenSolver<lpfast::MatD> es(Gf);
    const lpfast::MatD U = es.eigenvectors().rightCols(k);
    std::vector<T> V(static_cast<std::size_t>(d * k)), W(V.size());
    lpfast::top_eigenvectors_rowmajor<T>(G, k, static_cast<const T*>(nullptr), V.data());
    lpfast::top_eigenvectors_rowmajor<T>(G, k, V.data(), W.data());
    for (const auto* out : {&V, &W}) {
      const lpfast::MatD B = lpfast::ConstRowMap<T>(out->data(), d, k).template cast<double>();
      const double lam0 = es.eigenvalues()(d - 1);
      const lpfast::MatD H = B.transpose() * Gf * B;
      double err = 0;
      for (std::int64_t j = 0; j < k; ++j) err = std::max(err, std::abs(H(j, j) - es.eigenvalues()(d - 1 - j)));
      const double orth = (B.transpose() * B - lpfast::MatD::Identity(k, k)).cwiseAbs().maxCoeff();
      const double proj = (B * B.transpose() - U * U.transpose()).norm();
      bool signs = true;
      for (std::int64_t j = 0; j < k; ++j) {
        Eigen::Index at;
        B.col(j).cwiseAbs().maxCoeff(&at);
        signs &= B(at, j) > 0;
      }
      const double t = sizeof(T) == 4 ? 1e-4 : 1e-9;
      check(err <= t * lam0 && orth <= 10 * t && proj <= 1e3 * t && signs,
            std::string("top-k eigenvectors vs Eigen, ") + name<T>() + ", k = " + std::to_string(k) +
                (out == &V ? " (dense)" : " (warm)"));
    }
  }
}

// The IRLS fit for p = 1 and 1.5 never increases the cost (majorize-minimize), from a
// deliberately poor start.
template <class T>
void test_irls_descends() {
  lpfast::Rng rng(3);
  const std::int64_t n = 2000, d = 24, k = 3;
  auto X = points<T>(n, d, rng);
  for (std::int64_t i = 0; i < n; i += 20) X.row(i) *= T(30);  // outliers
  for (double p : {1.0, 1.5}) {
    std::vector<T> V(static_cast<std::size_t>(d * k), T(0));
    for (std::int64_t j = 0; j < k; ++j) V[static_cast<std::size_t>((d - 1 - j) * k + j)] = T(1);
    lpfast::IrlsOptions opt;
    opt.p = p;
    opt.eps = 1e-6;
    opt.tol = 0.0;
    opt.max_iter = 15;
    const auto res = lpfast::lp_subspace_irls<T>(X.data(), n, d, nullptr, k, V.data(), opt);
    bool descends = res.history.size() > 2;
    for (std::size_t i = 1; i < res.history.size(); ++i)
      descends &= res.history[i] <= res.history[i - 1] * (1 + tol<T>(n));
    check(descends && res.history.back() < 0.9 * res.history.front(),
          std::string("IRLS cost never increases, ") + name<T>() + ", p = " + std::to_string(p));
    // The one-pass cost (row norms taken per block) is the fit's own cost, to the bit.
    const double again = lpfast::subspace_cost<T>(X.data(), n, d, static_cast<const T*>(nullptr),
                                                  V.data(), k, p);
    check(again == res.history.back(),
          std::string("subspace_cost equals the fit's last cost, ") + name<T>());
  }
}

// y = x (kron(A, B) + S)^T + bias against the dense W.
template <class T>
void test_doped_kron() {
  lpfast::Rng rng(4);
  const std::int64_t m1 = 5, n1 = 6, m2 = 7, n2 = 9, rank = 2, batch = 11;
  const std::int64_t rows = m1 * m2, cols = n1 * n2;
  auto draw = [&](std::int64_t size) {
    std::vector<T> v(static_cast<std::size_t>(size));
    for (auto& e : v) e = static_cast<T>(rng.normal());
    return v;
  };
  const auto A = draw(rank * m1 * n1), B = draw(rank * m2 * n2), x = draw(batch * cols),
             bias = draw(rows);
  std::vector<std::int32_t> indptr{0}, indices;
  std::vector<T> data;
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = r % 3; c < cols; c += 17) {
      indices.push_back(static_cast<std::int32_t>(c));
      data.push_back(static_cast<T>(rng.normal()));
    }
    indptr.push_back(static_cast<std::int32_t>(indices.size()));
  }
  lpfast::RowMat<double> W = lpfast::RowMat<double>::Zero(rows, cols);
  for (std::int64_t q = 0; q < rank; ++q)
    for (std::int64_t i1 = 0; i1 < m1; ++i1)
      for (std::int64_t j1 = 0; j1 < n1; ++j1)
        for (std::int64_t i2 = 0; i2 < m2; ++i2)
          for (std::int64_t j2 = 0; j2 < n2; ++j2)
            W(i1 * m2 + i2, j1 * n2 + j2) += static_cast<double>(A[(q * m1 + i1) * n1 + j1]) *
                                             B[(q * m2 + i2) * n2 + j2];
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int32_t e = indptr[r]; e < indptr[r + 1]; ++e) W(r, indices[e]) += data[e];
  lpfast::KronFactors<T> kp;
  kp.A = A.data();
  kp.B = B.data();
  kp.rank = rank;
  kp.m1 = m1;
  kp.n1 = n1;
  kp.m2 = m2;
  kp.n2 = n2;
  lpfast::CsrView<T, std::int32_t> S{indptr.data(), indices.data(), data.data(), rows, cols};
  std::vector<T> y(static_cast<std::size_t>(batch * rows));
  lpfast::doped_kron_matmul<T, std::int32_t>(x.data(), batch, kp, &S, bias.data(), y.data());
  const lpfast::RowMat<double> X = lpfast::ConstRowMap<T>(x.data(), batch, cols).template cast<double>();
  lpfast::RowMat<double> ref = X * W.transpose();
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t r = 0; r < rows; ++r) ref(b, r) += bias[r];
  const lpfast::RowMat<double> got = lpfast::ConstRowMap<T>(y.data(), batch, rows).template cast<double>();
  check((got - ref).cwiseAbs().maxCoeff() <= tol<T>(cols) * 10 * ref.cwiseAbs().maxCoeff(),
        std::string("doped Kronecker product vs dense, ") + name<T>());
}

// p = 2 Lewis weights are the leverage scores diag(X (X^T X)^-1 X^T), summing to d.
template <class T>
void test_leverage() {
  lpfast::Rng rng(5);
  const std::int64_t n = 500, d = 12;
  const auto X = points<T>(n, d, rng);
  std::vector<T> w(static_cast<std::size_t>(n));
  lpfast::LewisOptions opt;
  opt.p = 2.0;
  const auto info = lpfast::lewis_weights<T>(X.data(), n, d, opt, w.data());
  const lpfast::MatD X64 = X.template cast<double>();
  const lpfast::MatD Minv = (X64.transpose() * X64).inverse();
  double err = 0;
  for (std::int64_t i = 0; i < n; ++i)
    err = std::max(err, std::abs(static_cast<double>(w[i]) - X64.row(i) * Minv * X64.row(i).transpose()));
  check(info.rank == d && err <= 1e3 * std::numeric_limits<T>::epsilon(),
        std::string("p = 2 Lewis weights are the leverage scores, ") + name<T>());
}

void test_parallel_and_rng() {
  bool covered = true;
  for (std::int64_t count : {0, 1, 7, 100})
    for (int team : {1, 2, 3, 8}) {
      std::int64_t next = 0;
      for (int tid = 0; tid < team; ++tid) {
        const auto [lo, hi] = lpfast::static_range(count, tid, team);
        covered &= lo == next && hi >= lo;
        next = hi;
      }
      covered &= next == count;
    }
  check(covered, "static_range covers [0, count) in order");
  bool rethrown = false;
  try {
    lpfast::parallel_region(2, [](int tid, int) {
      if (tid == 0) throw std::invalid_argument("from the region");
    });
  } catch (const std::invalid_argument& e) {
    rethrown = std::string(e.what()) == "from the region";
  }
  check(rethrown, "parallel_region rethrows a thread's exception after the join");
  lpfast::Rng a(7, 0), b(7, 0), c(7, 1);
  bool same = true, differ = false;
  double sum = 0, sum2 = 0;
  const int draws = 20000;
  for (int i = 0; i < draws; ++i) {
    const std::uint64_t u = a.next(), v = b.next(), w = c.next();
    same &= u == v;
    differ |= u != w;
    const double z = a.normal();
    b.normal();
    sum += z;
    sum2 += z * z;
  }
  check(same && differ, "Rng: a stream repeats for its seed, streams differ");
  check(std::abs(sum / draws) < 0.05 && std::abs(sum2 / draws - 1.0) < 0.05,
        "Rng::normal has mean 0 and variance 1");
}

}  // namespace

int main() {
  test_parallel_and_rng();
  test_gram<float>();
  test_gram<double>();
  test_top_eigen<float>();
  test_top_eigen<double>();
  test_irls_descends<float>();
  test_irls_descends<double>();
  test_doped_kron<float>();
  test_doped_kron<double>();
  test_leverage<float>();
  test_leverage<double>();
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
