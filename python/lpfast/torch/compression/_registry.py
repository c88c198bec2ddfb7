"""The registry of compression methods (internal): what ``{"method": NAME}`` in a
:func:`lpfast.torch.compress` rule calls, and what the running call hands its methods
besides the rule (progress callable, calibration statistics, latency timer): context
variables, so a registered ``fn(name, module, spec)`` keeps its three arguments.
"""

from __future__ import annotations

import contextvars
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional

from torch import nn

__all__ = ["METHODS", "PROGRESS", "STATS", "TIMER", "Method", "register_method"]

#: A compression method: ``fn(name, module, spec) -> new module``. ``spec`` is the rule's
#: dict (``"method"`` included); the function raises ValueError/TypeError naming the option.
Method = Callable[[str, nn.Module, Mapping[str, Any]], nn.Module]

METHODS: dict[str, Method] = {}

#: The progress callable of the running :func:`compress` call (methods may report through it).
PROGRESS: contextvars.ContextVar[Optional[Callable[[str], Any]]] = contextvars.ContextVar(
    "lpfast_compress_progress", default=None)

#: The running call's calibration statistics, name -> ``_stats.InputStats`` (empty: none).
STATS: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "lpfast_compress_stats", default=MappingProxyType({}))

#: The running call's latency timer ``timer(layers, x) -> seconds per call of each``
#: (None: :func:`lpfast.torch._timing.interleaved_latency`).
TIMER: contextvars.ContextVar[Optional[Callable[..., Any]]] = contextvars.ContextVar(
    "lpfast_compress_timer", default=None)


def register_method(name: str, fn: Method, *, replace: bool = False) -> None:
    """Make ``fn`` available as ``{"method": name}`` in :func:`compress` rules.

    Parameters
    ----------
    name : str
    fn : callable(name: str, module: nn.Module, spec: Mapping) -> nn.Module
        Builds the replacement of ``module`` (the module called ``name`` in the model)
        from the rule ``spec``. The report's numbers are measured on what it returns.
    replace : bool
        Allow overriding a registered method.
    """
    if not isinstance(name, str) or not name:
        msg = f"name: expected a non-empty str, got {name!r}"
        raise TypeError(msg)
    if not callable(fn):
        msg = f"fn: expected a callable(name, module, spec), got {type(fn).__name__}"
        raise TypeError(msg)
    if name in METHODS and not replace:
        msg = f"name: method {name!r} is already registered (pass replace=True)"
        raise ValueError(msg)
    METHODS[name] = fn
