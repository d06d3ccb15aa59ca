"""Streamed image sources: the same pixels, the same batches as the in-memory path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import ConcatDataset

from engine import data, streams
from engine.config import EvalConfig
from engine.errors import InvalidConfigError
from engine.evaluate import classifier_training
from tests.test_evaluate import blobs, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cache_rows_read_the_npy_rows(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=(7, 5, 5, 3), dtype=np.uint8)
    np.save(tmp_path / "px.npy", x)
    rows = streams.CacheRows(tmp_path / "px.npy", [6, 0, 3])
    assert len(rows) == 3
    assert np.array_equal(np.stack([rows[i] for i in range(3)]), x[[6, 0, 3]])
    with pytest.raises(Exception, match="rows outside"):
        streams.CacheRows(tmp_path / "px.npy", [7])
    whole = streams.CacheRows(tmp_path / "px.npy")
    assert whole.shape == x.shape and len(whole) == 7
    assert np.array_equal(whole[2:6], x[2:6])  # consecutive rows: one read
    assert np.array_equal(rows[0:2], x[[6, 0]])  # scattered rows
    assert np.array_equal(whole[5:99], x[5:])


def test_pixel_cache_in_blocks_and_workers_equals_load_pixels(tmp_path, monkeypatch):
    """The cache written block by block (in this process, or decoded by a loader worker)
    holds exactly what load_pixels decodes."""
    rng = np.random.default_rng(3)
    paths = []
    for i in range(11):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, size=(10 + i, 14, 3), dtype=np.uint8)).save(paths[-1])
    monkeypatch.setattr(data, "PIXEL_BLOCK", 4)  # 3 blocks: 4, 4, 3
    expected = data.load_pixels(paths, 8)
    for workers in (0, 1):
        cache = data.pixel_cache(paths, tmp_path / f"pixels_{workers}.npy", 8, workers=workers)
        assert cache.shape == (11, 8, 8, 3)
        assert np.array_equal(np.asarray(cache), expected)


def test_image_files_decode_as_load_pixels(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i, (w, h) in enumerate([(20, 14), (9, 9), (30, 40)]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    files = streams.ImageFiles(paths, 12)
    assert np.array_equal(np.stack([files[i] for i in range(3)]), data.load_pixels(paths, 12))


def test_choose_path_memory_under_the_bound_stream_beyond():
    assert streams.choose_path("auto", 100, 0.25, available=1000) == "memory"
    assert streams.choose_path("auto", 251, 0.25, available=1000) == "stream"
    assert streams.choose_path("memory", 10**15, 0.25, available=1000) == "memory"
    assert streams.choose_path("stream", 1, 0.25, available=1000) == "stream"
    with pytest.raises(InvalidConfigError, match="data_path"):
        streams.choose_path("disk", 1, 0.25)
    with pytest.raises(InvalidConfigError, match="memory_fraction"):
        EvalConfig(memory_fraction=0.0)
    with pytest.raises(InvalidConfigError, match="loader_workers"):
        EvalConfig(loader_workers=1000)
    with pytest.raises(InvalidConfigError, match="meada"):
        EvalConfig(data_path="stream", augment="meada", epochs=6)


def _record_batches(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Spy on the loop's ``_batch``: every (uint8 images, labels) it is given, in order."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real_batch = classifier_training._batch

    def spy(xu, yb, *args, **kwargs):
        seen.append((xu.clone(), yb.clone()))
        return real_batch(xu, yb, *args, **kwargs)

    monkeypatch.setattr(classifier_training, "_batch", spy)
    return seen


@pytest.mark.parametrize("workers,augment", [(0, "crop"), (1, "mixup")])
def test_streamed_training_sees_the_in_memory_batches(tmp_path, monkeypatch, workers, augment):
    """Same seed: the streamed run gets the same images and labels in every batch, in the
    same order, and ends with the same weights' accuracy and curves (float tolerance)."""
    x, y = blobs(12, classes=4, size=16, seed=0)  # 48 training images
    xt, yt = blobs(5, classes=4, size=16, seed=1)
    # the streamed mix: real rows from a pixel-cache file plus "synthetic" PNG files
    np.save(tmp_path / "real.npy", x[:30])
    np.save(tmp_path / "test.npy", xt)
    paths = []
    for i in range(30, 48):
        paths.append(tmp_path / f"syn_{i}.png")
        Image.fromarray(x[i]).save(paths[-1])
    config = tiny_config(epochs=2, batch_size=16, augment=augment, loader_workers=workers)

    seen_memory = _record_batches(monkeypatch)
    memory = classifier_training.train_classifier(x, y, xt, yt, 4, config)
    monkeypatch.undo()
    seen_stream = _record_batches(monkeypatch)
    source = ConcatDataset([streams.CacheRows(tmp_path / "real.npy"),
                            streams.ImageFiles(paths, 16)])
    test_source = streams.CacheRows(tmp_path / "test.npy")
    streamed = classifier_training.train_classifier(source, y, test_source, yt, 4, config)

    assert len(seen_memory) == len(seen_stream) == 2 * 3  # 2 epochs of 48 / 16 batches
    for (xm, ym), (xs, ys) in zip(seen_memory, seen_stream):
        assert torch.equal(ym, ys)
        assert torch.equal(xm, xs)  # uint8: the very same pixels
    assert memory["data_path"] == "memory" and streamed["data_path"] == "stream"
    assert streamed["num_train"] == 48 and streamed["num_test"] == len(yt)
    np.testing.assert_allclose(streamed["curves"]["train_loss"], memory["curves"]["train_loss"],
                               rtol=1e-3, atol=1e-4)
    assert abs(streamed["top1"] - memory["top1"]) <= 100.0 / len(yt) + 1e-6  # one image at most


def test_streamed_inputs_are_checked(tmp_path):
    x, y = blobs(3, classes=2, size=16)
    np.save(tmp_path / "px.npy", x)
    source = streams.CacheRows(tmp_path / "px.npy")
    with pytest.raises(InvalidConfigError, match="both be arrays or both"):
        classifier_training.train_classifier(source, y, x, y, 2, tiny_config())
    with pytest.raises(InvalidConfigError, match=r"\(8, 8, 3\)"):
        classifier_training.train_classifier(source, y, source, y, 2, tiny_config(image_size=8))
    with pytest.raises(InvalidConfigError, match="labels must have shape"):
        classifier_training.train_classifier(source, y[:-1], source, y, 2, tiny_config())


def test_evaluation_job_streamed_through_the_stage(tmp_path):
    """A real+synthetic evaluation forced onto the streamed path: the job trains, scores
    the test split, and says which path it took."""
    from engine.jobs import JobManager
    from engine.project import Evaluation, Generation, Project
    from engine.stages import evaluate_stage
    from tests.conftest import import_folder, write_tiny_folder

    folder = write_tiny_folder(tmp_path / "images", classes=3, per_class=10, size=12)
    with Project(tmp_path / "proj") as project:
        from engine.config import ImportConfig

        ds = import_folder(project, folder, "tiny", ImportConfig(test_fraction=0.3))
        # a "generation" whose samples are copies of some dataset images
        images = project.images(ds.id)
        gen_dir = project.assets / "generations" / "gen_copy"
        gen_dir.mkdir(parents=True)
        rows = []
        for k, (rel, label) in enumerate(zip(images["path"][:9], images["label"][:9])):
            target = gen_dir / f"{k:04d}.png"
            target.write_bytes(project.abs(rel).read_bytes())
            rows.append(dict(label=int(label), path=project.rel(target)))
        _add_generation(project, ds, rows, Generation)
        config = EvalConfig(arch="resnet_tiny", image_size=8, epochs=2, batch_size=8,
                            data_path="stream", loader_workers=1)
        spec = evaluate_stage.prepare(project, config, mix="real+synthetic",
                                      generation_ref="gen_copy")
        job = JobManager(project).run_inline(spec)
        ev = project.get(Evaluation, job.result_id)
        assert ev.status == "done"
        details = ev.results
        assert details["data_path"] == "stream"
        assert details["data_bytes"] == (ev.num_train + ev.num_test) * 8 * 8 * 3
        assert ev.num_train == int(ds.num_train) + 9
        assert 0.0 <= ev.top1 <= 100.0 and len(details["curves"]["train_loss"]) == 2
        assert all(np.isfinite(details["curves"]["train_loss"]))


def _add_generation(project, ds, rows, Generation):
    """Register PNG files as a generation of ``ds`` (rows: label, path)."""
    import pandas as pd

    samples = pd.DataFrame([{"id": f"gen_copy_{k:06d}", "generation_id": "gen_copy", "idx": k,
                             "source_image_id": "", "class_name": "", "seed": k,
                             "sampler": "ddpm", "steps": 1, "guidance": 1.0, **row}
                            for k, row in enumerate(rows)])
    project.add_generation(Generation(id="gen_copy", name="copies", dataset_id=ds.id,
                                      count=len(rows)), samples)


def test_encoding_read_in_chunks_equals_encoding_the_whole_array(tmp_path):
    """An offline encoding job reads the pixel cache chunk by chunk (chunk_size 5 of 30
    images): its embeddings are the fitted encoder's on the whole array at once."""
    from engine import encoders
    from engine.config import EncodeConfig, ImportConfig
    from engine.jobs import JobManager
    from engine.project import Encoding, Project
    from engine.stages import encode_stage
    from tests.conftest import import_folder, write_tiny_folder

    folder = write_tiny_folder(tmp_path / "images", classes=3, per_class=10, size=12)
    with Project(tmp_path / "proj") as project:
        ds = import_folder(project, folder, "tiny", ImportConfig(test_fraction=0.3))
        config = EncodeConfig(encoder="pca", dim=4, image_size=8, chunk_size=5)
        job = JobManager(project).run_inline(encode_stage.prepare(project, config,
                                                                  dataset_ref=ds.id))
        enc = project.get(Encoding, job.result_id)
        got = np.load(project.abs(enc.array_path))
        encoder = encoders.load_encoder(project.abs(enc.state_path))
        pixels = data.dataset_pixels(project, ds, 8)
        labels = project.images(ds.id)["label"].to_numpy()
        want = encoder.encode(np.asarray(pixels), labels)
    assert got.shape == (30, 4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
