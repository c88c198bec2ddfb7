// Bindings of the lp subspace fit (lpfast/irls.hpp): shape checks, dtype dispatch, GIL.
#include <cmath>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "array.hpp"
#include "lpfast/irls.hpp"
#include "lpfast/distances.hpp"

namespace py = pybind11;
using lpfast_bind::CArray;
using lpfast_bind::expect_dim;
using lpfast_bind::expect_ndim;

namespace {

template <class T>
const T* weights_ptr(const std::optional<CArray<T>>& w, py::ssize_t n) {
  if (!w) return nullptr;
  expect_ndim(*w, 1, "weights");
  expect_dim(*w, 0, n, "weights");
  return w->data();
}

template <class T>
CArray<T> weighted_pca_py(const CArray<T>& X, std::optional<CArray<T>> weights, std::int64_t k) {
  expect_ndim(X, 2, "X");
  const std::int64_t n = X.shape(0), d = X.shape(1);
  if (k < 1 || k > d) throw std::invalid_argument("k: expected 1 <= k <= d");
  const T* w = weights_ptr(weights, n);
  CArray<T> V({static_cast<py::ssize_t>(d), static_cast<py::ssize_t>(k)});
  T* v = V.mutable_data();
  const T* x = X.data();
  // Safe without the GIL: raw buffers only, kept alive by this frame's references.
  py::gil_scoped_release release;
  lpfast::weighted_pca(x, n, d, w, k, v);
  return V;
}

template <class T>
CArray<T> subspace_distances_py(const CArray<T>& X, const CArray<T>& V) {
  expect_ndim(X, 2, "X");
  expect_ndim(V, 2, "basis");
  const std::int64_t n = X.shape(0), d = X.shape(1), k = V.shape(1);
  expect_dim(V, 0, d, "basis");
  CArray<T> dist(static_cast<py::ssize_t>(n));
  T* out = dist.mutable_data();
  const T* x = X.data();
  const T* v = V.data();
  py::gil_scoped_release release;  // raw buffers only
  lpfast::la::subspace_distances(x, n, d, static_cast<const T*>(nullptr), v, k, out);
  return dist;
}

template <class T>
double subspace_cost_py(const CArray<T>& X, std::optional<CArray<T>> weights,
                        const CArray<T>& V, double p) {
  expect_ndim(X, 2, "X");
  expect_ndim(V, 2, "basis");
  const std::int64_t n = X.shape(0), d = X.shape(1), k = V.shape(1);
  expect_dim(V, 0, d, "basis");
  if (!(p >= 0.0) || !std::isfinite(p)) throw std::invalid_argument("p: expected p >= 0");
  const T* w = weights_ptr(weights, n);
  const T* x = X.data();
  const T* v = V.data();
  py::gil_scoped_release release;  // raw buffers only
  return lpfast::subspace_cost(x, n, d, w, v, k, p);
}

// The fit. `callback(iteration, cost)` (optional) runs with the GIL re-acquired; it may
// return True to stop. Pending signals (Ctrl-C) are checked between iterations even without
// a callback, so a long fit can be interrupted.
template <class T>
py::tuple lp_subspace_irls_py(const CArray<T>& X, std::optional<CArray<T>> weights,
                              const CArray<T>& V0, double p, double eps, double tol,
                              int max_iter, std::optional<py::function> callback) {
  expect_ndim(X, 2, "X");
  expect_ndim(V0, 2, "init");
  const std::int64_t n = X.shape(0), d = X.shape(1), k = V0.shape(1);
  expect_dim(V0, 0, d, "init");
  const T* w = weights_ptr(weights, n);
  CArray<T> V({static_cast<py::ssize_t>(d), static_cast<py::ssize_t>(k)});
  std::copy(V0.data(), V0.data() + d * k, V.mutable_data());
  lpfast::IrlsOptions opt;
  opt.p = p;
  opt.eps = eps;
  opt.tol = tol;
  opt.max_iter = max_iter;
  lpfast::IrlsCallback cb = [&callback](int it, double cost) {
    py::gil_scoped_acquire acquire;
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    if (!callback) return false;
    return py::cast<bool>((*callback)(it, cost));
  };
  T* v = V.mutable_data();
  const T* x = X.data();
  lpfast::IrlsResult res;
  {
    // Safe without the GIL: the core touches raw buffers only (kept alive by this frame);
    // the callback re-acquires the GIL before touching Python.
    py::gil_scoped_release release;
    res = lpfast::lp_subspace_irls(x, n, d, w, k, v, opt, cb);
  }
  return py::make_tuple(V, py::cast(res.history), res.n_iter, res.converged);
}

template <class T>
void def_subspace(py::module_& m) {
  m.def("weighted_pca", &weighted_pca_py<T>, py::arg("X").noconvert(),
        py::arg("weights").noconvert(), py::arg("k"),
        "Top-k eigenvectors (d, k) of X.T @ diag(weights) @ X, descending, sign-fixed.");
  m.def("subspace_distances", &subspace_distances_py<T>, py::arg("X").noconvert(),
        py::arg("basis").noconvert(),
        "Distances (n,) of the rows of X to span(basis); basis (d, k) orthonormal.");
  m.def("subspace_cost", &subspace_cost_py<T>, py::arg("X").noconvert(),
        py::arg("weights").noconvert(), py::arg("basis").noconvert(), py::arg("p"),
        "sum_i weights_i * dist(x_i, span(basis))^p, summed in float64, in one pass over X.");
  m.def("lp_subspace_irls", &lp_subspace_irls_py<T>, py::arg("X").noconvert(),
        py::arg("weights").noconvert(), py::arg("init").noconvert(), py::arg("p"),
        py::arg("eps"), py::arg("tol"), py::arg("max_iter"), py::arg("callback"),
        "IRLS lp subspace fit from the orthonormal (d, k) basis init; returns "
        "(basis, history, n_iter, converged).");
}

}  // namespace

void bind_subspace(py::module_& m) {
  def_subspace<float>(m);
  def_subspace<double>(m);
}
