"""Package-level promises: the type stubs describe every compiled function, and the public
API is what ``__all__`` says."""

from __future__ import annotations

import re
from pathlib import Path

import lpfast
from lpfast import _core


def test_core_stub_lists_every_compiled_name():
    stub = (Path(lpfast.__file__).parent / "_core.pyi").read_text()
    stubbed = set(re.findall(r"^def (\w+)", stub, flags=re.M))
    stubbed |= set(re.findall(r"^(\w+): ", stub, flags=re.M))
    stubbed |= set(re.findall(r"^class (\w+)", stub, flags=re.M))
    compiled = {n for n in dir(_core) if not n.startswith("_")}
    assert compiled - stubbed == set(), "add these to _core.pyi"
    assert stubbed - compiled == set(), "these stubs name nothing compiled"


def test_all_names_exist_and_are_documented():
    for name in lpfast.__all__:
        obj = getattr(lpfast, name)
        assert obj.__doc__ and len(obj.__doc__.strip()) > 20, name
