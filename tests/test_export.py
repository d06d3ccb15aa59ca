"""ImageFolder export: names, layout, manifest, card, links, overwrite rules, zip."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from engine.config import ExportConfig
from engine.errors import Cancelled, DatasetError, InvalidConfigError
from engine.imagefolder import export_imagefolder, is_previous_export, sanitize_name, zip_export
from engine.progress import CancelToken

CLASSES = ["golden retriever", "café", ".hidden", "../evil", "a/b", "a_b", "CON", ""]


def _rows(tmp_path: Path, classes=CLASSES, per_class=2, kind="synthetic") -> pd.DataFrame:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    records = []
    for c, name in enumerate(classes):
        for i in range(per_class):
            path = src / f"{kind}_{c}_{i}.png"
            Image.fromarray(np.full((4, 4, 3), c * 20 + i, np.uint8)).save(path)
            records.append({"path": str(path), "class_name": name, "kind": kind,
                            "seed": 100 * c + i, "source_image_id": f"img-{c}",
                            "model_id": "mdl-1", "encoder": "pca", "sampler": "ddim",
                            "steps": 10, "guidance": 1.0, "distance": 0.1 * i,
                            "selection": "middle"})
    return pd.DataFrame(records)


@pytest.mark.parametrize("name, expected", [
    ("golden retriever", "golden retriever"),
    ("../evil", "___evil"),
    ("a/b", "a_b"),
    ("a\\b", "a_b"),
    (".", "_"),
    ("..", "__"),
    (".hidden", "_hidden"),
    ("", "_"),
    ("  ", "_"),
    ("tab\there\x00", "tab_here_"),
    ("CON", "_CON"),
    ("nul.png", "_nul.png"),
    ("trailing. ", "trailing"),
    ("cafe\u0301", "caf\u00e9"),  # NFC
    ("犬", "犬"),
])
def test_sanitize_name(name, expected):
    assert sanitize_name(name) == expected


def test_sanitize_name_caps_length_on_characters():
    out = sanitize_name("é" * 500)
    assert len(out.encode("utf-8")) <= 120 and set(out) == {"é"}


def test_export_loads_with_imagefolder_and_stays_inside(tmp_path):
    from torchvision.datasets import ImageFolder

    rows = _rows(tmp_path)
    out = tmp_path / "export"
    card = {"title": "Demo export", "description": "Middle band of a 2x generation.",
            "band": "0.25-0.75"}
    result = export_imagefolder(rows, out, ExportConfig(), card=card)
    assert result["count"] == len(rows) == 16
    assert result["per_class"]["café"] == 2 and result["per_class"]["../evil"] == 2
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(folders) == len(CLASSES)  # "a/b" and "a_b" collide -> suffixed, not merged
    for p in out.rglob("*"):  # everything stays inside out_dir
        assert p.resolve().is_relative_to(out.resolve())
        assert not p.is_symlink()
    assert not (tmp_path / "evil").exists()
    assert all(not name.startswith(".") for name in folders)
    dataset = ImageFolder(str(out))
    assert len(dataset) == 16 and len(dataset.classes) == 8
    image, target = dataset[0]
    assert image.size == (4, 4)

    manifest = pd.read_csv(out / "manifest.csv")
    for col in ("relative_path", "class_name", "kind", "source_path", "seed", "source_image_id",
                "model_id", "encoder", "sampler", "steps", "guidance", "distance", "selection"):
        assert col in manifest.columns, col
    assert all((out / rel).is_file() for rel in manifest["relative_path"])
    parquet = pd.read_parquet(out / "manifest.parquet")
    assert list(parquet["relative_path"]) == list(manifest["relative_path"])
    text = (out / "README.md").read_text(encoding="utf-8")
    assert "Demo export" in text and "Middle band" in text and "**band**" in text
    assert "café" in text and "mdl-1" in text
    assert is_previous_export(out)
    assert not any(p.name.startswith(".export") for p in tmp_path.iterdir())  # temp removed


def test_export_link_mode_and_real_rows(tmp_path):
    syn = _rows(tmp_path, classes=["x", "y"])
    real = _rows(tmp_path, classes=["x"], kind="real")
    rows = pd.concat([syn, real])
    result = export_imagefolder(rows, tmp_path / "linked", ExportConfig(link=True))
    assert result["count"] == 4  # real rows left out without include_real
    assert result["linked"] == 4
    first = Path(syn["path"].iloc[0])
    assert os.stat(first).st_nlink >= 2
    result = export_imagefolder(rows, tmp_path / "both",
                                ExportConfig(include_real=True, link=False))
    assert result["count"] == 6 and result["linked"] == 0
    assert result["per_class"] == {"x": 4, "y": 2}
    manifest = pd.read_csv(tmp_path / "both" / "manifest.csv")
    assert sorted(manifest["kind"].unique()) == ["real", "synthetic"]


def test_export_overwrite_rules(tmp_path):
    rows = _rows(tmp_path, classes=["x", "y"])
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is fine
    assert export_imagefolder(rows, out, ExportConfig())["replaced"] is False
    # a previous export is replaced whole
    (out / "x" / "stale.png").write_bytes(b"old")
    result = export_imagefolder(rows.iloc[:2], out, ExportConfig())
    assert result["replaced"] is True and result["count"] == 2
    assert not (out / "x" / "stale.png").exists() and not (out / "y").exists()
    # a foreign non-empty folder is refused and left untouched
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    with pytest.raises(InvalidConfigError, match="not empty"):
        export_imagefolder(rows, foreign, ExportConfig())
    assert (foreign / "thesis.tex").read_text() == "keep me"
    # a file in the way is refused
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidConfigError, match="not a folder"):
        export_imagefolder(rows, tmp_path / "file", ExportConfig())


def test_export_errors_and_cancel(tmp_path):
    rows = _rows(tmp_path, classes=["x"])
    with pytest.raises(InvalidConfigError, match="nothing to export: the selection is empty"):
        export_imagefolder(rows.iloc[:0], tmp_path / "e", ExportConfig())
    with pytest.raises(InvalidConfigError, match="column"):
        export_imagefolder(rows.drop(columns=["kind"]), tmp_path / "e", ExportConfig())
    missing = rows.assign(path=str(tmp_path / "nope.png"))
    with pytest.raises(DatasetError, match="missing"):
        export_imagefolder(missing, tmp_path / "e", ExportConfig())
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        export_imagefolder(rows, tmp_path / "c", ExportConfig(), cancel=token)
    assert not (tmp_path / "c").exists()
    assert not any(".export-" in p.name for p in tmp_path.iterdir())


def test_zip_export(tmp_path):
    rows = _rows(tmp_path, classes=["x", "y"])
    out = tmp_path / "ds"
    export_imagefolder(rows, out, ExportConfig())
    zpath = zip_export(out, tmp_path / "ds.zip")
    with zipfile.ZipFile(zpath) as zf:
        names = zf.namelist()
        assert "ds/manifest.csv" in names and "ds/x/synthetic_0_0.png" in names
        assert zf.getinfo("ds/x/synthetic_0_0.png").compress_type == zipfile.ZIP_STORED
    with pytest.raises(InvalidConfigError):
        zip_export(out, out / "inside.zip")
    # progress as it goes; a cancelled zip leaves nothing behind
    events = []
    zip_export(out, tmp_path / "again.zip", progress=events.append)
    assert events[0].stage == "zip" and events[-1].step == events[-1].total == len(names)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        zip_export(out, tmp_path / "cancelled.zip", cancel=token)
    assert not list(tmp_path.glob("cancelled.zip*"))


def test_export_train_val_split_seeded_stratified(tmp_path):
    from torchvision.datasets import ImageFolder

    syn = _rows(tmp_path, classes=["x", "y"], per_class=10)
    real = _rows(tmp_path, classes=["x", "y"], per_class=4, kind="real")
    rows = pd.concat([syn, real])
    config = ExportConfig(include_real=True, val_fraction=0.25, split_seed=3)
    result = export_imagefolder(rows, tmp_path / "split", config)
    out = tmp_path / "split"
    manifest = pd.read_csv(out / "manifest.csv")
    # per (kind, class): 10 -> 2.5 rounds to 3 in val, 4 -> 1 in val
    val = manifest[manifest["split"] == "val"].groupby(["kind", "class_name"]).size()
    assert val.to_dict() == {("real", "x"): 1, ("real", "y"): 1, ("synthetic", "x"): 3,
                             ("synthetic", "y"): 3}
    assert result["splits"] == {"train": 20, "val": 8}
    assert all(p.startswith(("train/", "val/")) for p in manifest["relative_path"])
    train, valset = ImageFolder(str(out / "train")), ImageFolder(str(out / "val"))
    assert len(train) == 20 and len(valset) == 8 and train.classes == valset.classes == ["x", "y"]
    # seeded: the same seed gives the same split, another seed another one
    again = export_imagefolder(rows, tmp_path / "again", config)
    assert again["splits"] == result["splits"]
    m2 = pd.read_csv(tmp_path / "again" / "manifest.csv")
    assert m2["relative_path"].tolist() == manifest["relative_path"].tolist()
    other = export_imagefolder(rows, tmp_path / "other", config.replace(split_seed=4))
    m3 = pd.read_csv(tmp_path / "other" / "manifest.csv")
    assert m3["relative_path"].tolist() != manifest["relative_path"].tolist()
    assert other["count"] == 28
    card = (out / "README.md").read_text(encoding="utf-8")
    assert 'ImageFolder("split/train")' in card and "8 in val" in card
    with pytest.raises(InvalidConfigError):
        ExportConfig(val_fraction=1.0)


def test_export_loads_with_hugging_face_imagefolder(tmp_path):
    datasets = pytest.importorskip("datasets")

    rows = _rows(tmp_path, classes=["cat", "dog"], per_class=4)
    flat = tmp_path / "flat"
    export_imagefolder(rows, flat)
    meta = pd.read_csv(flat / "metadata.csv")
    assert meta.columns[0] == "file_name" and "seed" in meta.columns
    ds = datasets.load_dataset("imagefolder", data_dir=str(flat),
                               cache_dir=str(tmp_path / "hf-cache"))
    train = ds["train"].class_encode_column("label")
    assert len(train) == 8 and train.features["label"].names == ["cat", "dog"]
    assert train["label"].count(0) == 4
    assert sorted(train["seed"]) == sorted(rows["seed"].tolist())  # provenance came along
    assert train[0]["image"].size == (4, 4)

    split = tmp_path / "split"
    export_imagefolder(rows, split, ExportConfig(val_fraction=0.25))
    ds = datasets.load_dataset("imagefolder", data_dir=str(split),
                               cache_dir=str(tmp_path / "hf-cache"))
    assert sorted(ds.keys()) == ["train", "validation"]
    assert len(ds["train"]) == 6 and len(ds["validation"]) == 2
    assert set(ds["validation"]["class_name"]) == {"cat", "dog"}


def test_export_writes_one_size_recorded_in_the_manifest(tmp_path):
    real = _rows(tmp_path, classes=["a", "b"], kind="real")  # 4x4
    syn = _rows(tmp_path, classes=["a", "b"], kind="synthetic")
    for p in syn["path"]:  # the synthetic images at 8x8, as a demo RCDM makes them
        Image.fromarray(np.full((8, 8, 3), 77, np.uint8)).save(p)
    rows = pd.concat([real, syn], ignore_index=True)
    out = export_imagefolder(rows, tmp_path / "out", ExportConfig(include_real=True))
    assert (out["size"], out["resized"]) == (4, 4)
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    for rel in manifest["relative_path"]:
        with Image.open(tmp_path / "out" / rel) as img:
            assert img.size == (4, 4)
    assert set(manifest["width"]) == set(manifest["height"]) == {4}
    assert manifest.groupby("kind")["source_size"].first().to_dict() == {
        "real": "4x4", "synthetic": "8x8"}
    assert manifest["resized"].tolist() == [False] * 4 + [True] * 4
    # a flat 8x8 image comes out flat: resizing keeps its value
    with Image.open(tmp_path / "out" / manifest["relative_path"].iloc[-1]) as img:
        assert np.abs(np.asarray(img).astype(int) - 77).max() <= 1
    assert "4 x 4 pixels" in (tmp_path / "out" / "README.md").read_text()
    # a given size; the synthetic images alone take the reference's (the real images') size
    assert export_imagefolder(rows, tmp_path / "o2", ExportConfig(include_real=True,
                                                                   size=6))["size"] == 6
    out = export_imagefolder(syn, tmp_path / "o3", size_reference=list(real["path"]))
    assert out["size"] == 4 and out["resized"] == 4
    assert export_imagefolder(syn, tmp_path / "o4")["resized"] == 0  # its own size
    with pytest.raises(InvalidConfigError, match=r"size must be in \[0, 1024\]"):
        ExportConfig(size=5000)
