"""The rule grammar of :func:`lpfast.torch.compress` (internal): the short form
``"PATTERN=METHOD:RATIO[:key=value,...]"``, rules normalized to ``(pattern, spec)`` pairs,
and the checks every method applies to its spec (known options, one size option, the
budget a ratio leaves). Errors name the rule: ``rules['PATTERN']['option']: ...``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Union

import numpy as np
from torch import nn

from .._checks import compression_ratio
from ._registry import METHODS

__all__ = ["Rules", "budget", "exact_ratio", "n_params", "normalize_rules", "parse_rule", "sequence",
           "spec_keys", "too_small", "weight_budget"]

Rules = Union[Mapping[str, Union[Mapping[str, Any], str]], Iterable[tuple[str, Any]]]


def n_params(module: nn.Module) -> int:
    """What an optimizer sees: ``sum(p.numel() for p in module.parameters())``."""
    return sum(p.numel() for p in module.parameters())


def budget(name: str, module: nn.Module, spec: Mapping[str, Any]) -> float:
    """Parameters the replacement may hold: the module's own divided by ``spec["ratio"]``."""
    return n_params(module) / compression_ratio(spec["ratio"], f"rules[{name!r}]['ratio']")


def weight_budget(name: str, module: nn.Module, spec: Mapping[str, Any]) -> float:
    """:func:`budget` less a Linear's bias (copied as it is, so it is spent first)."""
    bias = module.bias if isinstance(module, nn.Linear) else None
    return budget(name, module, spec) - (0 if bias is None else bias.numel())


def exact_ratio(size: int, budget: int) -> float:
    """A ratio with ``floor(size / ratio) == budget`` exactly (``size / budget`` may floor
    one below it in floating point), for fits that take a ratio and floor it themselves."""
    ratio = size / budget
    while math.floor(size / ratio) < budget:
        ratio = float(np.nextafter(ratio, 0.0))
    return ratio


def too_small(name: str, spec: Mapping[str, Any], what: str) -> ValueError:
    """The error of a ratio whose budget leaves no room for ``what``."""
    return ValueError(f"rules[{name!r}]['ratio']: {spec['ratio']} leaves no room for {what}; "
                      f"lower the ratio")


def spec_keys(name: str, spec: Mapping[str, Any], allowed: set[str], size: tuple[str, ...]) -> None:
    """Unknown options are errors; exactly one of the ``size`` options must be given."""
    extra = set(spec) - allowed - {"method"}
    if extra:
        msg = (f"rules[{name!r}]: unknown option(s) {sorted(extra)} for method "
               f"{spec['method']!r} (allowed: {sorted(allowed)})")
        raise ValueError(msg)
    given = [k for k in size if k in spec]
    if len(given) != 1:
        msg = f"rules[{name!r}]: give exactly one of {list(size)}, got {given or 'none'}"
        raise ValueError(msg)


def sequence(name: str, key: str, value: Any, conv: Callable[[Any], Any]) -> list[Any]:
    """A list from a sequence, one value, or a '/'-separated string (``"1/1.5"``)."""
    if isinstance(value, str):
        items: list[Any] = [v for v in value.replace(" ", "/").split("/") if v]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    try:
        return [conv(v) for v in items]
    except (TypeError, ValueError) as e:
        msg = f"rules[{name!r}][{key!r}]: cannot read {value!r} ({e})"
        raise ValueError(msg) from e


def normalize_rules(rules: Rules) -> list[tuple[str, dict[str, Any]]]:
    """``rules`` (a mapping or (pattern, spec) pairs; short-form specs parsed) as a list of
    (pattern, spec dict) with a registered method each."""
    if isinstance(rules, Mapping):
        items = list(rules.items())
    else:
        try:
            items = [tuple(r) for r in rules]
        except TypeError:
            msg = f"rules: expected a mapping pattern -> spec, got {type(rules).__name__}"
            raise TypeError(msg) from None
    if not items:
        msg = "rules: no rule given"
        raise ValueError(msg)
    out = []
    for item in items:
        if len(item) != 2 or not isinstance(item[0], str):
            msg = f"rules: expected (pattern, spec) pairs with str patterns, got {item!r}"
            raise TypeError(msg)
        pattern, spec = item
        if isinstance(spec, str):
            spec = parse_rule(f"{pattern}={spec}")[1]
        if not isinstance(spec, Mapping):
            msg = f"rules[{pattern!r}]: expected a dict like {{'method': 'lowrank', 'ratio': 4}}, got {spec!r}"
            raise TypeError(msg)
        method = spec.get("method")
        if method not in METHODS:
            msg = f"rules[{pattern!r}]['method']: expected one of {sorted(METHODS)}, got {method!r}"
            raise ValueError(msg)
        out.append((pattern, dict(spec)))
    return out


def _value(text: str) -> Any:
    """A short-form value: bool, None, int, float, an ``AxB`` shape, else the text."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    parts = low.split("x")
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return (int(parts[0]), int(parts[1]))
    return text


def parse_rule(text: str) -> tuple[str, dict[str, Any]]:
    """``"PATTERN=METHOD:RATIO[:key=value,...]"`` (or ``"PATTERN=METHOD:key=value,..."``)
    -> ``(pattern, spec)``.

    Values are parsed as int, float, bool, ``AxB`` shapes (``a_shape=16x8``) or strings;
    ``RATIO`` may be empty when a size option is given (``lowrank::rank=8``), or left out
    altogether before options (``auto:speedup=1.3`` = ``auto::speedup=1.3``).

    Examples
    --------
    >>> parse_rule("*.word_embeddings=lowrank:4:p=1.5")
    ('*.word_embeddings', {'method': 'lowrank', 'ratio': 4, 'p': 1.5})
    >>> parse_rule("*.dense=auto:speedup=1.3,rows=32")
    ('*.dense', {'method': 'auto', 'speedup': 1.3, 'rows': 32})
    """
    if not isinstance(text, str):
        msg = f"rule: expected a str 'PATTERN=METHOD:RATIO[:key=value,...]', got {type(text).__name__}"
        raise TypeError(msg)
    pattern, eq, rhs = text.partition("=")
    method, _, rest = rhs.partition(":")
    ratio, _, opts = rest.partition(":")
    if "=" in ratio:  # no ratio, options only: "auto:speedup=1.3"
        ratio, opts = "", rest
    if not eq or not pattern or not method:
        msg = f"rule: expected 'PATTERN=METHOD:RATIO[:key=value,...]', got {text!r}"
        raise ValueError(msg)
    spec: dict[str, Any] = {"method": method}
    if ratio:
        spec["ratio"] = _value(ratio)
        if not isinstance(spec["ratio"], (int, float)):
            msg = f"rule: ratio {ratio!r} in {text!r} is not a number"
            raise ValueError(msg)
    for opt in filter(None, opts.split(",")):
        key, eq, val = opt.partition("=")
        if not eq or not key:
            msg = f"rule: option {opt!r} in {text!r} is not key=value"
            raise ValueError(msg)
        spec[key] = _value(val)
    return pattern, spec
