// Bindings of k-subspace projective clustering (lpfast/k_subspaces.hpp): shape checks,
// dtype dispatch, GIL release. Arguments were validated once by python/lpfast/projective.py.
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "array.hpp"
#include "lpfast/k_subspaces.hpp"

namespace py = pybind11;
using lpfast_bind::CArray;
using lpfast_bind::expect_dim;
using lpfast_bind::expect_ndim;

namespace {

namespace ks = lpfast::ks;

ks::Seeding seeding_of(int code) {
  if (code == 0) return ks::Seeding::kDp;
  if (code == 1) return ks::Seeding::kRandom;
  throw std::invalid_argument("seeding: expected 0 (dp) or 1 (random)");
}

template <class T>
std::vector<lpfast::MatD> bases_in(const CArray<T>& B, std::int64_t d, const char* name) {
  expect_ndim(B, 3, name);
  expect_dim(B, 1, d, name);
  const std::int64_t k = B.shape(0), j = B.shape(2);
  std::vector<lpfast::MatD> V(k, lpfast::MatD(d, j));
  const T* b = B.data();
  for (std::int64_t c = 0; c < k; ++c)
    for (std::int64_t r = 0; r < d; ++r)
      for (std::int64_t t = 0; t < j; ++t) V[c](r, t) = static_cast<double>(b[(c * d + r) * j + t]);
  return V;
}

template <class T>
CArray<T> bases_out(const std::vector<lpfast::MatD>& V) {
  const std::int64_t k = static_cast<std::int64_t>(V.size()), d = V[0].rows(), j = V[0].cols();
  CArray<T> B({static_cast<py::ssize_t>(k), static_cast<py::ssize_t>(d), static_cast<py::ssize_t>(j)});
  T* b = B.mutable_data();
  for (std::int64_t c = 0; c < k; ++c)
    for (std::int64_t r = 0; r < d; ++r)
      for (std::int64_t t = 0; t < j; ++t) b[(c * d + r) * j + t] = static_cast<T>(V[c](r, t));
  return B;
}

template <class T>
const double* weights_of(const CArray<double>& w, std::int64_t n) {
  expect_ndim(w, 1, "weights");
  expect_dim(w, 0, n, "weights");
  return w.data();
}

// Seeding + Lloyd with n_init restarts (or Lloyd from init_bases when given).
template <class T>
py::tuple fit_py(const CArray<T>& X, const CArray<double>& weights, int n_subspaces, int dim,
                 double p, int max_iter, double tol, double eps, int irls_steps, int seeding,
                 int n_init, std::uint64_t seed, std::optional<CArray<T>> init_bases,
                 bool coefficients) {
  expect_ndim(X, 2, "X");
  const std::int64_t n = X.shape(0), d = X.shape(1);
  ks::Options opt;
  opt.k = n_subspaces;
  opt.j = dim;
  opt.p = p;
  opt.max_iter = max_iter;
  opt.tol = tol;
  opt.eps = eps;
  opt.irls_steps = irls_steps;
  const ks::Seeding how = seeding_of(seeding);
  std::vector<lpfast::MatD> V0;
  if (init_bases) {
    V0 = bases_in(*init_bases, d, "init_bases");
    expect_dim(*init_bases, 0, n_subspaces, "init_bases");
    expect_dim(*init_bases, 2, dim, "init_bases");
  }
  const double* w = weights_of<T>(weights, n);
  const T* x = X.data();
  ks::check_options(n, d, opt);  // before dim sizes an allocation
  py::object coef = py::none();
  T* cf = nullptr;
  if (coefficients) {
    CArray<T> c({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(dim)});
    cf = c.mutable_data();
    coef = std::move(c);
  }
  ks::Fit f;
  {
    // Safe without the GIL: the core reads raw buffers kept alive by this frame.
    py::gil_scoped_release release;
    ks::Data<T> data(x, w, n, d);
    f = init_bases ? ks::lloyd_from(data, opt, std::move(V0))
                   : ks::fit_restarts(data, opt, how, n_init, seed);
    if (cf != nullptr) ks::coefficients(data, f.V, f.labels, cf);
  }
  CArray<std::int64_t> labels(static_cast<py::ssize_t>(n));
  std::copy(f.labels.begin(), f.labels.end(), labels.mutable_data());
  return py::make_tuple(bases_out<T>(f.V), labels, f.cost, f.n_iter, py::cast(f.history),
                        f.restart, coef);
}

template <class T>
CArray<T> seed_py(const CArray<T>& X, const CArray<double>& weights, int n_subspaces, int dim,
                  double p, int seeding, std::uint64_t seed, std::uint64_t stream) {
  expect_ndim(X, 2, "X");
  const std::int64_t n = X.shape(0), d = X.shape(1);
  ks::Options opt;
  opt.k = n_subspaces;
  opt.j = dim;
  opt.p = p;
  const ks::Seeding how = seeding_of(seeding);
  const double* w = weights_of<T>(weights, n);
  const T* x = X.data();
  std::vector<lpfast::MatD> V;
  {
    py::gil_scoped_release release;  // raw buffers only
    ks::Data<T> data(x, w, n, d);
    V = ks::seed_only(data, opt, how, seed, stream);
  }
  return bases_out<T>(V);
}

// (labels, squared distances, coefficients V_label^T x) of every row of X.
template <class T>
py::tuple assign_py(const CArray<T>& X, const CArray<T>& bases) {
  expect_ndim(X, 2, "X");
  const std::int64_t n = X.shape(0), d = X.shape(1);
  std::vector<lpfast::MatD> V = bases_in(bases, d, "bases");
  if (V.empty()) throw std::invalid_argument("bases: need at least one subspace");
  const std::int64_t j = V[0].cols();
  CArray<std::int64_t> labels(static_cast<py::ssize_t>(n));
  CArray<double> dist2(static_cast<py::ssize_t>(n));
  CArray<T> coef({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(j)});
  std::int64_t* l = labels.mutable_data();
  double* d2 = dist2.mutable_data();
  T* cf = coef.mutable_data();
  const T* x = X.data();
  if (n > 0 && j > 0) {
    py::gil_scoped_release release;  // raw buffers only
    std::vector<double> ones(static_cast<std::size_t>(n), 1.0);
    ks::Data<T> data(x, ones.data(), n, d);
    ks::assign(data, V, l, d2, cf);
  }
  return py::make_tuple(labels, dist2, coef);
}

template <class T>
void def_projective(py::module_& m) {
  m.def("k_subspaces_fit", &fit_py<T>, py::arg("X").noconvert(), py::arg("weights").noconvert(),
        py::arg("n_subspaces"), py::arg("dim"), py::arg("p"), py::arg("max_iter"), py::arg("tol"),
        py::arg("eps"), py::arg("irls_steps"), py::arg("seeding"), py::arg("n_init"),
        py::arg("seed"), py::arg("init_bases").noconvert(), py::arg("coefficients"),
        "k-subspace Lloyd: returns (bases (k, d, j), labels, cost, n_iter, history, restart, "
        "coefficients (n, j) of each row in its subspace, or None unless asked for).");
  m.def("k_subspaces_seed", &seed_py<T>, py::arg("X").noconvert(),
        py::arg("weights").noconvert(), py::arg("n_subspaces"), py::arg("dim"), py::arg("p"),
        py::arg("seeding"), py::arg("seed"), py::arg("stream"),
        "Initial bases (k, d, j) of restart `stream` (0 = D^p, 1 = random seeding).");
  m.def("k_subspaces_assign", &assign_py<T>, py::arg("X").noconvert(),
        py::arg("bases").noconvert(),
        "Nearest subspace of each row: (labels, squared distances, coefficients (n, j)).");
}

}  // namespace

void bind_projective(py::module_& m) {
  def_projective<float>(m);
  def_projective<double>(m);
}
