#include <pybind11/pybind11.h>

#include "lpfast/parallel.hpp"

namespace py = pybind11;

void bind_parallel(py::module_& m) {
  m.def("has_openmp", &lpfast::has_openmp, "Whether the extension was compiled with OpenMP.");
  m.def("get_num_threads", &lpfast::get_num_threads,
        "Threads a parallel kernel uses: set_num_threads(n), else OMP_NUM_THREADS, else all cores.");
  m.def("set_num_threads", &lpfast::set_num_threads, py::arg("n"),
        "Set the thread count for all later calls, from any Python thread; n <= 0 restores the default.");
}
