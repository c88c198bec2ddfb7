// Checks of lpfast's C++ core without Python: the shared building blocks (weighted Gram,
// top-k eigensolver, RNG, range splitter, exception rethrow from parallel regions), an IRLS
// fit's descent, the doped Kronecker product and the doped LSTM, each in float and double
// against a direct computation. Exits non-zero on the first failed check (run by ctest).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <Eigen/Core>
#include <Eigen/Eigenvalues>

#include "lpfast/csr.hpp"
#include "lpfast/doped_kron.hpp"
#include "lpfast/doped_lstm.hpp"
#include "lpfast/gram.hpp"
#include "lpfast/irls.hpp"
#include "lpfast/lewis.hpp"
#include "lpfast/parallel.hpp"
#include "lpfast/rng.hpp"
#include "lpfast/sym_eigen.hpp"
#include "lpfast/types.hpp"

#include "check.hpp"

namespace {

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

// An exactly rank-6 X (23 x 7, small-integer factors): the weights sum to the rank and none
// exceeds 1. Its Gram once passed the Cholesky pivot test as full rank (smallest pivot^2
// 7e-13, eigenvalue ratio 1e-17), and the float solves then gave weights summing to 76.
template <class T>
void test_lewis_rank_deficient() {
  const int A[23 * 6] = {3, 0, -3, 1, 1, 3, 1, -2, -3, 1, -2, 2, -3, -2, -2, 3, 1, -1, -1, 1, 1,
      0, 2, 3, -2, -2, 0, 0, 2, -1, 1, -3, -2, 3, -3, 1, 1, 2, -3, 3, 1, -2, 0, 0, -1, -2, 2, 0,
      -3, -2, 0, 2, -1, -2, -2, 0, 1, -2, 3, 3, -2, -3, 1, 1, 3, 3, 2, 1, 1, 3, -1, 2, 1, -1, 0,
      -3, 1, 2, 0, 3, -2, -1, 2, -3, -2, -2, 3, 1, 2, -1, 3, -2, 2, 0, 3, 3, -1, -3, -3, 2, 0, 2,
      -3, -2, 1, -3, 3, 0, 0, 1, 3, 0, -2, 3, 2, 0, -1, -1, 1, -3, 1, 2, 0, 1, -2, -1, 2, 3, -2,
      0, -3, 2, -3, -3, -2, -3, 3, -3};
  const int B[6 * 7] = {1, -1, 0, 0, -1, 0, -3, -3, -3, 1, 1, 0, 2, 0, -1, 0, -1, -2, -2, 1, -3,
      -1, -1, -2, -3, -3, 0, 0, -1, 2, 0, 2, 1, 1, -1, -2, 1, -3, 3, 1, -3, 0};
  const std::int64_t n = 23, d = 7, k = 6;
  std::vector<T> X(static_cast<std::size_t>(n * d), T(0));
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < d; ++j)
      for (std::int64_t t = 0; t < k; ++t) X[i * d + j] += static_cast<T>(A[i * k + t] * B[t * d + j]);
  std::vector<T> w(static_cast<std::size_t>(n));
  lpfast::LewisOptions opt;
  opt.p = 2.5;
  const auto info = lpfast::lewis_weights<T>(X.data(), n, d, opt, w.data());
  double sum = 0, top = 0;
  for (const T v : w) {
    sum += static_cast<double>(v);
    top = std::max(top, static_cast<double>(v));
  }
  const double slack = std::is_same_v<T, float> ? 1e-4 : 1e-10;
  check(info.rank == k && std::abs(sum - k) <= k * slack && top <= 1 + slack,
        std::string("Lewis weights of a rank-deficient X sum to its rank, none above 1, ") + name<T>());
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

// The activations of doped_lstm.hpp against std:: in long double, with the error bounds its
// header states (absolute; relative for tanh), including tiny, large and infinite inputs.
template <class T>
void test_lstm_activations() {
  std::vector<T> x;
  lpfast::Rng rng(7);
  for (int i = 0; i < 20000; ++i) x.push_back(static_cast<T>(rng.normal() * (i % 3 == 0 ? 10 : 1)));
  for (double v : {0.0, 1e-30, -1e-8, 1e-4, 0.0499, 0.05, 0.0501, -0.3, 9.0, -20.0, 40.0, -100.0,
                   1e4})
    x.push_back(static_cast<T>(v));
  x.push_back(std::numeric_limits<T>::infinity());
  x.push_back(-std::numeric_limits<T>::infinity());
  std::vector<T> s = x, t = x;
  lpfast::detail::sigmoid_inplace(s.data(), static_cast<std::int64_t>(s.size()));
  lpfast::detail::tanh_inplace(t.data(), static_cast<std::int64_t>(t.size()));
  const double eps = std::numeric_limits<T>::epsilon();
  double sig_abs = 0, tanh_abs = 0, tanh_rel = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const long double v = x[i];
    const long double rs = 1.0L / (1.0L + std::exp(-v)), rt = std::tanh(v);
    sig_abs = std::max<double>(sig_abs, std::fabs(s[i] - rs));
    tanh_abs = std::max<double>(tanh_abs, std::fabs(t[i] - rt));
    if (rt != 0) tanh_rel = std::max<double>(tanh_rel, std::fabs((t[i] - rt) / rt));
  }
  check(sig_abs <= 1.0 * eps && tanh_abs <= 2.0 * eps && tanh_rel <= 6.0 * eps,
        std::string("LSTM activations vs std:: (sigmoid abs ") + std::to_string(sig_abs / eps) +
            " eps, tanh abs " + std::to_string(tanh_abs / eps) + " eps, rel " +
            std::to_string(tanh_rel / eps) + " eps), " + name<T>());
}

// A doped gate matrix with its dense W (double), from random factors and a strided pattern.
template <class T>
struct TestGate {
  std::vector<T> A, B, data;
  std::vector<std::int32_t> indptr{0}, indices;
  lpfast::RowMat<double> W;
  lpfast::DopedGateMatrix<T> view(bool doped) const {
    lpfast::DopedGateMatrix<T> g;
    g.kp.A = A.data();
    g.kp.B = B.data();
    g.kp.rank = rank;
    g.kp.m1 = m1;
    g.kp.n1 = n1;
    g.kp.m2 = m2;
    g.kp.n2 = n2;
    if (doped) g.S = {indptr.data(), indices.data(), data.data(), m1 * m2, n1 * n2};
    return g;
  }
  std::int64_t rank, m1, n1, m2, n2;
};

template <class T>
TestGate<T> test_gate(lpfast::Rng& rng, std::int64_t rank, std::int64_t m1, std::int64_t n1,
                      std::int64_t m2, std::int64_t n2, int stride, double scale) {
  TestGate<T> g;
  g.rank = rank;
  g.m1 = m1;
  g.n1 = n1;
  g.m2 = m2;
  g.n2 = n2;
  const std::int64_t rows = m1 * m2, cols = n1 * n2;
  for (std::int64_t k = 0; k < rank * m1 * n1; ++k) g.A.push_back(static_cast<T>(scale * rng.normal()));
  for (std::int64_t k = 0; k < rank * m2 * n2; ++k) g.B.push_back(static_cast<T>(rng.normal()));
  g.W = lpfast::RowMat<double>::Zero(rows, cols);
  for (std::int64_t q = 0; q < rank; ++q)
    for (std::int64_t i1 = 0; i1 < m1; ++i1)
      for (std::int64_t j1 = 0; j1 < n1; ++j1)
        for (std::int64_t i2 = 0; i2 < m2; ++i2)
          for (std::int64_t j2 = 0; j2 < n2; ++j2)
            g.W(i1 * m2 + i2, j1 * n2 + j2) += static_cast<double>(g.A[(q * m1 + i1) * n1 + j1]) *
                                               g.B[(q * m2 + i2) * n2 + j2];
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = r % stride; c < cols; c += stride) {
      g.indices.push_back(static_cast<std::int32_t>(c));
      g.data.push_back(static_cast<T>(scale * rng.normal()));
      g.W(r, c) += g.data.back();
    }
    g.indptr.push_back(static_cast<std::int32_t>(g.indices.size()));
  }
  return g;
}

// A 2-layer doped LSTM (input 12, hidden 10: gates 40 x 12 and 40 x 10) against the dense
// recurrence in double: a sequence from a given state, the same steps one call each, batch
// 1 (the SELL path) and 7 (the CSR path), with and without doping, on 1 and 2 threads.
template <class T>
void test_doped_lstm() {
  lpfast::Rng rng(8);
  const std::int64_t I = 12, H = 10, L = 2, steps = 45;  // > kChunkRows: several chunks
  const double scale = 0.3;
  std::vector<TestGate<T>> gates;
  gates.push_back(test_gate<T>(rng, 2, 8, 3, 5, 4, 5, scale));   // layer 0 ih (40 x 12)
  gates.push_back(test_gate<T>(rng, 1, 5, 2, 8, 5, 3, scale));   // layer 0 hh (40 x 10)
  gates.push_back(test_gate<T>(rng, 1, 4, 5, 10, 2, 7, scale));  // layer 1 ih
  gates.push_back(test_gate<T>(rng, 1, 40, 10, 1, 1, 4, scale)); // layer 1 hh (B is 1 x 1)
  std::vector<std::vector<T>> bias(L);
  for (auto& b : bias)
    for (std::int64_t k = 0; k < 4 * H; ++k) b.push_back(static_cast<T>(scale * rng.normal()));
  for (bool doped : {true, false}) {
    std::vector<lpfast::DopedLstmLayer<T>> layers(L);
    for (std::int64_t l = 0; l < L; ++l) {
      layers[l].ih = gates[2 * l].view(doped);
      layers[l].hh = gates[2 * l + 1].view(doped);
      layers[l].bias = bias[l].data();
    }
    const lpfast::DopedLstm<T> lstm(layers);
    check(lstm.num_layers() == L && lstm.input_size() == I && lstm.hidden_size() == H,
          std::string("DopedLstm sizes, ") + name<T>());
    for (std::int64_t batch : {1, 7}) {
      std::vector<T> xs, h0, c0;
      for (std::int64_t k = 0; k < batch * steps * I; ++k) xs.push_back(static_cast<T>(rng.normal()));
      for (std::int64_t k = 0; k < L * batch * H; ++k) {
        h0.push_back(static_cast<T>(0.5 * rng.normal()));
        c0.push_back(static_cast<T>(rng.normal()));
      }
      // The dense recurrence in double.
      std::vector<double> h(h0.begin(), h0.end()), c(c0.begin(), c0.end());
      std::vector<double> ref(static_cast<std::size_t>(batch * steps * H));
      auto sig = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
      for (std::int64_t b = 0; b < batch; ++b) {
        for (std::int64_t t = 0; t < steps; ++t) {
          Eigen::VectorXd in(I);
          for (std::int64_t k = 0; k < I; ++k) in(k) = xs[(b * steps + t) * I + k];
          for (std::int64_t l = 0; l < L; ++l) {
            Eigen::VectorXd hl(H);
            for (std::int64_t k = 0; k < H; ++k) hl(k) = h[(l * batch + b) * H + k];
            Eigen::VectorXd z = gates[2 * l].W * in + gates[2 * l + 1].W * hl;
            if (!doped) {  // the dense W includes S: take it out again
              for (int w = 0; w < 2; ++w) {
                const auto& g = gates[2 * l + w];
                const Eigen::VectorXd& v = w == 0 ? in : hl;
                for (std::int64_t r = 0; r < 4 * H; ++r)
                  for (std::int32_t e = g.indptr[r]; e < g.indptr[r + 1]; ++e)
                    z(r) -= static_cast<double>(g.data[e]) * v(g.indices[e]);
              }
            }
            for (std::int64_t k = 0; k < 4 * H; ++k) z(k) += bias[l][k];
            for (std::int64_t k = 0; k < H; ++k) {
              double& cc = c[(l * batch + b) * H + k];
              cc = sig(z(H + k)) * cc + sig(z(k)) * std::tanh(z(2 * H + k));
              h[(l * batch + b) * H + k] = sig(z(3 * H + k)) * std::tanh(cc);
            }
            in = Eigen::VectorXd(H);
            for (std::int64_t k = 0; k < H; ++k) in(k) = h[(l * batch + b) * H + k];
          }
          for (std::int64_t k = 0; k < H; ++k) ref[(b * steps + t) * H + k] = in(k);
        }
      }
      auto err = [](const std::vector<T>& got, const std::vector<double>& want) {
        double e = 0;
        for (std::size_t k = 0; k < want.size(); ++k) e = std::max(e, std::fabs(got[k] - want[k]));
        return e;
      };
      const double tolerance = 200 * std::numeric_limits<T>::epsilon();
      const std::string what = std::string(doped ? "doped" : "plain KP") + " LSTM, batch " +
                               std::to_string(batch) + ", " + name<T>();
      for (int threads : {1, 2}) {
        lpfast::set_num_threads(threads);
        std::vector<T> ys(ref.size()), hn(h0.size()), cn(c0.size());
        lstm.sequence(xs.data(), batch, steps, h0.data(), c0.data(), ys.data(), hn.data(), cn.data());
        check(err(ys, ref) <= tolerance && err(hn, h) <= tolerance && err(cn, c) <= tolerance,
              "sequence vs dense recurrence, " + what + ", threads " + std::to_string(threads));
        // The same steps one call each, state updated in place; x rows gathered per step.
        std::vector<T> hs = h0, cs = c0, y(static_cast<std::size_t>(batch * H)), x(batch * I);
        double step_err = 0;
        for (std::int64_t t = 0; t < steps; ++t) {
          for (std::int64_t b = 0; b < batch; ++b)
            std::copy(xs.begin() + (b * steps + t) * I, xs.begin() + (b * steps + t + 1) * I,
                      x.begin() + b * I);
          lstm.step(x.data(), batch, hs.data(), cs.data(), y.data(), hs.data(), cs.data());
          for (std::int64_t b = 0; b < batch; ++b)
            for (std::int64_t k = 0; k < H; ++k)
              step_err = std::max(step_err, std::fabs(y[b * H + k] - ref[(b * steps + t) * H + k]));
        }
        check(step_err <= tolerance && err(hs, h) <= tolerance && err(cs, c) <= tolerance,
              "steps vs dense recurrence, " + what + ", threads " + std::to_string(threads));
      }
      lpfast::set_num_threads(0);
    }
  }
  // One row, one step of a layer large enough that threads would pay (~2.5M flops): the
  // same bits with 1 and 2 threads, and the dense recurrence.
  {
    const std::int64_t h2 = 128;
    std::vector<TestGate<T>> big;
    for (int k = 0; k < 4; ++k) big.push_back(test_gate<T>(rng, 1, 32, 16, 16, 8, 2, 0.05));
    std::vector<lpfast::DopedLstmLayer<T>> layers(2);
    for (std::int64_t l = 0; l < 2; ++l) {
      layers[l].ih = big[2 * l].view(true);
      layers[l].hh = big[2 * l + 1].view(true);
    }
    const lpfast::DopedLstm<T> lstm(layers);
    std::vector<T> x(h2), h(2 * h2), c(2 * h2);
    for (auto& v : x) v = static_cast<T>(rng.normal());
    for (auto& v : h) v = static_cast<T>(0.5 * rng.normal());
    for (auto& v : c) v = static_cast<T>(rng.normal());
    std::vector<T> y1(h2), h1(2 * h2), c1(2 * h2), y2(h2), hb(2 * h2), cb(2 * h2);
    lpfast::set_num_threads(1);
    lstm.step(x.data(), 1, h.data(), c.data(), y1.data(), h1.data(), c1.data());
    lpfast::set_num_threads(2);
    lstm.step(x.data(), 1, h.data(), c.data(), y2.data(), hb.data(), cb.data());
    lpfast::set_num_threads(0);
    Eigen::VectorXd in = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>(x.data(), h2).template cast<double>();
    double e = 0;
    for (std::int64_t l = 0; l < 2; ++l) {
      Eigen::VectorXd hl(h2), z;
      for (std::int64_t k = 0; k < h2; ++k) hl(k) = h[l * h2 + k];
      z = big[2 * l].W * in + big[2 * l + 1].W * hl;
      for (std::int64_t k = 0; k < h2; ++k) {
        auto sg = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
        const double cc = sg(z(h2 + k)) * c[l * h2 + k] + sg(z(k)) * std::tanh(z(2 * h2 + k));
        const double hh = sg(z(3 * h2 + k)) * std::tanh(cc);
        e = std::max({e, std::fabs(cc - c1[l * h2 + k]), std::fabs(hh - h1[l * h2 + k])});
        in(k) = hh;
      }
    }
    check(y1 == y2 && h1 == hb && c1 == cb && y1 == std::vector<T>(h1.begin() + h2, h1.end()) &&
              e <= 200 * std::numeric_limits<T>::epsilon(),
          std::string("one large step of one row: same bits on 1 and 2 threads, and dense, ") +
              name<T>());
  }
  // Zero state and zero steps: h_n, c_n are zeros / the given state.
  std::vector<lpfast::DopedLstmLayer<T>> layers(L);
  for (std::int64_t l = 0; l < L; ++l) {
    layers[l].ih = gates[2 * l].view(true);
    layers[l].hh = gates[2 * l + 1].view(true);
  }
  const lpfast::DopedLstm<T> lstm(layers);
  std::vector<T> hn(L * 3 * H, T(1)), cn(L * 3 * H, T(1)), ys;
  lstm.sequence(nullptr, 3, 0, nullptr, nullptr, ys.data(), hn.data(), cn.data());
  check(std::all_of(hn.begin(), hn.end(), [](T v) { return v == T(0); }) &&
            std::all_of(cn.begin(), cn.end(), [](T v) { return v == T(0); }),
        std::string("zero steps from a zero state give a zero state, ") + name<T>());
  // Shapes that do not fit are refused by name.
  bool refused = false;
  try {
    layers[1].hh = gates[1].view(true);  // fine (40 x 10)
    layers[1].ih = gates[0].view(true);  // 40 x 12, but layer 1's input is H = 10
    lpfast::DopedLstm<T> bad(layers);
  } catch (const std::invalid_argument& e) {
    refused = std::string(e.what()).find("layers[1].ih") != std::string::npos;
  }
  check(refused, std::string("a layer whose W_ih does not take H inputs is refused, ") + name<T>());
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
  test_lstm_activations<float>();
  test_lstm_activations<double>();
  test_doped_lstm<float>();
  test_doped_lstm<double>();
  test_leverage<float>();
  test_leverage<double>();
  test_lewis_rank_deficient<float>();
  test_lewis_rank_deficient<double>();
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
