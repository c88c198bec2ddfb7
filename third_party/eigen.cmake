# Eigen 3.4 reaches the build from a pinned registry package, never from committed source:
#   1. PyPI's cmeel-eigen (pinned in pyproject.toml's build-system.requires). In pip's
#      isolated build, scikit-build-core puts the build environment's site-packages on
#      CMAKE_PREFIX_PATH; cmeel installs its CMake config under <site-packages>/cmeel.prefix.
#   2. A system Eigen (Debian's libeigen3-dev) when building without build isolation.
set(_lpfast_eigen_hints "")
foreach(_prefix IN LISTS CMAKE_PREFIX_PATH)
  list(APPEND _lpfast_eigen_hints "${_prefix}/cmeel.prefix")
endforeach()
# Non-isolated builds (pip install --no-build-isolation): ask the running Python.
if(Python_EXECUTABLE)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    OUTPUT_VARIABLE _lpfast_purelib OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(_lpfast_purelib)
    list(APPEND _lpfast_eigen_hints "${_lpfast_purelib}/cmeel.prefix")
  endif()
endif()
find_package(Eigen3 3.4 CONFIG REQUIRED PATHS ${_lpfast_eigen_hints})
message(STATUS "lpfast: Eigen ${Eigen3_VERSION} from ${Eigen3_DIR}")
