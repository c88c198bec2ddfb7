// The headers test_core.cpp does not reach, each capability against a direct computation in
// this file, in float and double: the finiteness scan, the row-major GEMMs, the CSR and SELL
// sparse products, subspace distances, the projective-clustering lookup and its backward,
// and k-subspaces (seeding, assignment, Lloyd from given bases, restarts). With test_core
// this program includes every header of cpp/include/lpfast with Eigen only. Exits non-zero
// when a check failed (run by ctest).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "lpfast/csr.hpp"
#include "lpfast/distances.hpp"
#include "lpfast/finite.hpp"
#include "lpfast/k_subspaces.hpp"
#include "lpfast/ks_assign.hpp"
#include "lpfast/ks_lloyd.hpp"
#include "lpfast/ks_problem.hpp"
#include "lpfast/ks_seed.hpp"
#include "lpfast/projective_lookup.hpp"
#include "lpfast/sell.hpp"
#include "lpfast/small_gemm.hpp"

#include "check.hpp"

namespace {

template <class T>
std::vector<T> normals(std::int64_t size, lpfast::Rng& rng) {
  std::vector<T> v(static_cast<std::size_t>(size));
  for (auto& e : v) e = static_cast<T>(rng.normal());
  return v;
}

template <class T>
double max_abs(const std::vector<T>& v) {
  double m = 0;
  for (T e : v) m = std::max(m, std::abs(static_cast<double>(e)));
  return m;
}

// all_finite against std::isfinite, with one NaN or infinity at every position of arrays
// shorter and longer than its 16 lanes.
template <class T>
void test_finite() {
  bool agree = true;
  for (std::int64_t n : {0, 1, 15, 16, 17, 40}) {
    std::vector<T> x(static_cast<std::size_t>(n), T(1.5));
    agree &= lpfast::all_finite(x.data(), n);
    for (T bad : {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                  -std::numeric_limits<T>::infinity()})
      for (std::int64_t at = 0; at < n; ++at) {
        std::vector<T> y = x;
        y[at] = bad;
        bool naive = true;
        for (T e : y) naive = naive && std::isfinite(e);
        agree &= lpfast::all_finite(y.data(), n) == naive;
      }
  }
  check(agree, std::string("all_finite vs std::isfinite, ") + name<T>());
}

// rowmajor_gemm (= and +=, strided, widths with a masked tail, K on both sides of
// kSmallGemmMaxK) and rowmajor_gemm_indexed against the triple loop in double.
template <class T>
void test_gemm() {
  lpfast::Rng rng(11);
  for (std::int64_t K : {std::int64_t{1}, std::int64_t{9}, std::int64_t{64}, lpfast::kSmallGemmMaxK + 3}) {
    for (std::int64_t N : {1, 17, 64, 93}) {
      const std::int64_t M = 13, ldp = K + 2, ldq = N + 3, ldc = N + 1;
      const auto P = normals<T>(M * ldp, rng), Q = normals<T>(K * ldq, rng);
      auto C = normals<T>(M * ldc, rng);
      const auto C0 = C;
      lpfast::rowmajor_gemm(P.data(), ldp, Q.data(), ldq, C.data(), ldc, M, N, K, true);
      std::vector<T> C2(static_cast<std::size_t>(M * ldc), T(7));
      lpfast::rowmajor_gemm(P.data(), ldp, Q.data(), ldq, C2.data(), ldc, M, N, K, false);
      // Rows 12, 0, 5 of P through the indexed product.
      const std::vector<std::int64_t> rows{12, 0, 5};
      std::vector<T> C3(static_cast<std::size_t>(3 * N)), scratch(static_cast<std::size_t>(3 * K));
      lpfast::rowmajor_gemm_indexed(P.data(), ldp, rows.data(), Q.data(), ldq, C3.data(), N, 3,
                                    N, K, scratch.data());
      double err = 0, scale = 0;
      bool untouched = true;
      for (std::int64_t i = 0; i < M; ++i) {
        for (std::int64_t j = 0; j < N; ++j) {
          double ref = 0;
          for (std::int64_t k = 0; k < K; ++k)
            ref += static_cast<double>(P[i * ldp + k]) * Q[k * ldq + j];
          scale = std::max(scale, std::abs(ref) + 1);
          err = std::max(err, std::abs(C[i * ldc + j] - (ref + C0[i * ldc + j])));
          err = std::max(err, std::abs(C2[i * ldc + j] - ref));
          for (int r = 0; r < 3; ++r)
            if (rows[r] == i) err = std::max(err, std::abs(C3[r * N + j] - ref));
        }
        for (std::int64_t j = N; j < ldc; ++j) untouched &= C2[i * ldc + j] == T(7);
      }
      check(err <= tol<T>(K) * 4 * scale && untouched,
            std::string("row-major GEMM (=, +=, indexed) vs naive, ") + name<T>() +
                ", K = " + std::to_string(K) + ", N = " + std::to_string(N));
    }
  }
}

// A CSR matrix with empty rows, rows shorter than a vector and rows of several vectors.
template <class T>
struct TestCsr {
  std::vector<std::int32_t> indptr{0}, indices;
  std::vector<T> data;
  std::int64_t rows, cols;
  lpfast::CsrView<T, std::int32_t> view() const {
    return {indptr.data(), indices.data(), data.data(), rows, cols};
  }
};

template <class T>
TestCsr<T> test_csr(std::int64_t rows, std::int64_t cols, lpfast::Rng& rng) {
  TestCsr<T> S;
  S.rows = rows;
  S.cols = cols;
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t len = (r * 7) % 41;  // 0 .. 40
    for (std::int64_t e = 0; e < len; ++e) {
      S.indices.push_back(static_cast<std::int32_t>((r * 13 + e * e * 5 + e) % cols));
      S.data.push_back(static_cast<T>(rng.normal()));
    }
    S.indptr.push_back(static_cast<std::int32_t>(S.indices.size()));
  }
  return S;
}

// S x (batch 1: CSR rows, SELL with int32 and uint16 indices; batch nb: the transposed-x
// kernel) against the row sums in double; check_csr's refusal of a bad pattern.
template <class T>
void test_sparse() {
  lpfast::Rng rng(12);
  const std::int64_t rows = 300, cols = 517, nb = 5;
  const TestCsr<T> S = test_csr<T>(rows, cols, rng);
  const auto view = S.view();
  lpfast::check_csr(S.indptr.data(), rows + 1, S.indices.data(), view.nnz(), rows, cols);
  const auto x = normals<T>(nb * cols, rng);
  auto ref_row = [&](std::int64_t b, std::int64_t r) {
    double s = 0;
    for (std::int32_t k = S.indptr[r]; k < S.indptr[r + 1]; ++k)
      s += static_cast<double>(S.data[k]) * x[b * cols + S.indices[k]];
    return s;
  };
  const double t = tol<T>(40) * 8;
  // CSR, batch 1, in two row ranges: y += S x.
  std::vector<T> y(static_cast<std::size_t>(rows), T(1));
  lpfast::csr_matvec_add_rows(view, x.data(), y.data(), 0, 123);
  lpfast::csr_matvec_add_rows(view, x.data(), y.data(), 123, rows);
  double err = 0;
  for (std::int64_t r = 0; r < rows; ++r) err = std::max(err, std::abs(y[r] - (ref_row(0, r) + 1)));
  check(err <= t, std::string("CSR y += S x vs naive, ") + name<T>());
  // CSR, batch nb through the transposed block of x.
  constexpr int kWidth = 8;
  std::vector<T, Eigen::aligned_allocator<T>> xt(static_cast<std::size_t>(cols * kWidth), T(0));
  for (std::int64_t b = 0; b < nb; ++b)
    for (std::int64_t c = 0; c < cols; ++c) xt[c * kWidth + b] = x[b * cols + c];
  const std::int64_t ystride = rows + 4;
  std::vector<T> Y(static_cast<std::size_t>(nb * ystride), T(2));
  lpfast::csr_matmat_add_rows<kWidth>(view, xt.data(), nb, Y.data(), ystride, 0, rows);
  err = 0;
  for (std::int64_t b = 0; b < nb; ++b)
    for (std::int64_t r = 0; r < rows; ++r)
      err = std::max(err, std::abs(Y[b * ystride + r] - (ref_row(b, r) + 2)));
  check(err <= t, std::string("CSR Y += S X (transposed x) vs naive, ") + name<T>());
  // SELL-C-sigma, both index widths, = and +=.
  const std::int64_t slices = lpfast::sell_slices(rows);
  std::vector<std::int32_t> row_of(static_cast<std::size_t>(slices * lpfast::kSellC));
  std::vector<std::int64_t> slice_ptr(static_cast<std::size_t>(slices + 1));
  lpfast::sell_structure(S.indptr.data(), rows, row_of.data(), slice_ptr.data());
  auto run_sell = [&](auto index_type, const char* what) {
    using J = decltype(index_type);
    std::vector<J> idx(static_cast<std::size_t>(slice_ptr[slices]));
    std::vector<T> val(idx.size());
    lpfast::sell_fill(view, row_of.data(), slice_ptr.data(), idx.data(), val.data());
    const lpfast::SellView<T, J> sv{slice_ptr.data(), row_of.data(), idx.data(), val.data(),
                                    rows, cols, slices};
    std::vector<T> ys(static_cast<std::size_t>(rows), T(5)), ya(ys);
    const auto split = lpfast::sell_split(sv, 3);
    for (int p = 0; p < 3; ++p) {
      lpfast::sell_matvec(sv, x.data(), ys.data(), split[p], split[p + 1]);
      lpfast::sell_matvec(sv, x.data(), ya.data(), split[p], split[p + 1], true);
    }
    double e = 0;
    for (std::int64_t r = 0; r < rows; ++r) {
      e = std::max(e, std::abs(ys[r] - ref_row(0, r)));
      e = std::max(e, std::abs(ya[r] - (ref_row(0, r) + 5)));
    }
    check(e <= t, std::string("SELL y (+)= S x vs naive, ") + what + " indices, " + name<T>());
  };
  run_sell(std::int32_t{}, "int32");
  run_sell(std::uint16_t{}, "uint16");
  bool refused = false;
  std::vector<std::int32_t> bad = S.indptr;
  bad[7] = bad[8] + 1;  // decreasing
  try {
    lpfast::check_csr(bad.data(), rows + 1, S.indices.data(), view.nnz(), rows, cols);
  } catch (const std::invalid_argument&) {
    refused = true;
  }
  check(refused, "check_csr refuses a decreasing indptr");
}

// k orthonormal bases (d x j) of random subspaces.
std::vector<lpfast::MatD> random_bases(int k, std::int64_t d, int j, lpfast::Rng& rng) {
  std::vector<lpfast::MatD> V;
  for (int c = 0; c < k; ++c) {
    lpfast::MatD G(d, j);
    for (std::int64_t r = 0; r < d; ++r)
      for (int t = 0; t < j; ++t) G(r, t) = rng.normal();
    V.push_back(lpfast::orthonormal_columns(G));
  }
  return V;
}

// n points near k planted j-dimensional subspaces of R^d (row i near subspace i % k).
template <class T>
lpfast::RowMat<T> planted(const std::vector<lpfast::MatD>& V, std::int64_t n, double noise,
                          lpfast::Rng& rng) {
  const std::int64_t d = V[0].rows(), j = V[0].cols(), k = static_cast<std::int64_t>(V.size());
  lpfast::RowMat<T> X(n, d);
  for (std::int64_t i = 0; i < n; ++i) {
    Eigen::VectorXd a(j);
    for (std::int64_t t = 0; t < j; ++t) a(t) = 3 * rng.normal();
    const Eigen::VectorXd x = V[i % k] * a;
    for (std::int64_t r = 0; r < d; ++r) X(i, r) = static_cast<T>(x(r) + noise * rng.normal());
  }
  return X;
}

// dist(x, V)^2 = ||x - V V^T x||^2 in double, from the explicit residual.
template <class T>
double naive_dist2(const lpfast::RowMat<T>& X, std::int64_t i, const lpfast::MatD& V) {
  const Eigen::VectorXd x = X.row(i).transpose().template cast<double>();
  return (x - V * (V.transpose() * x)).squaredNorm();
}

// la::subspace_distances against the explicit residual, including rows in the subspace
// (recomputed by the kernel from the residual) and rows outside.
template <class T>
void test_distances() {
  lpfast::Rng rng(13);
  const std::int64_t n = 700, d = 33;
  const int k = 5;
  const auto V = random_bases(1, d, k, rng);
  lpfast::RowMat<T> X = points<T>(n, d, rng);
  const auto near = planted<T>(V, 100, 1e-3, rng);
  X.topRows(100) = near;
  const lpfast::RowMat<T> Vr = V[0].cast<T>();
  std::vector<T> dist(static_cast<std::size_t>(n));
  lpfast::la::subspace_distances<T>(X.data(), n, d, nullptr, Vr.data(), k, dist.data());
  double err = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const double ref = std::sqrt(naive_dist2(X, i, V[0]));
    err = std::max(err, std::abs(dist[i] - ref) / (X.row(i).template cast<double>().norm()));
  }
  check(err <= tol<T>(d) * 4, std::string("subspace distances vs explicit residual, ") + name<T>());
}

// Forward: out[t] = C[ids[t]] B[labels[ids[t]]]. Backward: dC[i] = sum over tokens of i
// (not padding) of B[c] g[t]; dB[c] = sum over tokens of subspace c of C[ids[t]]^T g[t].
// Duplicate ids, an unused row, widths that leave packet tails; an id out of range throws.
template <class T>
void test_projective_lookup() {
  lpfast::Rng rng(14);
  const std::int64_t n = 41, j = 3, k = 4, d = 37, N = 29, padding = 6;
  const auto coef = normals<T>(n * j, rng), bases = normals<T>(k * j * d, rng),
             grad = normals<T>(N * d, rng);
  std::vector<std::int64_t> labels(static_cast<std::size_t>(n)), ids(static_cast<std::size_t>(N));
  for (std::int64_t i = 0; i < n; ++i) labels[i] = (i * 5) % k;
  for (std::int64_t t = 0; t < N; ++t) ids[t] = (t * 7) % 23;  // duplicates; rows >= 23 unused
  ids[3] = padding;
  const lpfast::ProjectiveTable<T> tab{coef.data(), labels.data(), bases.data(), n, j, k, d};
  std::vector<T> out(static_cast<std::size_t>(N * d)), dcoef(static_cast<std::size_t>(n * j), T(9)),
      dbases(static_cast<std::size_t>(k * j * d), T(9));
  lpfast::projective_lookup(tab, ids.data(), N, out.data());
  lpfast::projective_lookup_backward(tab, ids.data(), N, grad.data(), padding, dcoef.data(),
                                     dbases.data());
  std::vector<double> ref_out(out.size()), ref_dc(dcoef.size(), 0.0), ref_db(dbases.size(), 0.0);
  for (std::int64_t t = 0; t < N; ++t) {
    const std::int64_t i = ids[t], c = labels[i];
    for (std::int64_t q = 0; q < d; ++q) {
      double s = 0;
      for (std::int64_t l = 0; l < j; ++l) {
        const double b = bases[(c * j + l) * d + q];
        s += static_cast<double>(coef[i * j + l]) * b;
        if (i != padding) ref_dc[i * j + l] += b * grad[t * d + q];
        ref_db[(c * j + l) * d + q] += static_cast<double>(coef[i * j + l]) * grad[t * d + q];
      }
      ref_out[t * d + q] = s;
    }
  }
  auto err = [](const std::vector<T>& got, const std::vector<double>& ref) {
    double e = 0, s = 1;
    for (std::size_t a = 0; a < got.size(); ++a) {
      e = std::max(e, std::abs(got[a] - ref[a]));
      s = std::max(s, std::abs(ref[a]));
    }
    return e / s;
  };
  check(err(out, ref_out) <= tol<T>(j) * 4, std::string("projective lookup vs naive, ") + name<T>());
  check(err(dcoef, ref_dc) <= tol<T>(N * d) * 4 && err(dbases, ref_db) <= tol<T>(N) * 4,
        std::string("projective lookup backward vs naive, ") + name<T>());
  bool thrown = false;
  ids[5] = n;
  try {
    lpfast::projective_lookup(tab, ids.data(), N, out.data());
  } catch (const std::out_of_range&) {
    thrown = true;
  }
  check(thrown, std::string("projective lookup refuses an id out of range, ") + name<T>());
}

// Labels, squared distances and coefficients of a fit or an assignment against the nearest
// basis computed here (ties are not expected on random data).
template <class T>
bool assignment_agrees(const lpfast::RowMat<T>& X, const std::vector<lpfast::MatD>& V,
                       const std::vector<std::int64_t>& labels, const std::vector<double>& dist2,
                       const T* coef) {
  bool ok = true;
  for (std::int64_t i = 0; i < X.rows(); ++i) {
    std::int64_t best = 0;
    double best_d2 = std::numeric_limits<double>::infinity();
    for (std::size_t c = 0; c < V.size(); ++c) {
      const double d2 = naive_dist2(X, i, V[c]);
      if (d2 < best_d2) {
        best_d2 = d2;
        best = static_cast<std::int64_t>(c);
      }
    }
    const double scale = X.row(i).template cast<double>().squaredNorm();
    ok &= labels[i] == best && std::abs(dist2[i] - best_d2) <= tol<T>(X.cols()) * 4 * scale;
    if (coef != nullptr) {
      const Eigen::VectorXd a = V[best].transpose() * X.row(i).transpose().template cast<double>();
      for (std::int64_t t = 0; t < a.size(); ++t)
        ok &= std::abs(coef[i * a.size() + t] - a(t)) <= tol<T>(X.cols()) * 4 * std::sqrt(scale);
    }
  }
  return ok;
}

bool orthonormal(const std::vector<lpfast::MatD>& V, double t) {
  bool ok = true;
  for (const auto& Vc : V)
    ok &= (Vc.transpose() * Vc - lpfast::MatD::Identity(Vc.cols(), Vc.cols())).cwiseAbs().maxCoeff() <= t;
  return ok;
}

// k-subspaces on points near 3 planted planes of R^10: ks::assign and ks::coefficients
// against the nearest basis; seeds orthonormal and a function of (seed, stream); a p = 2
// fit with restarts recovers the planted cost (noise only), its labels are the nearest
// basis and its cost the sum of the rows' squared distances; Lloyd from given bases, p = 1,
// never ends above its start; check_options refuses dim >= d.
template <class T>
void test_k_subspaces() {
  namespace ks = lpfast::ks;
  lpfast::Rng rng(15);
  const std::int64_t n = 600, d = 10;
  const int k = 3, j = 2;
  const double noise = 1e-2;
  const auto truth = random_bases(k, d, j, rng);
  const auto X = planted<T>(truth, n, noise, rng);
  const std::vector<double> w(static_cast<std::size_t>(n), 1.0);
  const ks::Data<T> data(X.data(), w.data(), n, d);
  const double t = sizeof(T) == 4 ? 1e-5 : 1e-12;

  std::vector<std::int64_t> labels(static_cast<std::size_t>(n));
  std::vector<double> dist2(static_cast<std::size_t>(n));
  std::vector<T> coef(static_cast<std::size_t>(n * j)), coef2(coef.size());
  const auto other = random_bases(k, d, j, rng);
  ks::assign(data, other, labels.data(), dist2.data(), coef.data());
  ks::coefficients(data, other, labels, coef2.data());
  check(assignment_agrees(X, other, labels, dist2, coef.data()) &&
            assignment_agrees(X, other, labels, dist2, coef2.data()),
        std::string("k-subspaces assignment and coefficients vs nearest basis, ") + name<T>());

  ks::Options opt;
  opt.k = k;
  opt.j = j;
  const auto s1 = ks::seed_only(data, opt, ks::Seeding::kDp, 7, 0);
  const auto s2 = ks::seed_only(data, opt, ks::Seeding::kDp, 7, 0);
  const auto s3 = ks::seed_only(data, opt, ks::Seeding::kRandom, 7, 1);
  bool same = s1.size() == static_cast<std::size_t>(k) && s3.size() == static_cast<std::size_t>(k);
  for (int c = 0; c < k && same; ++c) same &= s1[c] == s2[c];
  check(same && orthonormal(s1, t) && orthonormal(s3, t),
        std::string("k-subspaces seeds: k orthonormal bases, repeatable, ") + name<T>());

  const ks::Fit f = ks::fit_restarts(data, opt, ks::Seeding::kDp, 4, 3);
  double cost = 0;
  for (std::int64_t i = 0; i < n; ++i) cost += naive_dist2(X, i, f.V[f.labels[i]]);
  // Each row's cost is ||x||^2 - ||V^T x||^2 in T: at the noise floor the history moves by
  // rounding of about eps * ||X||^2.
  bool descends = !f.history.empty();
  for (std::size_t i = 1; i < f.history.size(); ++i)
    descends &= f.history[i] <= f.history[i - 1] + tol<T>(d) * X.squaredNorm();
  const double planted_cost = noise * noise * n * (d - j);
  check(orthonormal(f.V, t) && assignment_agrees<T>(X, f.V, f.labels, f.dist2, nullptr) &&
            std::abs(f.cost - cost) <= 1e-3 * cost + tol<T>(d) * X.squaredNorm() &&
            descends && f.cost <= 1.5 * planted_cost,
        std::string("k-subspaces p = 2 fit: nearest-basis labels, its cost, planted planes "
                    "found (cost ") + std::to_string(f.cost / planted_cost) + " x noise), " +
            name<T>());

  opt.p = 1.0;
  opt.eps = 1e-8;
  opt.max_iter = 10;
  const ks::Fit g = ks::lloyd_from(data, opt, other);
  double start = 0, end = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    start += std::sqrt(dist2[i]);
    end += std::sqrt(naive_dist2(X, i, g.V[g.labels[i]]));
  }
  check(orthonormal(g.V, t) && end <= start && std::abs(g.cost - end) <= 1e-3 * end,
        std::string("k-subspaces p = 1 Lloyd from given bases: cost below its start, ") +
            name<T>());

  bool refused = false;
  opt.j = static_cast<int>(d);
  try {
    ks::check_options(n, d, opt);
  } catch (const std::invalid_argument&) {
    refused = true;
  }
  check(refused, "k-subspaces options: dim >= d refused");
}

}  // namespace

int main() {
  test_finite<float>();
  test_finite<double>();
  test_gemm<float>();
  test_gemm<double>();
  test_sparse<float>();
  test_sparse<double>();
  test_distances<float>();
  test_distances<double>();
  test_projective_lookup<float>();
  test_projective_lookup<double>();
  test_k_subspaces<float>();
  test_k_subspaces<double>();
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
