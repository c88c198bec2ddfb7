"""Messages for files that fail to load (internal): one line saying why, for the errors
that name the file (``Calibration.load``, ``load_compressed``, the command line)."""

from __future__ import annotations

__all__ = ["load_failure"]

# torch.load's weights_only refusal opens with advice to unpickle anyway (which runs code
# from the file) and a plea to file an issue; the line after them says what was refused.
_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def load_failure(e: BaseException) -> str:
    """``TypeName: the informative line`` of a load error (for torch's weights_only
    refusals the refused GLOBAL or operand), or the type name alone."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    refused = [line for line in lines if "GLOBAL" in line]
    useful = refused or [line for line in lines if not line.startswith(_BOILERPLATE)]
    return f"{type(e).__name__}: {useful[0]}" if useful else type(e).__name__
