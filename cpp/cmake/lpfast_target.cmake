# lpfast::core, the header-only C++ core as a CMake target: its include directory, Eigen,
# and the definitions and flags its results depend on, all as INTERFACE properties, so that
# the Python module (CMakeLists.txt), the C++-only tests (cpp/tests/CMakeLists.txt) and a
# C++ user (add_subdirectory or include of this file, then
# target_link_libraries(app PRIVATE lpfast::core)) compile the kernels the same way.
# Needs Eigen3::Eigen (third_party/eigen.cmake) and the options LPFAST_NATIVE and
# LPFAST_OPENMP (both default ON when not set).
if(TARGET lpfast_core)
  return()
endif()

add_library(lpfast_core INTERFACE)
add_library(lpfast::core ALIAS lpfast_core)
target_include_directories(lpfast_core INTERFACE
  $<BUILD_INTERFACE:${CMAKE_CURRENT_LIST_DIR}/../include>)
target_compile_features(lpfast_core INTERFACE cxx_std_17)
target_link_libraries(lpfast_core INTERFACE Eigen3::Eigen)
# Kernels split their own GEMMs across threads: Eigen's internal GEMM threading spin-waits
# between threads and stalled for milliseconds whenever the other core was busy.
target_compile_definitions(lpfast_core INTERFACE EIGEN_DONT_PARALLELIZE
  # Always the packed GEMM path, whose summation order does not depend on buffer alignment
  # (Eigen's small-product path peels to alignment, so results varied in the last bit).
  EIGEN_GEMM_TO_COEFFBASED_THRESHOLD=0)

if(NOT DEFINED LPFAST_NATIVE)
  set(LPFAST_NATIVE ON)
endif()
if(NOT DEFINED LPFAST_OPENMP)
  set(LPFAST_OPENMP ON)
endif()

# The kernels pick their SIMD code (simd.hpp) from the target ISA's macros, so the ISA is
# part of what a consumer compiles: the build machine's with LPFAST_NATIVE.
include(CheckCXXCompilerFlag)
if(LPFAST_NATIVE)
  check_cxx_compiler_flag(-march=native LPFAST_HAS_MARCH_NATIVE)
  if(LPFAST_HAS_MARCH_NATIVE)
    target_compile_options(lpfast_core INTERFACE -march=native)
  endif()
endif()

set(_lpfast_openmp OFF)
if(LPFAST_OPENMP)
  find_package(OpenMP COMPONENTS CXX)
  if(OpenMP_CXX_FOUND)
    target_link_libraries(lpfast_core INTERFACE OpenMP::OpenMP_CXX)
    target_compile_definitions(lpfast_core INTERFACE LPFAST_HAVE_OPENMP=1)
    set(_lpfast_openmp ON)
  endif()
endif()
if(NOT _lpfast_openmp)
  # Without OpenMP the kernels' `omp` pragmas are ignored; -fopenmp-simd accepts them quietly.
  check_cxx_compiler_flag(-fopenmp-simd LPFAST_HAS_OPENMP_SIMD)
  if(LPFAST_HAS_OPENMP_SIMD)
    target_compile_options(lpfast_core INTERFACE -fopenmp-simd)
  endif()
endif()
message(STATUS "lpfast::core: native=${LPFAST_NATIVE} openmp=${_lpfast_openmp}")
