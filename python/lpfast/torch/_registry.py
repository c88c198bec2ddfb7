"""The registry of compression methods (internal): what ``{"method": NAME}`` in a
:func:`lpfast.torch.compress` rule calls, and the progress callable of the running call.
"""

from __future__ import annotations

import contextvars
from typing import Any, Callable, Mapping, Optional

from torch import nn

__all__ = ["METHODS", "PROGRESS", "Method", "register_method"]

#: A compression method: ``fn(name, module, spec) -> new module``. ``spec`` is the rule's
#: dict (``"method"`` included); the function raises ValueError/TypeError naming the option.
Method = Callable[[str, nn.Module, Mapping[str, Any]], nn.Module]

METHODS: dict[str, Method] = {}

#: The progress callable of the running :func:`compress` call (methods may report through it).
PROGRESS: contextvars.ContextVar[Optional[Callable[[str], Any]]] = contextvars.ContextVar(
    "lpfast_compress_progress", default=None)


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
