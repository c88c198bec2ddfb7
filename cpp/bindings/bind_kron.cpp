#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "array.hpp"
#include "lpfast/csr.hpp"
#include "lpfast/doped_kron.hpp"
#include "lpfast/sell.hpp"

namespace py = pybind11;
using lpfast_bind::CArray;
using lpfast_bind::expect_dim;
using lpfast_bind::expect_ndim;
using lpfast_bind::require_finite;

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

// The Kronecker factors A (R, m1, n1) and B (R, m2, n2), checked.
template <class T>
lpfast::KronFactors<T> checked_factors(const CArray<T>& A, const CArray<T>& B) {
  expect_ndim(A, 3, "A");
  expect_ndim(B, 3, "B");
  expect_dim(B, 0, A.shape(0), "B");
  return {A.data(), B.data(), A.shape(0), A.shape(1), A.shape(2), B.shape(1), B.shape(2)};
}

// The factors from A (R, m1, n1) and Bt (R, n2, m2), B transposed, checked.
template <class T>
lpfast::KronFactors<T> checked_factors_bt(const CArray<T>& A, const CArray<T>& Bt) {
  expect_ndim(A, 3, "A");
  expect_ndim(Bt, 3, "Bt");
  expect_dim(Bt, 0, A.shape(0), "Bt");
  return {A.data(), nullptr, A.shape(0), A.shape(1), A.shape(2), Bt.shape(2), Bt.shape(1),
          Bt.data()};
}

// x (N, n1*n2) in, out (N, m1*m2) and bias (m1*m2,) of a product with kp, checked.
template <class T>
void check_product_io(const lpfast::KronFactors<T>& kp, const CArray<T>& x,
                      const std::optional<CArray<T>>& bias, const CArray<T>& out) {
  expect_ndim(x, 2, "x");
  expect_ndim(out, 2, "out");
  expect_dim(x, 1, kp.cols(), "x");
  expect_dim(out, 0, x.shape(0), "out");
  expect_dim(out, 1, kp.rows(), "out");
  if (bias) {
    expect_ndim(*bias, 1, "bias");
    expect_dim(*bias, 0, kp.rows(), "bias");
  }
}

// out = x @ W.T (+ bias). The CSR arrays must already have passed check_csr (the Python
// layer checks once per operator, not per call); shapes are re-checked here because they
// are O(1) and guard every pointer below.
template <class T, class I>
void doped_kron_matmul_py(const CArray<T>& x, const CArray<T>& A, const CArray<T>& B,
                          std::optional<CArray<I>> indptr, std::optional<CArray<I>> indices,
                          std::optional<CArray<T>> data, std::optional<CArray<T>> bias,
                          CArray<T>& out, bool check_finite) {
  const lpfast::KronFactors<T> kp = checked_factors(A, B);
  check_product_io(kp, x, bias, out);
  if (check_finite) require_finite(x, "x");
  const std::int64_t batch = x.shape(0);
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

// The SELL layout of a checked CSR matrix (rows, cols), for doped_kron_matmul_sell:
// (slice_ptr int64, row_of int32, indices uint16 if cols <= 65536 else int32, data).
template <class J, class T, class I>
py::tuple sell_arrays(const lpfast::CsrView<T, I>& S) {
  const std::int64_t slices = lpfast::sell_slices(S.rows);
  py::array_t<std::int64_t> slice_ptr(slices + 1);
  py::array_t<std::int32_t> row_of(slices * lpfast::kSellC);
  std::int64_t* sp = slice_ptr.mutable_data();
  std::int32_t* ro = row_of.mutable_data();
  {
    py::gil_scoped_release release;  // raw buffers only, kept alive by this frame
    lpfast::sell_structure(S.indptr, S.rows, ro, sp);
  }
  py::array_t<J> indices(sp[slices]);
  py::array_t<T> data(sp[slices]);
  J* ip = indices.mutable_data();
  T* dp = data.mutable_data();
  {
    py::gil_scoped_release release;
    lpfast::sell_fill(S, ro, sp, ip, dp);
  }
  return py::make_tuple(slice_ptr, row_of, indices, data);
}

template <class T, class I>
py::tuple sell_layout_py(const CArray<I>& indptr, const CArray<I>& indices,
                         const CArray<T>& data, std::int64_t cols) {
  expect_ndim(indptr, 1, "indptr");
  expect_dim(data, 0, indices.shape(0), "data");
  const lpfast::CsrView<T, I> S{indptr.data(), indices.data(), data.data(),
                                indptr.shape(0) - 1, cols};
  if (S.rows < 0 || S.nnz() != indices.shape(0)) throw std::invalid_argument("S: indptr[-1] != nnz");
  return cols <= 65536 ? sell_arrays<std::uint16_t>(S) : sell_arrays<std::int32_t>(S);
}

// The batch-1 serving path of a prepared operator: its arrays (B transposed, S in the SELL
// layout made by sell_layout, whose contents are trusted: the Python layer keeps them
// private and read-only) are checked and viewed once here, and kept alive by this object;
// a call then converts only x and out (10 array arguments per call cost ~1 us more).
// Immutable after construction, so concurrent calls are safe.
template <class T, class J>
class SellKernel {
 public:
  SellKernel(CArray<T> A, CArray<T> Bt, CArray<std::int64_t> slice_ptr,
             CArray<std::int32_t> row_of, CArray<J> indices, CArray<T> data,
             std::optional<CArray<T>> bias)
      : A_(std::move(A)), Bt_(std::move(Bt)), slice_ptr_(std::move(slice_ptr)),
        row_of_(std::move(row_of)), indices_(std::move(indices)), data_(std::move(data)),
        bias_(std::move(bias)), kp_(checked_factors_bt(A_, Bt_)) {
    const std::int64_t slices = lpfast::sell_slices(kp_.rows());
    expect_dim(slice_ptr_, 0, slices + 1, "S.slice_ptr");
    expect_dim(row_of_, 0, slices * lpfast::kSellC, "S.row_of");
    expect_dim(indices_, 0, slice_ptr_.at(slices), "S.indices");
    expect_dim(data_, 0, slice_ptr_.at(slices), "S.data");
    if (bias_) {
      expect_ndim(*bias_, 1, "bias");
      expect_dim(*bias_, 0, kp_.rows(), "bias");
    }
    S_ = {slice_ptr_.data(), row_of_.data(), indices_.data(), data_.data(), kp_.rows(),
          kp_.cols(), slices};
  }

  // out = x @ W.T (+ bias) for x (N, n1*n2), out (N, m1*m2).
  void operator()(const CArray<T>& x, CArray<T>& out, bool check_finite) const {
    check_product_io(kp_, x, bias_, out);
    if (check_finite) require_finite(x, "x");
    const std::int64_t batch = x.shape(0);
    const T* bias_ptr = bias_ ? bias_->data() : nullptr;
    T* y = out.mutable_data();
    const T* xp = x.data();
    py::gil_scoped_release release;  // raw buffers only, kept alive by the caller and this
    lpfast::doped_kron_matmul(xp, batch, kp_, S_, bias_ptr, y);
  }

 private:
  CArray<T> A_, Bt_;
  CArray<std::int64_t> slice_ptr_;
  CArray<std::int32_t> row_of_;
  CArray<J> indices_;
  CArray<T> data_;
  std::optional<CArray<T>> bias_;
  lpfast::KronFactors<T> kp_;
  lpfast::SellView<T, J> S_;
};

// dA, dB (rank, ., .) = gradients of x @ (sum_r kron(A_r, B_r)).T for upstream dy.
template <class T>
void kron_factor_grads_py(const CArray<T>& x, const CArray<T>& dy, const CArray<T>& A,
                          const CArray<T>& B, CArray<T>& dA, CArray<T>& dB) {
  const lpfast::KronFactors<T> kp = checked_factors(A, B);
  expect_ndim(x, 2, "x");
  expect_ndim(dy, 2, "dy");
  expect_dim(x, 1, kp.cols(), "x");
  expect_dim(dy, 0, x.shape(0), "dy");
  expect_dim(dy, 1, kp.rows(), "dy");
  for (py::ssize_t axis = 0; axis < 3; ++axis) {
    expect_dim(dA, axis, A.shape(axis), "dA");
    expect_dim(dB, axis, B.shape(axis), "dB");
  }
  const std::int64_t batch = x.shape(0);
  const T *xp = x.data(), *dyp = dy.data();
  T *dap = dA.mutable_data(), *dbp = dB.mutable_data();
  py::gil_scoped_release release;  // raw buffers only, kept alive by this frame
  lpfast::kron_factor_grads(xp, dyp, batch, kp, dap, dbp);
}

// out[k] = sum_b dy[b, row_k] * x[b, col_k] on a CSR pattern that passed check_csr.
template <class T, class I>
void csr_sampled_product_py(const CArray<T>& dy, const CArray<T>& x, const CArray<I>& indptr,
                            const CArray<I>& indices, CArray<T>& out) {
  expect_ndim(dy, 2, "dy");
  expect_ndim(x, 2, "x");
  expect_dim(x, 0, dy.shape(0), "x");
  expect_dim(indptr, 0, dy.shape(1) + 1, "indptr");
  expect_dim(out, 0, indices.shape(0), "out");
  const lpfast::CsrView<T, I> pattern{indptr.data(), indices.data(), nullptr, dy.shape(1),
                                      x.shape(1)};
  if (pattern.nnz() != indices.shape(0)) throw std::invalid_argument("S: indptr[-1] != nnz");
  const std::int64_t batch = dy.shape(0);
  const T *dyp = dy.data(), *xp = x.data();
  T* o = out.mutable_data();
  py::gil_scoped_release release;  // raw buffers only, kept alive by this frame
  lpfast::csr_sampled_product(dyp, xp, batch, pattern, o);
}

template <class T, class I>
void def_matmul(py::module_& m) {
  m.def("csr_sampled_product", &csr_sampled_product_py<T, I>, py::arg("dy").noconvert(),
        py::arg("x").noconvert(), py::arg("indptr").noconvert(), py::arg("indices").noconvert(),
        py::arg("out").noconvert());
  m.def("doped_kron_matmul", &doped_kron_matmul_py<T, I>, py::arg("x").noconvert(),
        py::arg("A").noconvert(), py::arg("B").noconvert(), py::arg("indptr").noconvert(),
        py::arg("indices").noconvert(), py::arg("data").noconvert(),
        py::arg("bias").noconvert(), py::arg("out").noconvert(), py::arg("check_finite") = false,
        "out = x @ (sum_r kron(A[r], B[r]) + S).T + bias. x: (N, n1*n2), A: (R, m1, n1), "
        "B: (R, m2, n2), out: (N, m1*m2). S (CSR arrays) must have passed check_csr. "
        "check_finite: refuse NaN/Inf in x (ValueError).");
  m.def("sell_layout", &sell_layout_py<T, I>, py::arg("indptr").noconvert(),
        py::arg("indices").noconvert(), py::arg("data").noconvert(), py::arg("cols"),
        "(slice_ptr, row_of, indices, data): the SELL-16 layout of a checked CSR matrix.");
}

template <class T, class J>
void def_sell_kernel(py::module_& m, const char* name) {
  using Kernel = SellKernel<T, J>;
  py::class_<Kernel>(m, name, "Batch-1 serving kernel of a prepared doped Kronecker operator.")
      .def("__call__", &Kernel::operator(), py::arg("x").noconvert(), py::arg("out").noconvert(),
           py::arg("check_finite"),
           "out = x @ W.T (+ bias). x: (N, n1*n2), out: (N, m1*m2), C-contiguous; "
           "check_finite: refuse NaN/Inf in x (ValueError).");
  m.def(
      "sell_kernel",
      [](CArray<T> A, CArray<T> Bt, CArray<std::int64_t> slice_ptr, CArray<std::int32_t> row_of,
         CArray<J> indices, CArray<T> data, std::optional<CArray<T>> bias) {
        return Kernel(std::move(A), std::move(Bt), std::move(slice_ptr), std::move(row_of),
                      std::move(indices), std::move(data), std::move(bias));
      },
      py::arg("A").noconvert(), py::arg("Bt").noconvert(), py::arg("slice_ptr").noconvert(),
      py::arg("row_of").noconvert(), py::arg("indices").noconvert(),
      py::arg("data").noconvert(), py::arg("bias").noconvert(),
      "A kernel computing x @ W.T (+ bias) for W = sum_r kron(A[r], B[r]) + S with B given "
      "transposed (Bt: (R, n2, m2)) and S in the layout returned by sell_layout; it keeps "
      "references to these arrays.");
}

}  // namespace

void bind_kron(py::module_& m) {
  m.def("check_csr", &check_csr_py<std::int32_t>, py::arg("indptr").noconvert(),
        py::arg("indices").noconvert(), py::arg("rows"), py::arg("cols"), py::arg("name") = "S");
  m.def("check_csr", &check_csr_py<std::int64_t>, py::arg("indptr").noconvert(),
        py::arg("indices").noconvert(), py::arg("rows"), py::arg("cols"), py::arg("name") = "S",
        "Raise ValueError unless (indptr, indices) form a valid CSR pattern of shape (rows, cols).");
  m.def("kron_factor_grads", &kron_factor_grads_py<float>, py::arg("x").noconvert(),
        py::arg("dy").noconvert(), py::arg("A").noconvert(), py::arg("B").noconvert(),
        py::arg("dA").noconvert(), py::arg("dB").noconvert());
  m.def("kron_factor_grads", &kron_factor_grads_py<double>, py::arg("x").noconvert(),
        py::arg("dy").noconvert(), py::arg("A").noconvert(), py::arg("B").noconvert(),
        py::arg("dA").noconvert(), py::arg("dB").noconvert());
  def_matmul<float, std::int32_t>(m);
  def_matmul<float, std::int64_t>(m);
  def_matmul<double, std::int32_t>(m);
  def_matmul<double, std::int64_t>(m);
  def_sell_kernel<float, std::uint16_t>(m, "SellKernelF32U16");
  def_sell_kernel<float, std::int32_t>(m, "SellKernelF32I32");
  def_sell_kernel<double, std::uint16_t>(m, "SellKernelF64U16");
  def_sell_kernel<double, std::int32_t>(m, "SellKernelF64I32");
}
