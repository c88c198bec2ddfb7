// The extension module: each area registers itself from its own translation unit.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_parallel(py::module_& m);
void bind_embedding(py::module_& m);
void bind_kron(py::module_& m);
void bind_lewis(py::module_& m);
void bind_lstm(py::module_& m);
void bind_projective(py::module_& m);
void bind_subspace(py::module_& m);

PYBIND11_MODULE(_core, m) {
  m.doc() = "lpfast's compiled kernels (private: use the lpfast package, which validates).";
  bind_parallel(m);
  bind_embedding(m);
  bind_kron(m);
  bind_lewis(m);
  bind_lstm(m);
  bind_projective(m);
  bind_subspace(m);
}
