// Lewis weights: argument checks, dtype dispatch and GIL release around lpfast::lewis_weights.
#include <cstdint>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "array.hpp"
#include "lpfast/lewis.hpp"

namespace py = pybind11;
using lpfast_bind::CArray;
using lpfast_bind::expect_dim;
using lpfast_bind::expect_ndim;

namespace {

template <class T>
py::dict lewis_weights_py(const CArray<T>& X, double p, double tol, int max_iter, bool sketch,
                          std::uint64_t seed, CArray<T>& out) {
  expect_ndim(X, 2, "X");
  expect_ndim(out, 1, "out");
  expect_dim(out, 0, X.shape(0), "out");
  lpfast::LewisOptions opt;
  opt.p = p;
  opt.tol = tol;
  opt.max_iter = max_iter;
  opt.sketch = sketch;
  opt.seed = seed;
  const T* x = X.data();
  T* w = out.mutable_data();
  const std::int64_t n = X.shape(0), d = X.shape(1);
  lpfast::LewisInfo info;
  {
    // Safe without the GIL: only raw buffers are touched, and the arrays stay alive because
    // this frame holds references to them.
    py::gil_scoped_release release;
    info = lpfast::lewis_weights(x, n, d, opt, w);
  }
  py::dict d_info;
  d_info["iterations"] = info.iterations;
  d_info["max_change"] = info.max_change;
  d_info["rank"] = info.rank;
  d_info["converged"] = info.converged;
  d_info["sketched"] = info.sketched;
  return d_info;
}

template <class T>
void def_lewis(py::module_& m) {
  m.def("lewis_weights", &lewis_weights_py<T>, py::arg("X").noconvert(), py::arg("p"),
        py::arg("tol"), py::arg("max_iter"), py::arg("sketch"), py::arg("seed"),
        py::arg("out").noconvert(),
        "Write the lp Lewis weights of X (n, d) into out (n,); returns a dict with "
        "iterations, max_change, rank, converged, sketched. Arguments must be validated.");
}

}  // namespace

void bind_lewis(py::module_& m) {
  def_lewis<float>(m);
  def_lewis<double>(m);
  m.attr("lewis_sketch_min_rows_per_column") = lpfast::lewis_sketch_min_rows(1);
}
