"""Nothing unpickles user files: every ``torch.load`` passes ``weights_only=True``, every
``np.load`` ``allow_pickle=False``; a pickled ``.npy`` in a project is refused and reported,
and a pickle disguised as a checkpoint does not run."""

from __future__ import annotations

import ast
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from engine.project import Encoding

from .conftest import ROOT

SOURCES = sorted((ROOT / "engine").rglob("*.py")) + sorted((ROOT / "studio").rglob("*.py"))


def _calls(name: str):
    """(file, line, call) of every ``<something>.name(...)`` in the engine and the studio."""
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == name:
                yield path.relative_to(ROOT).as_posix(), node.lineno, node


def _keyword(call: ast.Call, key: str):
    for kw in call.keywords:
        if kw.arg == key and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return "missing"


def test_every_torch_load_is_weights_only():
    found = [(f, n, _keyword(c, "weights_only")) for f, n, c in _calls("load")
             if isinstance(c.func.value, ast.Name) and c.func.value.id == "torch"]
    assert found, "expected the checkpoint loaders to use torch.load"
    assert [x for x in found if x[2] is not True] == []


def test_every_np_load_refuses_pickles():
    found = [(f, n, _keyword(c, "allow_pickle")) for f, n, c in _calls("load")
             if isinstance(c.func.value, ast.Name) and c.func.value.id == "np"]
    assert found
    assert [x for x in found if x[2] is not False] == []


def test_no_pickle_or_unsafe_loaders_in_the_engine():
    bad = []
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        for needle in (r"import pickle", r"pickle\.loads?\(", r"joblib\.load", r"dill\.load",
                       r"yaml\.load\(", r"(?<![\w.])eval\(", r"(?<![\w.])exec\("):
            if re.search(needle, text):
                bad.append((path.relative_to(ROOT).as_posix(), needle))
    assert bad == []


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/rcdm-studio-pwned"),))


def test_a_pickled_npy_in_a_project_is_refused_and_reported(built):
    from engine.check import check_project

    Path("/tmp/rcdm-studio-pwned").unlink(missing_ok=True)
    enc = built.list(Encoding)[0]
    path = built.assets / enc.array_path
    arr = np.empty(enc.count * enc.dim, dtype=object).reshape(enc.count, enc.dim)
    arr[0, 0] = _Boom()
    np.save(path, arr, allow_pickle=True)
    with pytest.raises(ValueError, match="Python objects"):
        built.embeddings(enc)  # memory-mapped: object arrays cannot be
    with pytest.raises(ValueError, match="allow_pickle=False"):
        built.load_array(enc.array_path, mmap=False)
    report = check_project(built)
    assert [p["kind"] for p in report.problems] == ["broken_file"]
    assert not Path("/tmp/rcdm-studio-pwned").exists()


def test_a_pickle_disguised_as_a_checkpoint_does_not_run(tmp_path):
    import torch

    Path("/tmp/rcdm-studio-pwned").unlink(missing_ok=True)
    fake = tmp_path / "state.pt"
    fake.write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(pickle.UnpicklingError):
        torch.load(fake, map_location="cpu", weights_only=True)
    assert not Path("/tmp/rcdm-studio-pwned").exists()
