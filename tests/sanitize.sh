#!/usr/bin/env bash
# ASan + UBSan run of the compiled kernels: builds _core and the C++-only test program
# (cpp/tests) with -fsanitize=address,undefined into build/sanitize/, then runs the C++
# program and the kernel tests (tests/ without tests/torch and the CLI, README and cpp_core tests:
# torch's own libraries are not instrumented and take minutes to import under ASan; the
# CLI and README tests spawn more interpreters; cpp_core is the C++ program, run directly
# here). Exits non-zero if a build or a test fails or any sanitizer report was written.
#
#   bash tests/sanitize.sh                 # from the repository root; ~20-40 min on 2 cores
#   bash tests/sanitize.sh -k lewis        # extra arguments go to pytest
#
# The instrumented _core is loaded from a copy of python/ under build/sanitize/, so the
# checkout's own (uninstrumented) build is left alone. Python itself is not instrumented:
# libasan is preloaded, and leak detection is off because the interpreter never frees
# everything at exit.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="$root/build/sanitize"
logs="$out/logs"
jobs="${LPFAST_SANITIZE_JOBS:-2}"
rm -rf "$logs" "$out/python"
mkdir -p "$logs"

flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=address -g"
common=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DLPFAST_NATIVE=ON
        -DCMAKE_INTERPROCEDURAL_OPTIMIZATION=OFF
        "-DCMAKE_CXX_FLAGS=$flags"
        "-DCMAKE_SHARED_LINKER_FLAGS=-fsanitize=address,undefined"
        "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined"
        "-DPython_EXECUTABLE=$(command -v python)")

echo "== building _core with ASan+UBSan into $out/core"
cmake -S . -B "$out/core" -G Ninja -DSKBUILD_PROJECT_NAME=lpfast -DSKBUILD_PROJECT_VERSION=0.1.0 \
  -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" "${common[@]}" >"$logs/../core-configure.log"
cmake --build "$out/core" -j"$jobs" >"$logs/../core-build.log"
echo "== building the C++ test program with ASan+UBSan into $out/cpp-tests"
cmake -S cpp/tests -B "$out/cpp-tests" "${common[@]}" >"$logs/../cpp-configure.log"
cmake --build "$out/cpp-tests" -j"$jobs" >"$logs/../cpp-build.log"

cp -r python "$out/python"
rm -f "$out"/python/lpfast/_core*.so
cp "$out"/core/_core*.so "$out/python/lpfast/"

# Each report goes to its own file (log_path.<pid>): a report in a child process or after
# pytest caught the failure still fails this script. UBSan keeps going after a report, so
# one run lists them all; ASan stops the process at its first report.
export ASAN_OPTIONS="detect_leaks=0:log_path=$logs/asan:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="print_stacktrace=1:log_path=$logs/ubsan"

status=0
echo "== C++ test program"
(cd "$out/cpp-tests" && ctest --output-on-failure) || status=1

echo "== kernel tests under ASan+UBSan"
# libstdc++ is preloaded beside libasan: loaded later (with _core), its __cxa_throw is not
# found by ASan's interceptor, which then aborts at the first C++ exception
# ("CHECK failed: ... real___cxa_throw != 0").
asan_lib="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
env LD_PRELOAD="$asan_lib" PYTHONMALLOC=malloc PYTHONPATH="$out/python" LPFAST_SANITIZE=1 \
  python -m pytest -q -p no:cacheprovider -o addopts="" \
    --ignore=tests/torch --ignore-glob="tests/test_torch_*" --ignore=tests/test_cli.py \
    --ignore=tests/test_readme.py --ignore=tests/test_cpp_core.py \
    -W "ignore:Sparse CSR tensor support is in beta" \
    tests "$@" || status=1

# Reports from any process (the C++ program, pytest, subprocesses).
if compgen -G "$logs/*" >/dev/null; then
  echo "== sanitizer reports:"
  for f in "$logs"/*; do echo "--- $f"; cat "$f"; done
  status=1
fi
if [ "$status" -eq 0 ]; then
  echo "sanitize: clean (no ASan/UBSan report, all tests passed)"
else
  echo "sanitize: FAILED (see above; logs in $logs)"
fi
exit "$status"
