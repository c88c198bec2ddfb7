// What the C++ test programs share: the check that counts failures, the tolerance of a
// length-n sum, and test points. One anonymous namespace per test program (each is one
// translation unit).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>

#include "lpfast/rng.hpp"
#include "lpfast/types.hpp"

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

template <class T>
const char* name() {
  return sizeof(T) == 4 ? "float" : "double";
}

// Relative accuracy expected of a T computation of length-n sums.
template <class T>
double tol(double n) {
  return 8.0 * std::sqrt(n) * std::numeric_limits<T>::epsilon();
}

// n x d points with a decaying spectrum (so top eigenvalues are separated).
template <class T>
lpfast::RowMat<T> points(std::int64_t n, std::int64_t d, lpfast::Rng& rng) {
  lpfast::RowMat<T> X(n, d);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t t = 0; t < d; ++t)
      X(i, t) = static_cast<T>(rng.normal() / std::sqrt(1.0 + t));
  return X;
}

}  // namespace
