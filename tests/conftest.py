"""Shared fixtures: tiny real datasets and projects (no mocks, no network)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(autouse=True, scope="session")
def _studio_home(tmp_path_factory):
    """The studio's home folder (recent projects) is a temporary one for the whole session,
    through the environment, so that worker and CLI subprocesses use it too: tests never
    write the user's ``~/.config/rcdm-studio``."""
    home = tmp_path_factory.mktemp("studio-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("RCDM_STUDIO_HOME", str(home))
    yield home
    mp.undo()


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


def import_folder(project, folder: Path | None, name: str, config=None, demo: bool = False,
                  progress=None, cancel=None):
    """Import ``folder`` (or the demo digits) through the ``import`` job, run in this
    process (``JobManager.run_inline``: same worker code, same ingest); returns the Dataset."""
    from engine.config import ImportConfig
    from engine.jobs import JobManager
    from engine.progress import no_progress
    from engine.project import Dataset
    from engine.stages import import_stage

    spec = import_stage.prepare(project, folder, name, config or ImportConfig(), demo=demo)
    job = JobManager(project).run_inline(spec, progress=progress or no_progress, cancel=cancel)
    return project.get(Dataset, job.result_id)


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    return write_tiny_folder(tmp_path / "tiny")


@pytest.fixture
def project(tmp_path: Path):
    from engine.project import Project

    p = Project(tmp_path / "proj")
    yield p
    p.close()


def tiny_generation_project(root: Path, dim: int = 5, classes: int = 3, per_class: int = 8,
                            val_fraction: float = 0.0):
    """A closed project at ``root/gen`` with a tiny ImageFolder imported (a quarter of each
    class for test, ``val_fraction`` for validation), a ``dim``-d PCA encoding and an
    untrained 8x8 RCDM registered as the trained model "tiny-rcdm".

    Returns the project path (pass it to ``Project``) and the model id.
    """
    import torch

    from engine.config import EncodeConfig, ImportConfig, TrainConfig
    from engine.jobs import JobManager
    from engine.project import Encoding, Model, Project
    from engine.rcdm.model import build_rcdm, save_rcdm
    from engine.stages import encode_stage

    folder = write_tiny_folder(root / "images", classes=classes, per_class=per_class)
    config = TrainConfig(image_size=8, block_channels=(8, 16), cross_attention_dim=16,
                         attention_head_dim=8, cond_tokens=1)
    with Project(root / "gen") as project:
        ds = import_folder(project, folder, "tiny",
                           ImportConfig(test_fraction=0.25, val_fraction=val_fraction))
        JobManager(project).run_inline(encode_stage.prepare(
            project, EncodeConfig(encoder="pca", dim=dim, image_size=8), dataset_ref=ds.id))
        enc = project.list(Encoding, dataset_id=ds.id)[-1]
        torch.manual_seed(0)
        model = build_rcdm(config, dim).eval()
        with torch.no_grad():
            model.null_cond.normal_()
        model_dir = save_rcdm(model, project.assets / "models" / "mdl_tiny" / "model",
                              config, dim, {"encoder": "pca"})
        project.add(Model(id="mdl_tiny", name="tiny-rcdm", dataset_id=ds.id,
                          encoding_id=enc.id, encoder="pca", status="trained",
                          checkpoint=project.rel(model_dir), config_json=config.to_json()))
    return root / "gen", "mdl_tiny"
