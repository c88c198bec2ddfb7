#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "array.hpp"
#include "lpfast/doped_lstm.hpp"

namespace py = pybind11;
using lpfast_bind::CArray;
using lpfast_bind::expect_dim;
using lpfast_bind::expect_ndim;
using lpfast_bind::require_finite;

namespace {

// obj as a C-contiguous array of exactly T (no conversion: the Python layer converts once).
template <class T>
CArray<T> exact(const py::handle& obj, const std::string& name) {
  if (!py::isinstance<CArray<T>>(obj)) {
    throw py::type_error(name + ": expected a C-contiguous " +
                         py::str(py::dtype::of<T>()).cast<std::string>() + " array");
  }
  return py::reinterpret_borrow<CArray<T>>(obj);
}

// The compiled doped LSTM over arrays it keeps alive: per layer a tuple
// (A_ih, B_ih, S_ih, A_hh, B_hh, S_hh, bias) with S a tuple (indptr int32, indices int32,
// data) or None and bias an array or None. Immutable, so concurrent calls are safe.
template <class T>
class LstmKernel {
 public:
  explicit LstmKernel(const py::sequence& layers) {
    std::vector<lpfast::DopedLstmLayer<T>> views;
    for (std::size_t l = 0; l < layers.size(); ++l) {
      const std::string at = "layers[" + std::to_string(l) + "]";
      const auto item = layers[l].cast<py::tuple>();
      if (item.size() != 7) throw std::invalid_argument(at + ": expected 7 entries");
      lpfast::DopedLstmLayer<T> layer;
      layer.ih = gate(item[0], item[1], item[2], at + ".ih");
      layer.hh = gate(item[3], item[4], item[5], at + ".hh");
      if (!item[6].is_none()) {
        auto bias = keep(exact<T>(item[6], at + ".bias"));
        expect_ndim(bias, 1, "bias");
        if (bias.shape(0) != layer.hh.kp.rows())
          throw std::invalid_argument(at + ".bias: expected " +
                                      std::to_string(layer.hh.kp.rows()) + " entries");
        layer.bias = bias.data();
      }
      views.push_back(layer);
    }
    py::gil_scoped_release release;  // raw buffers only, kept alive by keep_
    lstm_ = std::make_unique<lpfast::DopedLstm<T>>(views);
  }

  // x (batch, input), h and c (num_layers, batch, H) in; y (batch, H), h_out, c_out out.
  void step(const CArray<T>& x, const CArray<T>& h, const CArray<T>& c, CArray<T>& y,
            CArray<T>& h_out, CArray<T>& c_out, bool check_finite) const {
    expect_ndim(x, 2, "x");
    expect_dim(x, 1, lstm_->input_size(), "x");
    const std::int64_t batch = x.shape(0);
    check_state(h, batch, "h");
    check_state(c, batch, "c");
    check_state(h_out, batch, "h_out");
    check_state(c_out, batch, "c_out");
    expect_ndim(y, 2, "y");
    expect_dim(y, 0, batch, "y");
    expect_dim(y, 1, lstm_->hidden_size(), "y");
    if (check_finite) {
      require_finite(x, "x");
      require_finite(h, "h");
      require_finite(c, "c");
    }
    const T *xp = x.data(), *hp = h.data(), *cp = c.data();
    T *yp = y.mutable_data(), *hop = h_out.mutable_data(), *cop = c_out.mutable_data();
    py::gil_scoped_release release;  // raw buffers only, kept alive by the caller's frame
    lstm_->step(xp, batch, hp, cp, yp, hop, cop);
  }

  // xs (batch, steps, input); h0, c0 (num_layers, batch, H) or None for zeros;
  // ys (batch, steps, H), h_n, c_n (num_layers, batch, H) out.
  void sequence(const CArray<T>& xs, const std::optional<CArray<T>>& h0,
                const std::optional<CArray<T>>& c0, CArray<T>& ys, CArray<T>& h_n,
                CArray<T>& c_n, bool check_finite) const {
    expect_ndim(xs, 3, "xs");
    expect_dim(xs, 2, lstm_->input_size(), "xs");
    const std::int64_t batch = xs.shape(0), steps = xs.shape(1);
    if (h0) check_state(*h0, batch, "h");
    if (c0) check_state(*c0, batch, "c");
    check_state(h_n, batch, "h_n");
    check_state(c_n, batch, "c_n");
    expect_ndim(ys, 3, "ys");
    expect_dim(ys, 0, batch, "ys");
    expect_dim(ys, 1, steps, "ys");
    expect_dim(ys, 2, lstm_->hidden_size(), "ys");
    if (check_finite) {
      require_finite(xs, "xs");
      if (h0) require_finite(*h0, "h");
      if (c0) require_finite(*c0, "c");
    }
    const T* xp = xs.data();
    const T* hp = h0 ? h0->data() : nullptr;
    const T* cp = c0 ? c0->data() : nullptr;
    T *yp = ys.mutable_data(), *hnp = h_n.mutable_data(), *cnp = c_n.mutable_data();
    py::gil_scoped_release release;  // raw buffers only, kept alive by the caller's frame
    lstm_->sequence(xp, batch, steps, hp, cp, yp, hnp, cnp);
  }

  std::int64_t num_layers() const { return lstm_->num_layers(); }
  std::int64_t input_size() const { return lstm_->input_size(); }
  std::int64_t hidden_size() const { return lstm_->hidden_size(); }
  std::int64_t nbytes() const { return lstm_->nbytes(); }

 private:
  template <class A>
  A keep(A a) {
    keep_.push_back(a);
    return a;
  }

  lpfast::DopedGateMatrix<T> gate(const py::handle& A_obj, const py::handle& B_obj,
                                  const py::handle& S_obj, const std::string& name) {
    auto A = keep(exact<T>(A_obj, name + ".A"));
    auto B = keep(exact<T>(B_obj, name + ".B"));
    expect_ndim(A, 3, "A");
    expect_ndim(B, 3, "B");
    expect_dim(B, 0, A.shape(0), "B");
    lpfast::DopedGateMatrix<T> g;
    g.kp = {A.data(), B.data(), A.shape(0), A.shape(1), A.shape(2), B.shape(1), B.shape(2)};
    if (!S_obj.is_none()) {
      const auto S = S_obj.cast<py::tuple>();
      if (S.size() != 3) throw std::invalid_argument(name + ".S: expected (indptr, indices, data)");
      auto indptr = keep(exact<std::int32_t>(S[0], name + ".S.indptr"));
      auto indices = keep(exact<std::int32_t>(S[1], name + ".S.indices"));
      auto data = keep(exact<T>(S[2], name + ".S.data"));
      expect_ndim(indptr, 1, "S.indptr");
      expect_ndim(indices, 1, "S.indices");
      expect_ndim(data, 1, "S.data");
      expect_dim(indptr, 0, g.kp.rows() + 1, "S.indptr");
      expect_dim(data, 0, indices.shape(0), "S.data");
      if (indptr.at(g.kp.rows()) != indices.shape(0))
        throw std::invalid_argument(name + ".S: indptr[-1] != nnz");
      g.S = {indptr.data(), indices.data(), data.data(), g.kp.rows(), g.kp.cols()};
    }
    return g;
  }

  void check_state(const CArray<T>& s, std::int64_t batch, const char* name) const {
    expect_ndim(s, 3, name);
    expect_dim(s, 0, lstm_->num_layers(), name);
    expect_dim(s, 1, batch, name);
    expect_dim(s, 2, lstm_->hidden_size(), name);
  }

  std::vector<py::object> keep_;
  std::unique_ptr<lpfast::DopedLstm<T>> lstm_;
};

template <class T>
void def_lstm(py::module_& m, const char* name) {
  using K = LstmKernel<T>;
  py::class_<K>(m, name, "Compiled doped-Kronecker LSTM stack (see lpfast.DopedLSTMRuntime).")
      .def(py::init<const py::sequence&>(), py::arg("layers"),
           "layers: per layer (A_ih, B_ih, S_ih, A_hh, B_hh, S_hh, bias), S = (indptr int32, "
           "indices int32, data) or None, bias or None; keeps references to the arrays.")
      .def("step", &K::step, py::arg("x").noconvert(), py::arg("h").noconvert(),
           py::arg("c").noconvert(), py::arg("y").noconvert(), py::arg("h_out").noconvert(),
           py::arg("c_out").noconvert(), py::arg("check_finite"),
           "One step: x (batch, input), h, c (layers, batch, H) -> y (batch, H), h_out, c_out.")
      .def("sequence", &K::sequence, py::arg("xs").noconvert(), py::arg("h0").noconvert(),
           py::arg("c0").noconvert(), py::arg("ys").noconvert(), py::arg("h_n").noconvert(),
           py::arg("c_n").noconvert(), py::arg("check_finite"),
           "xs (batch, steps, input), h0, c0 (layers, batch, H) or None -> ys (batch, steps, "
           "H), h_n, c_n.")
      .def_property_readonly("num_layers", &K::num_layers)
      .def_property_readonly("input_size", &K::input_size)
      .def_property_readonly("hidden_size", &K::hidden_size)
      .def_property_readonly("nbytes", &K::nbytes, "Bytes of the kernel's own layouts (B^T, SELL).");
}

}  // namespace

void bind_lstm(py::module_& m) {
  def_lstm<float>(m, "DopedLstmF32");
  def_lstm<double>(m, "DopedLstmF64");
}
