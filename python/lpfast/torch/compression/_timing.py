"""Latency of candidate layers against the dense layer on this CPU (internal).

Timings on a shared machine drift: a second of background load hits whatever runs in that
second. So every layer is timed in short blocks, one block per layer per round, rounds
repeated, and the median per layer taken: a slow spell raises every layer's block in that
round rather than one layer's whole measurement. The figures are not deterministic; their
ratios to the dense layer's are what a choice should rest on.
"""

from __future__ import annotations

import statistics
import time
from typing import Sequence

import torch
from torch import nn

__all__ = ["interleaved_latency"]

#: A block lasts at least this long (calls are repeated until it does): long against
#: perf_counter's resolution and a call's overhead, short against load changes.
_BLOCK_SECONDS = 2e-3
_MAX_CALLS = 1 << 14


def _calls_per_block(layer: nn.Module, x: torch.Tensor) -> int:
    n = 1
    while n < _MAX_CALLS:
        t0 = time.perf_counter()
        for _ in range(n):
            layer(x)
        if time.perf_counter() - t0 >= _BLOCK_SECONDS:
            break
        n *= 2
    return n


def interleaved_latency(layers: Sequence[nn.Module], x: torch.Tensor, *,
                        repeats: int = 5) -> list[float]:
    """Median seconds per call ``layer(x)`` of each layer, measured interleaved.

    Parameters
    ----------
    layers : sequence of nn.Module taking ``x``
    x : Tensor, the input of every call (e.g. (rows, in_features))
    repeats : int >= 1
        Rounds; each round times one block of calls of every layer, in an order rotated by
        one each round (so no layer always runs first after another).

    Returns
    -------
    list of float, one per layer: the median over rounds of a block's seconds per call.

    Runs under ``torch.no_grad()`` with every layer in eval mode (training flags restored),
    on torch's current thread count. Cost: about ``(repeats + 2) * len(layers)`` blocks of
    at least 2 ms each.
    """
    layers = list(layers)
    flags = [m.training for m in layers]
    times: list[list[float]] = [[] for _ in layers]
    try:
        with torch.no_grad():
            for m in layers:
                m.eval()
                m(x)  # first call: allocations and lazily built caches are not latency
            calls = [_calls_per_block(m, x) for m in layers]
            for r in range(repeats):
                for k in range(len(layers)):
                    i = (k + r) % len(layers)
                    t0 = time.perf_counter()
                    for _ in range(calls[i]):
                        layers[i](x)
                    times[i].append((time.perf_counter() - t0) / calls[i])
    finally:
        for m, flag in zip(layers, flags):
            m.train(flag)
    return [statistics.median(t) for t in times]
