"""The studio as a client sees it: launched on a free port, driven with gradio_client.

A tiny real pipeline (3 classes x 8 images, an RCDM of a few steps) is prepared with the
engine, then the studio is launched on that project and its endpoints are called: import
the demo, list datasets, move the band (counts change), save a selection, and errors that
reach the page as one readable message.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import EncodeConfig, GenerateConfig, TrainConfig
from conftest import write_tiny_folder

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare_project(path: Path, folder: Path) -> str:
    """Import, encode (pca), train, generate 2 variations, re-encode; returns the generation."""
    from engine import data
    from engine.config import ImportConfig
    from engine.jobs import JobManager
    from engine.project import Project
    from engine.stages import encode, generate, train

    with Project(path) as project:
        jobs = JobManager(project)
        ds = data.import_image_folder(project, folder, "tiny", ImportConfig(test_fraction=0.25))
        enc = EncodeConfig(encoder="pca", dim=8, image_size=16)
        jobs.run_inline(encode.prepare(project, enc, dataset_ref=ds.id))
        cfg = TrainConfig(steps=3, batch_size=8, block_channels=(8, 16), cross_attention_dim=16,
                          attention_head_dim=8, checkpoint_every=100, preview_every=100,
                          warmup_steps=1)
        model = jobs.run_inline(train.prepare(project, cfg, ds.id, encoder="pca")).result_id
        gen = jobs.run_inline(generate.prepare(
            project, GenerateConfig(variations=2, steps=2), model)).result_id
        jobs.run_inline(encode.prepare(project, enc, generation_ref=gen))
        return gen


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    from gradio_client import Client

    from studio.app import close, launch

    root = tmp_path_factory.mktemp("studio")
    path = root / "proj"
    gen_id = _prepare_project(path, write_tiny_folder(root / "tiny"))
    port = _free_port()
    blocks = launch(path, port=port, open_browser=False, prevent_thread_lock=True)
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    yield blocks, client, gen_id, path
    close(blocks)


def test_import_demo_then_list_datasets(studio):
    from studio.tabs import data as data_tab

    blocks, client, _, _ = studio
    status, dataset = client.predict(api_name="/import_demo")
    assert "imported digits: 1,797 images, 10 classes" in status
    names = [label for label, _ in data_tab.dataset_choices(blocks.studio)]
    assert names == ["tiny (24 images, 3 classes)", "digits (1797 images, 10 classes)"]
    # the dataset dropdown now lists both and shows the new one
    assert dataset["value"] == data_tab.dataset_choices(blocks.studio)[-1][1]
    assert [c[0] for c in dataset["choices"]] == names
    # the same import again is refused with the engine's sentence, not a stack trace
    status, _ = client.predict(api_name="/import_demo")
    assert "status-error" in status and "already exists" in status
    assert "Traceback" not in status


def test_band_change_returns_counts(studio):
    _, client, gen_id, _ = studio
    # 24 images, 18 in the train split of 3 classes -> 6 sources x 2 variations per class
    plot, counts, text, *galleries = client.predict(gen_id, 0.25, 0.75, "real", "cosine",
                                                    api_name="/band")
    rows = counts["data"]
    cols = counts["headers"]
    total, kept = cols.index("total"), cols.index("kept")
    assert [r[total] for r in rows] == [12, 12, 12]
    assert [r[kept] for r in rows] == [6, 6, 6]  # the paper's middle: 2x -> 1x
    assert "Keeping **18** of 36" in text
    assert len(galleries) == 4 and all(len(g) <= 8 for g in galleries)
    _, counts, text, *_ = client.predict(gen_id, 0.0, 1.0, "real", "cosine", api_name="/band")
    assert [r[kept] for r in counts["data"]] == [12, 12, 12]
    _, counts, _, *_ = client.predict(gen_id, 0.0, 0.5, "generated", "euclidean",
                                      api_name="/band")
    assert [r[kept] for r in counts["data"]] == [6, 6, 6]


def test_save_selection_writes_a_row(studio):
    from engine.project import Selection

    blocks, client, gen_id, _ = studio
    status, table, name = client.predict(gen_id, 0.25, 0.75, "real", "cosine", "middle",
                                         api_name="/save_selection")
    assert "saved selection middle: 18 images" in status
    sel = blocks.studio.project.get(Selection, "middle")
    assert sel.count == 18 and sel.generation_id == gen_id
    assert "middle" in [r[0] for r in table["data"]]


def test_errors_reach_the_page_as_a_message(studio):
    _, client, gen_id, _ = studio
    # generate with no model chosen
    status, _ = client.predict(None, "selected images", 2, 2, "ddim", 5, 1.0, 0, "",
                               api_name="/generate")
    assert "no trained model" in status and "status-error" in status
    # a band whose low is not below its high
    _, _, text, *_ = client.predict(gen_id, 0.8, 0.2, "real", "cosine", api_name="/band")
    assert "must be below" in text
    # saving an empty band
    status, _, _ = client.predict(gen_id, 0.0, 0.01, "real", "cosine", "empty",
                                  api_name="/save_selection")
    assert "keeps no sample" in status


def test_locked_project_names_its_holder(tmp_path):
    from engine.project import Project

    with Project(tmp_path / "held"):
        out = subprocess.run(
            [sys.executable, "-m", "engine.cli", "--project", str(tmp_path / "held"),
             "--no-browser", "--port", str(_free_port())],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "is open in" in out.stderr and "Traceback" not in out.stderr
