"""When a call may skip the custom ops' registration and run the C++ kernel directly.

Shared by the ops (``projective_lookup``) and the layers' eval-mode serving paths
(``DopedKroneckerLinear``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["plain_inference"]


def plain_inference(*tensors: Tensor) -> bool:
    """No gradient wanted, plain CPU tensors, no tracing or functorch transform: the op's
    registration (fake, autograd) would do nothing but cost time."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    # Tracers (torch.jit.trace, ONNX export) would record the NumPy round trip as a constant.
    if (torch.compiler.is_compiling() or torch.jit.is_tracing()
            or torch._C._are_functorch_transforms_active()):
        return False
    return all(type(t) in (Tensor, torch.nn.Parameter) for t in tensors)
