// Embedding lookups: the fused projective-clustering lookup and its backward.
#include <cstdint>
#include <optional>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "array.hpp"
#include "lpfast/projective_lookup.hpp"

namespace py = pybind11;
using lpfast_bind::CArray;
using lpfast_bind::expect_dim;
using lpfast_bind::expect_ndim;

namespace {

template <class T>
lpfast::ProjectiveTable<T> table(const CArray<T>& coef, const CArray<std::int64_t>& labels,
                                 const CArray<T>& bases) {
  expect_ndim(coef, 2, "coef");
  expect_ndim(labels, 1, "labels");
  expect_ndim(bases, 3, "bases");
  expect_dim(labels, 0, coef.shape(0), "labels");
  expect_dim(bases, 1, coef.shape(1), "bases");
  lpfast::ProjectiveTable<T> tab;
  tab.coef = coef.data();
  tab.labels = labels.data();
  tab.bases = bases.data();
  tab.n = coef.shape(0);
  tab.j = coef.shape(1);
  tab.k = bases.shape(0);
  tab.d = bases.shape(2);
  return tab;
}

// out (N, d) = rows ids of the table; ids are bounds-checked in C++ (IndexError).
template <class T>
void projective_lookup_py(const CArray<T>& coef, const CArray<std::int64_t>& labels,
                          const CArray<T>& bases, const CArray<std::int64_t>& ids,
                          CArray<T>& out) {
  const auto tab = table(coef, labels, bases);
  expect_ndim(ids, 1, "ids");
  expect_ndim(out, 2, "out");
  expect_dim(out, 0, ids.shape(0), "out");
  expect_dim(out, 1, tab.d, "out");
  const std::int64_t* idp = ids.data();
  const std::int64_t N = ids.shape(0);
  T* o = out.mutable_data();
  // Safe without the GIL: only raw buffers are touched, and the arrays stay alive because
  // this frame holds references to them.
  py::gil_scoped_release release;
  lpfast::projective_lookup(tab, idp, N, o);
}

template <class T>
void projective_lookup_backward_py(const CArray<T>& coef, const CArray<std::int64_t>& labels,
                                   const CArray<T>& bases, const CArray<std::int64_t>& ids,
                                   const CArray<T>& grad, std::int64_t padding_idx,
                                   std::optional<CArray<T>> dcoef,
                                   std::optional<CArray<T>> dbases) {
  const auto tab = table(coef, labels, bases);
  expect_ndim(ids, 1, "ids");
  expect_ndim(grad, 2, "grad");
  expect_dim(grad, 0, ids.shape(0), "grad");
  expect_dim(grad, 1, tab.d, "grad");
  if (dcoef) {
    expect_ndim(*dcoef, 2, "dcoef");
    expect_dim(*dcoef, 0, tab.n, "dcoef");
    expect_dim(*dcoef, 1, tab.j, "dcoef");
  }
  if (dbases) {
    expect_ndim(*dbases, 3, "dbases");
    for (py::ssize_t axis = 0; axis < 3; ++axis) expect_dim(*dbases, axis, bases.shape(axis), "dbases");
  }
  const std::int64_t* idp = ids.data();
  const std::int64_t N = ids.shape(0);
  const T* g = grad.data();
  T* dc = dcoef ? dcoef->mutable_data() : nullptr;
  T* db = dbases ? dbases->mutable_data() : nullptr;
  py::gil_scoped_release release;  // raw buffers only, kept alive by this frame
  lpfast::projective_lookup_backward(tab, idp, N, g, padding_idx, dc, db);
}

template <class T>
void def_lookup(py::module_& m) {
  m.def("projective_lookup", &projective_lookup_py<T>, py::arg("coef").noconvert(),
        py::arg("labels").noconvert(), py::arg("bases").noconvert(), py::arg("ids").noconvert(),
        py::arg("out").noconvert(),
        "out[t] = coef[ids[t]] @ bases[labels[ids[t]]]. coef: (n, j), labels: (n,) int64, "
        "bases: (k, j, d), ids: (N,) int64, out: (N, d). IndexError for an id outside [0, n).");
  m.def("projective_lookup_backward", &projective_lookup_backward_py<T>,
        py::arg("coef").noconvert(), py::arg("labels").noconvert(), py::arg("bases").noconvert(),
        py::arg("ids").noconvert(), py::arg("grad").noconvert(), py::arg("padding_idx"),
        py::arg("dcoef").noconvert(), py::arg("dbases").noconvert(),
        "Overwrite dcoef (n, j) and/or dbases (k, j, d) (None: not wanted) with the gradients "
        "of projective_lookup for upstream grad (N, d); row padding_idx (< 0: none) of dcoef "
        "stays zero. Deterministic for any thread count.");
}

}  // namespace

void bind_embedding(py::module_& m) {
  def_lookup<float>(m);
  def_lookup<double>(m);
}
