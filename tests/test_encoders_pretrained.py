"""Pretrained encoders (DINOv2, DINOv3, CLIP) through their real loading code, on tiny models
built from configs and saved to a temp folder; the offline message; the resumable encode stage.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import import_folder

from engine.config import EncodeConfig, ImportConfig
from engine.encoders import (
    MANIFEST,
    ClipEncoder,
    Dinov2Encoder,
    Dinov3Encoder,
    Preprocess,
    available_encoders,
    create_encoder,
    load_encoder,
)
from engine.encoders.pretrained import IMAGENET_MEAN, IMAGENET_STD
from engine.errors import Cancelled, InvalidConfigError, WeightsNotFoundError
from engine.progress import CancelToken

pytestmark = pytest.mark.usefixtures("one_thread")

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    """A 1-layer DINOv2 (32-d, 28 px, patch 14) with its BitImageProcessor config."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    folder = tmp_path_factory.mktemp("dinov2-tiny")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64, image_size=28, patch_size=14)
                ).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28},
                      do_center_crop=True, resample=3, image_mean=list(IMAGENET_MEAN),
                      image_std=list(IMAGENET_STD)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_dinov3(tmp_path_factory):
    """A 1-layer DINOv3 ViT (32-d, 32 px, patch 16, 2 registers), no processor config."""
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    folder = tmp_path_factory.mktemp("dinov3-tiny")
    torch.manual_seed(1)
    DINOv3ViTModel(DINOv3ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64, image_size=32, patch_size=16,
                                   num_register_tokens=2)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """An open_clip folder (open_clip_config.json + open_clip_model.safetensors), 16-d, 32 px."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("clip-tiny")
    config = {
        "model_cfg": {
            "embed_dim": 16,
            "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                           "patch_size": 16},
            "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2,
                         "layers": 1},
        },
        "preprocess_cfg": {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD),
                           "interpolation": "bicubic", "resize_mode": "shortest"},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(2)
    model = open_clip.create_model(f"local-dir:{folder}")  # random init: no weights yet
    save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    return folder


def _pixels(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------- preprocessing


def test_preprocess_resize_crop_and_normalisation_pinned():
    pp = Preprocess(resize=32, crop=28, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    # a constant image stays constant through resize and crop: (c / 255 - mean) / std
    px = np.full((2, 20, 30, 3), (255, 0, 128), dtype=np.uint8)
    x = pp(px).numpy()
    assert x.shape == (2, 3, 28, 28) and x.dtype == np.float32
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(x[0, :, 5, 7], expected, rtol=1e-5)
    np.testing.assert_allclose(x[:, 0].max(), 2.2489083, rtol=1e-6)
    # the shorter side goes to 32 (20x30 -> 32x48), then the centre 28x28: a bright column
    # at the horizontal centre of the original stays at the centre of the crop
    px = np.zeros((1, 20, 30, 3), dtype=np.uint8)
    px[:, :, 14:16] = 255
    col = pp(px)[0, 0].numpy().mean(axis=0)  # (28,)
    assert abs(int(col.argmax()) - 13.5) <= 1
    # an image already at the resize side is only cropped (no resampling)
    px = _pixels(1, 32, 32)
    np.testing.assert_allclose(
        pp(px)[0].numpy(),
        ((px[0, 2:30, 2:30].transpose(2, 0, 1) / 255 - np.array(IMAGENET_MEAN)[:, None, None])
         / np.array(IMAGENET_STD)[:, None, None]), atol=1e-5)


def test_preprocess_reads_files_like_the_hf_processor(tmp_path, tiny_dinov2):
    """``read`` (PIL, shorter side + centre square) then ``__call__`` (centre crop) ~ the
    model's own BitImageProcessor on the same file."""
    from PIL import Image
    from transformers import AutoImageProcessor

    enc = create_encoder(EncodeConfig(encoder="dinov2", model_id=str(tiny_dinov2)), 2)
    enc.load_weights()
    assert enc.preprocess == Preprocess(resize=32, crop=28, mean=IMAGENET_MEAN,
                                        std=IMAGENET_STD, interpolation="bicubic")
    y, x = np.mgrid[0:45, 0:60]
    img = np.stack([x * 4, y * 5, (x + y) * 2], -1).clip(0, 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    ours = enc.preprocess(enc.read_images([tmp_path / "a.png"])).numpy()  # (1, 3, 28, 28)
    theirs = AutoImageProcessor.from_pretrained(str(tiny_dinov2))(
        images=Image.open(tmp_path / "a.png"), return_tensors="np")["pixel_values"]
    assert ours.shape == theirs.shape == (1, 3, 28, 28)
    # same region, same normalisation; resampling implementations differ slightly
    assert np.abs(ours - theirs).mean() < 0.03
    threaded = create_encoder(EncodeConfig(encoder="dinov2", model_id=str(tiny_dinov2),
                                           read_threads=2), 2)
    np.testing.assert_array_equal(threaded.read_images([tmp_path / "a.png"] * 3),
                                  np.repeat(enc.read_images([tmp_path / "a.png"]), 3, axis=0))


# ---------------------------------------------------------------------------- DINOv2 / v3


def test_dinov2_from_local_folder_shape_determinism_and_cls(tiny_dinov2):
    import torch
    from transformers import AutoModel

    cfg = EncodeConfig(encoder="dinov2", model_id=str(tiny_dinov2), batch_size=3)
    enc = create_encoder(cfg, 4)
    assert isinstance(enc, Dinov2Encoder) and not enc.offline and enc.reads_files
    px = _pixels(7, 20, 24)
    out = enc.encode(px)
    assert out.shape == (7, 32) and out.dtype == np.float32 and enc.dim == 32
    assert enc.variant == "ViT-32d/14" and enc.input_size == 28 and enc.load_size == 32
    np.testing.assert_array_equal(enc.encode(px), out)  # deterministic
    whole = create_encoder(cfg.replace(batch_size=64), 4)
    np.testing.assert_allclose(whole.encode(px), out, atol=1e-5)  # batch-size invariant
    half = create_encoder(cfg.replace(precision="bf16"), 4)  # autocast is CUDA-only
    np.testing.assert_array_equal(half.encode(px), out)
    # the representation is the CLS token after the final layer norm
    model = AutoModel.from_pretrained(str(tiny_dinov2)).eval()
    with torch.no_grad():
        hidden = model(pixel_values=enc.preprocess(px)).last_hidden_state  # (7, 1 + 4, 32)
    np.testing.assert_allclose(out, hidden[:, 0].numpy(), atol=1e-5)


def test_dinov2_save_load_round_trip(tmp_path, tiny_dinov2):
    enc = create_encoder(EncodeConfig(encoder="dinov2", model_id=str(tiny_dinov2)), 3)
    px = _pixels(5, 28, 28, seed=3)
    out = enc.encode(px)
    enc.save(tmp_path / "enc")
    assert not (tmp_path / "enc" / "state.safetensors").exists()  # weights are not copied
    manifest = json.loads((tmp_path / "enc" / MANIFEST).read_text())
    assert manifest["name"] == "dinov2" and manifest["dim"] == 32 and not manifest["offline"]
    assert manifest["model_id"] == str(tiny_dinov2) and manifest["variant"] == "ViT-32d/14"
    assert manifest["weights"]["source"] == "local"
    assert manifest["preprocess"] == {"resize": 32, "crop": 28, "interpolation": "bicubic",
                                      "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    again = load_encoder(tmp_path / "enc")
    assert isinstance(again, Dinov2Encoder) and again.dim == 32
    np.testing.assert_array_equal(again.encode(px), out)


def test_dinov3_from_local_folder(tmp_path, tiny_dinov3):
    import torch
    from transformers import AutoModel

    enc = create_encoder(EncodeConfig(encoder="dinov3", model_id=str(tiny_dinov3)), 2)
    assert isinstance(enc, Dinov3Encoder)
    px = _pixels(4, 40, 40, seed=4)
    out = enc.encode(px)
    assert out.shape == (4, 32) and out.dtype == np.float32
    # no processor config: the DINOv3 default (resize to the model size, bilinear, ImageNet)
    assert enc.preprocess == Preprocess(resize=32, crop=32, mean=IMAGENET_MEAN,
                                        std=IMAGENET_STD, interpolation="bilinear")
    model = AutoModel.from_pretrained(str(tiny_dinov3)).eval()
    with torch.no_grad():
        # CLS first, then 2 registers, then 4 patches
        hidden = model(pixel_values=enc.preprocess(px)).last_hidden_state  # (4, 1 + 2 + 4, 32)
    assert hidden.shape[1] == 7
    np.testing.assert_allclose(out, hidden[:, 0].numpy(), atol=1e-5)
    enc.save(tmp_path / "v3")
    np.testing.assert_array_equal(load_encoder(tmp_path / "v3").encode(px), out)


def test_wrong_family_and_missing_folder(tmp_path, tiny_dinov3):
    with pytest.raises(InvalidConfigError, match="dinov3_vit.*not a dinov2"):
        create_encoder(EncodeConfig(encoder="dinov2", model_id=str(tiny_dinov3)), 2).encode(
            _pixels(1, 8, 8))
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        create_encoder(EncodeConfig(encoder="dinov2", model_id=str(tmp_path / "nope")),
                       2).load_weights()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text('{"model_type": "dinov2"}')
    with pytest.raises(WeightsNotFoundError, match=r"lacks \*\.safetensors"):
        create_encoder(EncodeConfig(encoder="dinov2", model_id=str(tmp_path / "empty")),
                       2).load_weights()


# ---------------------------------------------------------------------------- CLIP


def test_clip_from_local_open_clip_folder(tmp_path, tiny_clip):
    import open_clip
    import torch

    enc = create_encoder(EncodeConfig(encoder="clip", model_id=str(tiny_clip)), 2)
    assert isinstance(enc, ClipEncoder)
    px = _pixels(5, 24, 36, seed=5)
    out = enc.encode(px)
    assert out.shape == (5, 16) and out.dtype == np.float32
    assert enc.preprocess == Preprocess(resize=32, crop=32, mean=OPENAI_MEAN, std=OPENAI_STD,
                                        interpolation="bicubic")
    model = open_clip.create_model(f"local-dir:{tiny_clip}").eval()
    with torch.no_grad():
        ref = model.encode_image(enc.preprocess(px))  # the unnormalised image embedding
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-5)
    enc.save(tmp_path / "clip")
    np.testing.assert_array_equal(load_encoder(tmp_path / "clip").encode(px), out)


def test_clip_model_id_errors(tmp_path):
    with pytest.raises(InvalidConfigError, match="not an open_clip architecture"):
        create_encoder(EncodeConfig(encoder="clip", model_id="ViT-Nope"), 2).load_weights()
    with pytest.raises(InvalidConfigError, match="not a pretrained tag of ViT-B-32"):
        create_encoder(EncodeConfig(encoder="clip", model_id="ViT-B-32:nope"), 2).load_weights()
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        create_encoder(EncodeConfig(encoder="clip",
                                    model_id=f"ViT-B-32:{tmp_path}/none.safetensors"),
                       2).load_weights()


# ---------------------------------------------------------------------------- offline


@pytest.fixture
def empty_offline_hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


@pytest.mark.parametrize("name,repo", [
    ("dinov2", "facebook/dinov2-base"),
    ("dinov3", "facebook/dinov3-vitb16-pretrain-lvd1689m"),
    ("clip", "timm/vit_base_patch32_clip_224.openai"),
])
def test_missing_weights_offline_say_what_to_download(empty_offline_hub, name, repo):
    enc = create_encoder(EncodeConfig(encoder=name), 2)
    with pytest.raises(WeightsNotFoundError) as info:
        enc.encode(_pixels(1, 8, 8))
    message = str(info.value)
    assert f"hf download {repo}" in message and "--local-dir" in message
    assert "--model-id /models/" in message and "HF_HUB_OFFLINE" in message
    assert not any(empty_offline_hub.rglob("*.safetensors"))
    if name == "dinov3":
        assert "gated" in message


def test_variant_names_resolve_to_hub_ids():
    def mid(name, variant):
        return create_encoder(EncodeConfig(encoder=name, model_id=variant), 2).model_id

    assert mid("dinov2", None) == "facebook/dinov2-base"
    assert mid("dinov2", "g") == "facebook/dinov2-giant"
    assert mid("dinov3", "S") == "facebook/dinov3-vits16-pretrain-lvd1689m"
    assert mid("dinov3", "l") == "facebook/dinov3-vitl16-pretrain-lvd1689m"
    assert mid("clip", None) == "ViT-B-32:openai"
    names = {e["name"]: e for e in available_encoders()}
    assert {"dinov2", "dinov3", "clip"} <= set(names)
    assert not names["dinov2"]["offline"] and not names["clip"]["needs_fit"]


# ---------------------------------------------------------------------------- the stage


@pytest.fixture
def tiny_project(project, tiny_folder):
    import_folder(project, tiny_folder, "tiny", ImportConfig(test_fraction=0.25))
    return project


def test_encode_job_with_tiny_dinov2(tiny_project, tiny_dinov2):
    from engine.jobs import JobManager
    from engine.project import Encoding
    from engine.stages import encode_stage

    cfg = EncodeConfig(encoder="dinov2", model_id=str(tiny_dinov2), batch_size=5, chunk_size=10)
    job = JobManager(tiny_project).run_inline(encode_stage.prepare(tiny_project, cfg))
    row = tiny_project.get(Encoding, job.result_id)
    assert (row.count, row.dim, row.encoder, row.offline) == (24, 32, "dinov2", False)
    emb = np.asarray(tiny_project.embeddings(row))
    enc = load_encoder(tiny_project.abs(row.state_path))
    paths = [tiny_project.abs(p) for p in tiny_project.images(row.dataset_id)["path"]]
    np.testing.assert_allclose(emb, enc.encode(enc.read_images(paths)), atol=1e-6)
    assert not list(tiny_project.abs(row.array_path).parent.glob("*.partial"))


def test_encode_prepare_fails_early_when_offline_weights_are_missing(tiny_project,
                                                                     empty_offline_hub):
    from engine.project import Job
    from engine.stages import encode_stage

    with pytest.raises(WeightsNotFoundError, match="hf download facebook/dinov2-small"):
        encode_stage.prepare(tiny_project, EncodeConfig(encoder="dinov2", model_id="s"))
    assert tiny_project.list(Job, kind="encode") == []  # nothing queued


def test_encode_job_resumes_after_a_cancel(tiny_project):
    """Cancel after the first chunk, retry the job (a real worker, same folder): the result
    equals an uninterrupted run. (PCA keeps the worker's imports light; the chunk loop is
    the same for every encoder.)"""
    from engine.jobs import JobManager, read_progress
    from engine.project import Encoding, Job
    from engine.stages import encode_stage

    jobs = JobManager(tiny_project)
    cfg = EncodeConfig(encoder="pca", dim=4, image_size=8, batch_size=4, chunk_size=8)
    whole = jobs.run_inline(encode_stage.prepare(tiny_project, cfg))
    expected = np.asarray(tiny_project.embeddings(tiny_project.get(Encoding, whole.result_id)))

    token = CancelToken()

    def stop_after_first_chunk(event):
        if event.stage == "encode" and event.step >= 8:
            token.cancel()

    spec = encode_stage.prepare(tiny_project, cfg)
    with pytest.raises(Cancelled):
        jobs.run_inline(spec, progress=stop_after_first_chunk, cancel=token)
    job = [j for j in tiny_project.list(Job) if j.status == "cancelled"][0]
    array = Path(spec.params["array_path"])
    marker = json.loads(array.with_name(array.name + ".progress.json").read_text())
    assert marker["done"] == 8 and marker["n"] == 24
    assert (Path(spec.params["state_dir"]) / MANIFEST).exists()  # saved before encoding
    jobs.retry(job.id)
    job = jobs.wait(job.id, timeout=180)
    assert job.status == "done", job.error
    got = np.asarray(tiny_project.embeddings(tiny_project.get(Encoding, job.result_id)))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert read_progress(jobs.folder(job))[-1]["step"] == 24
    assert not list(array.parent.glob("*.partial")) and not list(array.parent.glob("*.json"))


def test_encode_chunks_resume_in_process(tmp_path):
    """The chunk loop itself: interrupted at chunk 2 of 4, resumed, equals one pass (PCA)."""
    from engine.stages.encode_stage import encode_chunks

    px = _pixels(30, 4, 4, seed=6)
    labels = np.zeros(30, dtype=np.int64)
    enc = create_encoder(EncodeConfig(encoder="pca", dim=3, image_size=4), 1)
    enc.fit(px)
    one = np.asarray(encode_chunks(enc, lambda a, b: px[a:b], labels, tmp_path / "a.npy", 8))

    token = CancelToken()
    calls = []

    def pixels(a, b):
        calls.append(a)
        if len(calls) == 2:
            token.cancel()  # seen before the next chunk starts
        return px[a:b]

    with pytest.raises(Cancelled):
        encode_chunks(enc, pixels, labels, tmp_path / "b.npy", 8, cancel=token)
    assert json.loads((tmp_path / "b.npy.progress.json").read_text())["done"] == 8
    calls.clear()
    again = encode_chunks(enc, pixels, labels, tmp_path / "b.npy", 8)
    assert calls == [8, 16, 24]  # the finished chunk is not encoded again
    np.testing.assert_array_equal(np.asarray(again), one)
    assert not (tmp_path / "b.npy.partial").exists()


def test_cli_encode_with_a_local_model_and_the_offline_message(tmp_path, tiny_folder,
                                                               tiny_dinov2, empty_offline_hub,
                                                               capsys):
    from studio.cli import main

    proj = str(tmp_path / "cli")
    assert main(["import", "--project", proj, "--name", "tiny", str(tiny_folder)]) == 0
    capsys.readouterr()
    assert main(["encode", "--project", proj, "--encoder", "dinov2", "--model-id",
                 str(tiny_dinov2), "--batch-size", "8", "--chunk-size", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["encoder"], out["count"], out["dim"]) == ("dinov2", 24, 32)
    assert main(["encode", "--project", proj, "--encoder", "clip"]) == 2
    assert "hf download timm/vit_base_patch32_clip_224.openai" in capsys.readouterr().err


def test_encode_prepare_fails_early_on_a_missing_local_folder(tiny_project, tmp_path):
    """Online too: a mistyped folder is refused before any job row is written."""
    from engine.project import Job
    from engine.stages import encode_stage

    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        encode_stage.prepare(tiny_project, EncodeConfig(encoder="dinov2",
                                                  model_id=str(tmp_path / "nowhere")))
    assert tiny_project.list(Job, kind="encode") == []
