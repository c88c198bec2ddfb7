"""Thread pinning shared by the benchmarks: every competitor of a case runs on the thread
count the case states (lpfast's OpenMP team, NumPy's BLAS, torch when it is loaded)."""

from __future__ import annotations

import sys
from contextlib import ExitStack, contextmanager

import lpfast

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # optional: without it NumPy's BLAS keeps its default thread count
    threadpool_limits = None

HAVE_THREADPOOLCTL = threadpool_limits is not None


@contextmanager
def limit_threads(n: int):
    """Run lpfast, NumPy's BLAS, OpenMP runtimes and (if imported) torch on ``n`` threads."""
    with ExitStack() as stack:
        if threadpool_limits is not None:
            stack.enter_context(threadpool_limits(limits=n))
        lpfast.set_num_threads(n)
        stack.callback(lpfast.set_num_threads, None)
        torch = sys.modules.get("torch")
        if torch is not None:
            stack.callback(torch.set_num_threads, torch.get_num_threads())
            torch.set_num_threads(n)
        yield
