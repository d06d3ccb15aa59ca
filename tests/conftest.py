"""Shared fixtures: tiny real datasets and projects (no mocks, no network)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    import torch

    torch.set_num_threads(2)
    yield


@pytest.fixture
def one_thread():
    """Tiny models are overhead-bound: one thread is faster on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_tiny_folder(root: Path, classes: int = 3, per_class: int = 8, size: int = 12,
                      seed: int = 0) -> Path:
    """An ImageFolder of small coloured PNGs: class c is a bright blob at a class position."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 40, size=(size, size, 3), dtype=np.uint8)
            y, x = (c * 3) % (size - 4), (c * 5) % (size - 4)
            img[y:y + 4, x:x + 4, c % 3] = 230
            Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    return write_tiny_folder(tmp_path / "tiny")


@pytest.fixture
def project(tmp_path: Path):
    from engine.project import Project

    p = Project(tmp_path / "proj")
    yield p
    p.close()
