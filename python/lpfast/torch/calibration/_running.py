"""Running a model over calibration batches: shared by :mod:`.calibrate`, distillation and pruning.

Internal. A batch is what a data loader or a tokenizer hands out: a Tensor (one positional
argument), a tuple/list (positional arguments) or a mapping (keyword arguments, e.g. a
tokenizer's ``BatchEncoding``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import itertools
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Optional

import torch
from torch import nn

from ..._validate import as_int


class _HookError(Exception):
    """Raised inside a hook with a finished message: passed through run_batch unchanged."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def check_model(model: Any, name: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        msg = f"{name}: expected a torch.nn.Module, got {type(model).__name__}"
        raise TypeError(msg)
    return model


def batch_list(batches: Any, max_batches: Optional[int]) -> Iterator[Any]:
    """The first ``max_batches`` items of ``batches`` (all of them for None), lazily."""
    if isinstance(batches, (torch.Tensor, Mapping)) or not isinstance(batches, Iterable):
        msg = (f"batches: expected an iterable of batches (a list of Tensors, tuples or dicts), "
               f"got {type(batches).__name__}; wrap a single batch in a list")
        raise TypeError(msg)
    if max_batches is not None:
        max_batches = as_int(max_batches, "max_batches", low=1)
    return itertools.islice(iter(batches), max_batches)


def known_length(batches: Any, max_batches: Optional[int]) -> Optional[int]:
    """How many batches will run, when ``batches`` knows its length (for the progress bar)."""
    try:
        n = len(batches)
    except TypeError:
        return None
    return n if max_batches is None else min(n, max_batches)


def run_batch(model: nn.Module, batch: Any, index: int) -> Any:
    """``model(batch)``, ``model(*batch)`` or ``model(**batch)``; the model's own error is
    re-raised (same type where it can be built from a message) naming ``batches[index]``."""
    if isinstance(batch, torch.Tensor):
        args, kwargs = (batch,), {}
    elif isinstance(batch, (tuple, list)):
        args, kwargs = tuple(batch), {}
    elif isinstance(batch, Mapping):
        args, kwargs = (), dict(batch)
    else:
        msg = (f"batches[{index}]: expected a Tensor, a tuple/list of positional arguments or "
               f"a dict of keyword arguments, got {type(batch).__name__}")
        raise TypeError(msg)
    try:
        return model(*args, **kwargs)
    except _HookError as e:
        raise e.error from None
    except Exception as e:
        text = f"batches[{index}]: the model failed on this batch: {e}"
        try:
            new = type(e)(text)
        except Exception:  # an exception type that is not built from one message
            new = RuntimeError(f"{text} ({type(e).__name__})")
        raise new from e


def patterns_of(rules: Any) -> list[str]:
    """fnmatch patterns from ``"*"``, a list of patterns, a compress rules mapping (its keys)
    or an iterable of (pattern, spec) pairs."""
    if isinstance(rules, str):
        return [rules]
    if isinstance(rules, Mapping):
        items = list(rules.keys())
    elif isinstance(rules, Iterable):
        items = [r[0] if isinstance(r, (tuple, list)) and len(r) == 2 else r for r in rules]
    else:
        msg = f"rules: expected a pattern, a list of patterns or a compress rules mapping, got {type(rules).__name__}"
        raise TypeError(msg)
    if not items or not all(isinstance(p, str) for p in items):
        msg = f"rules: expected one or more str patterns, got {rules!r}"
        raise (ValueError if not items else TypeError)(msg)
    return items


def match_linears(model: nn.Module, rules: Any, strict: bool) -> dict[str, nn.Linear]:
    """The nn.Linear modules whose qualified names match a pattern, in model order.

    ``strict``: a pattern that matches no nn.Linear is an error naming what it matches."""
    patterns = patterns_of(rules)
    named = [(n, m) for n, m in model.named_modules() if n]
    found: dict[str, nn.Linear] = {}
    for pattern in patterns:
        hits = [(n, m) for n, m in named if fnmatch.fnmatchcase(n, pattern)]
        linears = [(n, m) for n, m in hits if isinstance(m, nn.Linear)]
        if strict and not linears:
            if hits:
                what = ", ".join(f"{n} ({type(m).__name__})" for n, m in hits[:4])
                msg = (f"rules: pattern {pattern!r} matches no nn.Linear, only {what}"
                       f"{', ...' if len(hits) > 4 else ''}; calibration hooks nn.Linear inputs")
            else:
                some = ", ".join(n for n, m in named if isinstance(m, nn.Linear))
                msg = f"rules: pattern {pattern!r} matches no module of the model (its Linears: {some[:200]})"
            raise ValueError(msg)
        found.update(linears)
    order = {n: i for i, (n, _) in enumerate(named)}
    return dict(sorted(found.items(), key=lambda kv: order[kv[0]]))


@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Every module in eval mode inside; each module's own training flag restored after."""
    flags = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def removing(handles: list) -> Iterator[list]:
    """Removes every hook handle in ``handles`` on exit, error or not."""
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()
        handles.clear()


def first_input(args: tuple, kwargs: dict) -> Any:
    """The tensor a Linear/Embedding forward gets, positional or as ``input=``."""
    if args:
        return args[0]
    return kwargs.get("input", next(iter(kwargs.values()), None))


class Progress:
    """A counter on stderr: tqdm when installed, else a plain ``\\r`` line; silent when off."""

    def __init__(self, enabled: bool, desc: str, total: Optional[int] = None):
        self.enabled, self.desc, self.total, self.n = bool(enabled), desc, total, 0
        self._bar = None
        if self.enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                self._bar = None
            else:
                self._bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False)

    def update(self, n: int = 1, note: str = "") -> None:
        self.n += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            return
        of = f"/{self.total}" if self.total else ""
        sys.stderr.write(f"\r{self.desc}: {self.n}{of} {note}")
        sys.stderr.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            sys.stderr.write("\n")
            sys.stderr.flush()
