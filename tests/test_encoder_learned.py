"""The offline learned encoder (simclr): self-supervised fit, determinism, persistence, and
that what it learns on the digits separates classes it never saw labels of."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import import_folder

from engine.config import EncodeConfig, ImportConfig
from engine.encoders import MANIFEST, SimCLREncoder, create_encoder, load_encoder
from engine.errors import Cancelled, InvalidConfigError
from engine.progress import CancelToken

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    gray = np.round(d.images * 255 / 16).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1), d.target  # (1797, 8, 8, 3), (1797,)


def _knn_accuracy(train: np.ndarray, ytrain: np.ndarray, test: np.ndarray,
                  ytest: np.ndarray, k: int = 5) -> float:
    """Cosine k-NN majority vote."""
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    b = test / np.linalg.norm(test, axis=1, keepdims=True)
    nearest = np.argsort(-(b @ a.T), axis=1)[:, :k]  # (Nt, k)
    votes = ytrain[nearest]
    pred = np.array([np.bincount(v, minlength=10).argmax() for v in votes])
    return float((pred == ytest).mean())


def test_fit_loss_goes_down_and_knn_beats_chance_and_the_untrained_net(digits):
    import torch

    from engine.encoders.learned import build_network

    px, y = digits
    train, test = slice(0, 300), slice(300, 600)
    cfg = EncodeConfig(encoder="simclr", dim=32, image_size=16, fit_epochs=10,
                       fit_batch_size=100, seed=0)
    enc = create_encoder(cfg, 10)
    assert isinstance(enc, SimCLREncoder) and enc.offline and enc.needs_fit
    with pytest.raises(InvalidConfigError, match="fitted"):
        enc.encode(px[:2])
    # the same network untrained (same seed: the initial weights of the fit)
    untrained = create_encoder(cfg, 10)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        untrained.net = build_network(32).eval()
    base = _knn_accuracy(untrained.encode(px[train]), y[train], untrained.encode(px[test]),
                         y[test])

    events = []
    enc.fit(px[train], progress=events.append)  # labels are not needed
    assert [e.step for e in events] == list(range(1, 11))
    assert all(e.stage == "fit" and e.total == 10 for e in events)
    assert len(enc.losses) == 10 and enc.losses[-1] < enc.losses[0] - 0.5
    emb_train, emb_test = enc.encode(px[train]), enc.encode(px[test])
    assert emb_train.shape == (300, 32) and emb_train.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb_test, axis=1), np.sqrt(32), rtol=1e-5)
    acc = _knn_accuracy(emb_train, y[train], emb_test, y[test])
    assert acc > 0.5  # chance is 0.1
    assert acc > base + 0.05, (acc, base)


def test_deterministic_and_save_load_round_trip(tmp_path, digits):
    px, _ = digits
    cfg = EncodeConfig(encoder="simclr", dim=16, image_size=16, fit_epochs=2,
                       fit_batch_size=32, batch_size=20, seed=3)
    a, b = create_encoder(cfg, 10), create_encoder(cfg, 10)
    a.fit(px[:64])
    b.fit(px[:64])
    out = a.encode(px[:50])
    np.testing.assert_array_equal(b.encode(px[:50]), out)
    other = create_encoder(cfg.replace(seed=4), 10)
    other.fit(px[:64])
    assert not np.allclose(other.encode(px[:50]), out)

    a.save(tmp_path / "simclr")
    assert (tmp_path / "simclr" / "state.safetensors").is_file()
    manifest = json.loads((tmp_path / "simclr" / MANIFEST).read_text())
    assert manifest["name"] == "simclr" and manifest["dim"] == 16 and manifest["offline"]
    assert len(manifest["fit_losses"]) == 2
    again = load_encoder(tmp_path / "simclr")
    assert isinstance(again, SimCLREncoder) and again.is_fitted
    np.testing.assert_array_equal(again.encode(px[:50]), out)
    # batch-size invariant (BatchNorm in eval mode)
    whole = load_encoder(tmp_path / "simclr")
    whole.config = whole.config.replace(batch_size=256)
    np.testing.assert_allclose(whole.encode(px[:50]), out, atol=1e-5)


def test_fit_can_be_cancelled_and_needs_two_images(digits):
    px, _ = digits
    enc = create_encoder(EncodeConfig(encoder="simclr", fit_epochs=3, fit_batch_size=8), 10)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        enc.fit(px[:16], cancel=token)
    with pytest.raises(InvalidConfigError, match=">= 2 training images"):
        enc.fit(px[:1])


def test_encode_job_fits_on_the_training_split(project, tiny_folder):
    from engine import data
    from engine.jobs import JobManager, read_progress
    from engine.project import Encoding
    from engine.stages import encode_stage

    ds = import_folder(project, tiny_folder, "tiny", ImportConfig(test_fraction=0.25))
    cfg = EncodeConfig(encoder="simclr", dim=8, image_size=12, fit_epochs=2, fit_batch_size=9)
    jobs = JobManager(project)
    job = jobs.run_inline(encode_stage.prepare(project, cfg, dataset_ref=ds.id))
    row = project.get(Encoding, job.result_id)
    assert (row.count, row.dim, row.encoder, row.offline) == (24, 8, "simclr", True)
    stages = {e["stage"] for e in read_progress(jobs.folder(job))}
    assert {"fit", "encode"} <= stages
    enc = load_encoder(project.abs(row.state_path))
    pixels = data.dataset_pixels(project, ds, 12)
    np.testing.assert_allclose(np.asarray(project.embeddings(row)), enc.encode(pixels),
                               atol=1e-5)
