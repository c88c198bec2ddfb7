# Compile flags shared by the Python module (CMakeLists.txt) and the C++-only tests
# (cpp/tests/CMakeLists.txt): Eigen, Eigen's own threading off, -march=native behind
# LPFAST_NATIVE, OpenMP when found (else `omp simd` loops still vectorize).
function(lpfast_configure_target target)
  target_include_directories(${target} PRIVATE ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/../include)
  target_link_libraries(${target} PRIVATE Eigen3::Eigen)
  # Kernels split their own GEMMs across threads: Eigen's internal GEMM threading spin-waits
  # between threads and stalled for milliseconds whenever the other core was busy.
  target_compile_definitions(${target} PRIVATE EIGEN_NO_DEBUG EIGEN_DONT_PARALLELIZE
    # Always the packed GEMM path, whose summation order does not depend on buffer alignment
    # (Eigen's small-product path peels to alignment, so results varied in the last bit).
    EIGEN_GEMM_TO_COEFFBASED_THRESHOLD=0)
  if(LPFAST_NATIVE)
    include(CheckCXXCompilerFlag)
    check_cxx_compiler_flag(-march=native LPFAST_HAS_MARCH_NATIVE)
    if(LPFAST_HAS_MARCH_NATIVE)
      target_compile_options(${target} PRIVATE -march=native)
    endif()
  endif()
  set(_openmp OFF)
  if(LPFAST_OPENMP)
    find_package(OpenMP COMPONENTS CXX)
    if(OpenMP_CXX_FOUND)
      target_link_libraries(${target} PRIVATE OpenMP::OpenMP_CXX)
      target_compile_definitions(${target} PRIVATE LPFAST_HAVE_OPENMP=1)
      set(_openmp ON)
    endif()
  endif()
  if(NOT _openmp)
    include(CheckCXXCompilerFlag)
    check_cxx_compiler_flag(-fopenmp-simd LPFAST_HAS_OPENMP_SIMD)
    if(LPFAST_HAS_OPENMP_SIMD)
      target_compile_options(${target} PRIVATE -fopenmp-simd)
    endif()
  endif()
  message(STATUS "lpfast: ${target}: native=${LPFAST_NATIVE} openmp=${_openmp}")
endfunction()
