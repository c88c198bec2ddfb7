#include <cstdint>
#include <optional>
#include <string>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "array.hpp"
#include "lpfast/csr.hpp"
#include "lpfast/doped_kron.hpp"

namespace py = pybind11;
using lpfast_bind::CArray;
using lpfast_bind::expect_dim;
using lpfast_bind::expect_ndim;

namespace {

template <class I>
void check_csr_py(const CArray<I>& indptr, const CArray<I>& indices, std::int64_t rows,
                  std::int64_t cols, const std::string& name) {
  expect_ndim(indptr, 1, "indptr");
  expect_ndim(indices, 1, "indices");
  if (indptr.shape(0) < 1) throw std::invalid_argument(name + ": indptr is empty");
  lpfast::check_csr(indptr.data(), indptr.shape(0), indices.data(), indices.shape(0), rows, cols,
                    name);
}

// out = x @ W.T (+ bias). The CSR arrays must already have passed check_csr (the Python
// layer checks once per operator, not per call); shapes are re-checked here because they
// are O(1) and guard every pointer below.
template <class T, class I>
void doped_kron_matmul_py(const CArray<T>& x, const CArray<T>& A, const CArray<T>& B,
                          std::optional<CArray<I>> indptr, std::optional<CArray<I>> indices,
                          std::optional<CArray<T>> data, std::optional<CArray<T>> bias,
                          CArray<T>& out) {
  expect_ndim(A, 3, "A");
  expect_ndim(B, 3, "B");
  expect_ndim(x, 2, "x");
  expect_ndim(out, 2, "out");
  expect_dim(B, 0, A.shape(0), "B");
  lpfast::KronFactors<T> kp;
  kp.A = A.data();
  kp.B = B.data();
  kp.rank = A.shape(0);
  kp.m1 = A.shape(1);
  kp.n1 = A.shape(2);
  kp.m2 = B.shape(1);
  kp.n2 = B.shape(2);
  const std::int64_t batch = x.shape(0);
  expect_dim(x, 1, kp.cols(), "x");
  expect_dim(out, 0, batch, "out");
  expect_dim(out, 1, kp.rows(), "out");
  if (bias) {
    expect_ndim(*bias, 1, "bias");
    expect_dim(*bias, 0, kp.rows(), "bias");
  }
  lpfast::CsrView<T, I> S;
  const bool doped = indptr.has_value();
  if (doped != indices.has_value() || doped != data.has_value()) {
    throw std::invalid_argument("S: indptr, indices and data go together");
  }
  if (doped) {
    expect_ndim(*indptr, 1, "S.indptr");
    expect_dim(*indptr, 0, kp.rows() + 1, "S.indptr");
    expect_dim(*data, 0, indices->shape(0), "S.data");
    S = {indptr->data(), indices->data(), data->data(), kp.rows(), kp.cols()};
    if (S.nnz() != indices->shape(0)) throw std::invalid_argument("S: indptr[-1] != nnz");
  }
  const T* bias_ptr = bias ? bias->data() : nullptr;
  T* y = out.mutable_data();
  const T* xp = x.data();
  // Safe without the GIL: only raw buffers are touched, and the arrays stay alive because
  // this frame holds references to them.
  py::gil_scoped_release release;
  lpfast::doped_kron_matmul(xp, batch, kp, doped ? &S : nullptr, bias_ptr, y);
}

template <class T, class I>
void def_matmul(py::module_& m) {
  m.def("doped_kron_matmul", &doped_kron_matmul_py<T, I>, py::arg("x").noconvert(),
        py::arg("A").noconvert(), py::arg("B").noconvert(), py::arg("indptr").noconvert(),
        py::arg("indices").noconvert(), py::arg("data").noconvert(),
        py::arg("bias").noconvert(), py::arg("out").noconvert(),
        "out = x @ (sum_r kron(A[r], B[r]) + S).T + bias. x: (N, n1*n2), A: (R, m1, n1), "
        "B: (R, m2, n2), out: (N, m1*m2). S (CSR arrays) must have passed check_csr.");
}

}  // namespace

void bind_kron(py::module_& m) {
  m.def("check_csr", &check_csr_py<std::int32_t>, py::arg("indptr").noconvert(),
        py::arg("indices").noconvert(), py::arg("rows"), py::arg("cols"), py::arg("name") = "S");
  m.def("check_csr", &check_csr_py<std::int64_t>, py::arg("indptr").noconvert(),
        py::arg("indices").noconvert(), py::arg("rows"), py::arg("cols"), py::arg("name") = "S",
        "Raise ValueError unless (indptr, indices) form a valid CSR pattern of shape (rows, cols).");
  def_matmul<float, std::int32_t>(m);
  def_matmul<float, std::int64_t>(m);
  def_matmul<double, std::int32_t>(m);
  def_matmul<double, std::int64_t>(m);
}
