// Shared glue for the bindings: typed C-contiguous array arguments and shape checks.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "lpfast/finite.hpp"

namespace lpfast_bind {

namespace py = pybind11;

// Bound with .noconvert(): a wrong dtype or a non-contiguous array fails instead of being
// copied silently. The Python layer makes the one explicit conversion.
template <class T>
using CArray = py::array_t<T, py::array::c_style>;

template <class T>
void expect_ndim(const CArray<T>& a, py::ssize_t ndim, const char* name) {
  if (a.ndim() != ndim) {
    throw std::invalid_argument(std::string(name) + ": expected " + std::to_string(ndim) +
                                "-d array, got " + std::to_string(a.ndim()) + "-d");
  }
}

template <class T>
void expect_dim(const CArray<T>& a, py::ssize_t axis, py::ssize_t size, const char* name) {
  if (a.shape(axis) != size) {
    throw std::invalid_argument(std::string(name) + ": axis " + std::to_string(axis) +
                                " has length " + std::to_string(a.shape(axis)) + ", expected " +
                                std::to_string(size));
  }
}

// The Python layer's message for a non-finite input, raised as ValueError.
template <class T>
void require_finite(const CArray<T>& a, const char* name) {
  if (!lpfast::all_finite(a.data(), static_cast<std::int64_t>(a.size()))) {
    throw std::invalid_argument(std::string(name) +
                                ": contains NaN or Inf (pass check_finite=False to skip this check)");
  }
}

}  // namespace lpfast_bind
