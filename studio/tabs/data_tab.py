"""Data tab: import the demo, a folder or a zip upload, the dataset's summary, a paginated
gallery of thumbnails (one page read at a time: fast at tens of thousands of images).

Handlers first (module-level, the context as first argument), then ``build``: the layout and
one line of wiring per event."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from engine.config import ImportConfig
from engine.errors import InvalidConfigError
from engine.project import Dataset, Image
from studio import ui
from studio.choices import (
    ALL,
    class_choices,
    dataset_choices,
    image_page,
    import_demo,
    progress_adapter,
    projects_root,
)
from studio.context import StudioContext
from studio.shared import Shared

log = logging.getLogger(__name__)

ZIP_MAX_BYTES = 8 * 1024 ** 3  # unpacked size of an uploaded zip
ZIP_MAX_FILES = 1_000_000


def summary(ctx: StudioContext, dataset_id: str | None) -> tuple[str, pd.DataFrame]:
    """Markdown summary and per-class counts (class, train, test) of a dataset."""
    if not dataset_id:
        return ("No dataset yet. Import the bundled **digits** (1,797 images of 10 classes, "
                "no download) or an image folder with one sub-folder per class."), \
            pd.DataFrame(columns=["class", "train", "test"])
    ds = ctx.project.get(Dataset, dataset_id)
    images = ctx.project.images(ds.id)
    counts = (images.groupby(["label", "class_name", "split"]).size().unstack(fill_value=0)
              .reset_index().sort_values("label"))
    for col in ("train", "test"):
        if col not in counts:
            counts[col] = 0
    table = counts[["class_name", "train", "test"]].rename(columns={"class_name": "class"})
    skipped = ds.skipped
    text = (f"**{ds.name}** — {ds.num_images:,} images, {ds.num_classes} classes, "
            f"{ds.num_train:,} train / {ds.num_test:,} held-out test  \n"
            f"<small>from {ds.source or 'unknown'} · id {ds.id}</small>")
    if skipped:
        text += f"  \n{len(skipped)} file(s) skipped at import, e.g. " \
                f"`{skipped[0].get('path')}`: {skipped[0].get('reason')}"
    return text, table


def image_details(ctx: StudioContext, image_id: str) -> tuple[str, str]:
    """(absolute path of the full image, markdown details)."""
    img = ctx.project.get(Image, image_id)
    text = (f"**{img.class_name}** (label {img.label}) · {img.split} split  \n"
            f"{img.width} x {img.height} px · index {img.idx}  \n"
            f"<small>id {img.id}<br>file {img.source_path or img.path}</small>")
    return str(ctx.project.abs(img.path)), text


def import_folder(ctx: StudioContext, folder: str, name: str, test_fraction: float,
                  progress: Any = None) -> Dataset:
    from engine import data

    if not folder or not folder.strip():
        raise InvalidConfigError("type the path of an image folder (one sub-folder per class)")
    path = Path(folder.strip()).expanduser()
    if ctx.restrict:  # reachable from the network: no browsing of the server's disk
        root = projects_root().resolve()
        if root not in path.resolve().parents:
            raise InvalidConfigError(
                f"this studio is reachable from the network: it imports folders only from "
                f"inside the projects folder {root}; upload a zip of the ImageFolder instead")
    name = (name or "").strip() or path.name
    return data.import_image_folder(ctx.project, path, name,
                                    ImportConfig(test_fraction=float(test_fraction)),
                                    progress=progress_adapter(progress))


def import_zip(ctx: StudioContext, zip_path: str | None, name: str, test_fraction: float,
               progress: Any = None) -> Dataset:
    """Import an uploaded zip of an ImageFolder: extracted safely (``engine.safezip``) into a
    temporary folder of the project's assets, imported, then removed.

    Raises:
        InvalidConfigError: no file; UnsafeArchiveError: traversal, links, a zip bomb;
        DatasetError: no class folder with images.
    """
    from engine import data
    from engine.safezip import extract_zip

    if not zip_path:
        raise InvalidConfigError("upload a .zip of an image folder first")
    src = Path(zip_path)
    if src.suffix.lower() != ".zip":
        raise InvalidConfigError(f"{src.name} is not a .zip archive")
    name = (name or "").strip() or src.stem
    tmp_root = ctx.project.assets / "uploads"
    tmp_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tmp_root, prefix="unzip-") as tmp:
        root = extract_zip(src, Path(tmp) / "x", max_bytes=ZIP_MAX_BYTES,
                           max_files=ZIP_MAX_FILES)
        # a zip of the folder itself holds one top folder: the ImageFolder is inside it
        entries = [p for p in root.iterdir() if not p.name.startswith((".", "__MACOSX"))]
        if len(entries) == 1 and entries[0].is_dir() and \
                any(c.is_dir() for c in entries[0].iterdir()):
            root = entries[0]
        return data.import_image_folder(ctx.project, root, name,
                                        ImportConfig(test_fraction=float(test_fraction)),
                                        progress=progress_adapter(progress))


# ---------------------------------------------------------------------- event handlers


def show_page(ctx: StudioContext, dataset_id: str | None, class_name: str | None,
              split: str, page: float | None) -> tuple[Any, ...]:
    """(gallery items, their ids, page, "page p of n") of the gallery."""
    items, ids, p, pages = image_page(ctx, dataset_id, class_name, split, int(page or 1))
    label = f"page {p} of {pages}" if dataset_id else ""
    return items, ids, p, label


def first_page(ctx: StudioContext, dataset_id: str | None, class_name: str | None,
               split: str) -> tuple[Any, ...]:
    return show_page(ctx, dataset_id, class_name, split, 1)


def prev_page(ctx: StudioContext, dataset_id: str | None, class_name: str | None, split: str,
              page: float | None) -> tuple[Any, ...]:
    return show_page(ctx, dataset_id, class_name, split, (page or 1) - 1)


def next_page(ctx: StudioContext, dataset_id: str | None, class_name: str | None, split: str,
              page: float | None) -> tuple[Any, ...]:
    return show_page(ctx, dataset_id, class_name, split, (page or 1) + 1)


def show_dataset(ctx: StudioContext, dataset_id: str | None) -> tuple[Any, ...]:
    text, table = summary(ctx, dataset_id)
    return (text, table, gr.update(choices=class_choices(ctx, dataset_id), value=ALL),
            *show_page(ctx, dataset_id, ALL, "all", 1))


@ui.guard(2, status=1)
def select_image(ctx: StudioContext, ids: list[str], evt: gr.SelectData) -> tuple[Any, Any]:
    if evt.index is None or evt.index >= len(ids):
        return gr.skip(), gr.skip()
    return image_details(ctx, ids[evt.index])


def imported(ctx: StudioContext, ds: Dataset) -> tuple[str, Any]:
    return (ui.ok_md(f"imported {ds.name}: {ds.num_images:,} images, {ds.num_classes} "
                     f"classes"), ui.dropdown(dataset_choices(ctx), ds.id))


@ui.guard(2)
def on_demo(ctx: StudioContext, progress: gr.Progress = gr.Progress()) -> tuple[str, Any]:
    return imported(ctx, import_demo(ctx, progress=progress))


@ui.guard(2)
def on_folder(ctx: StudioContext, folder: str, name: str, fraction: float,
              progress: gr.Progress = gr.Progress()) -> tuple[str, Any]:
    return imported(ctx, import_folder(ctx, folder, name, fraction, progress=progress))


@ui.guard(2)
def on_zip(ctx: StudioContext, zip_path: str | None, name: str, fraction: float,
           progress: gr.Progress = gr.Progress()) -> tuple[str, Any]:
    return imported(ctx, import_zip(ctx, zip_path, name, fraction, progress=progress))


def refresh(ctx: StudioContext, dataset_id: str | None) -> Any:
    return ui.dropdown(dataset_choices(ctx), dataset_id)


# ---------------------------------------------------------------------- layout and wiring


def build(ctx: StudioContext, shared: Shared) -> None:
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            gr.Markdown("#### Import", elem_classes=["section-title"])
            demo_btn = gr.Button("Import the demo digits (1,797 images, no download)",
                                 variant="primary", elem_id="import-demo")
            with gr.Accordion("…or an image folder on this machine", open=False):
                folder = gr.Textbox(label="Folder (one sub-folder per class)",
                                    placeholder="/data/imagenet-100/train")
                with gr.Row():
                    name = gr.Textbox(label="Dataset name", placeholder="default: folder name")
                    test_fraction = gr.Number(label="Test fraction", value=0.2, minimum=0.01,
                                              maximum=0.9, step=0.05)
                folder_btn = gr.Button("Import folder")
            with gr.Accordion("…or upload a .zip of an image folder", open=False):
                upload = gr.File(label="Zip of an ImageFolder (one sub-folder per class)",
                                 file_types=[".zip"], type="filepath", elem_id="upload-zip")
                with gr.Row(elem_classes=["bottom-align"]):
                    zip_name = gr.Textbox(label="Dataset name", placeholder="default: zip name",
                                          scale=2)
                    zip_btn = gr.Button("Import zip", scale=1, elem_id="import-zip")
            status = gr.HTML(elem_id="data-status")
            shared.dataset = gr.Dropdown(label="Dataset", choices=[], value=None,
                                         allow_custom_value=True,
                                         elem_id="dataset-choice")
            info = gr.Markdown(elem_id="dataset-summary")
            counts = gr.Dataframe(label="Images per class", interactive=False, max_height=300)
        with gr.Column(scale=5):
            with gr.Row(elem_classes=["bottom-align"]):
                cls = gr.Dropdown(label="Class", choices=[ALL], value=ALL,
                                  allow_custom_value=True, scale=2)
                split = gr.Radio(["all", "train", "test"], value="all", label="Split", scale=3)
                prev_btn = gr.Button("◀ Prev", size="sm", scale=1, min_width=70)
                page = gr.Number(value=1, label="Page", precision=0, minimum=1, scale=1,
                                 min_width=70)
                next_btn = gr.Button("Next ▶", size="sm", scale=1, min_width=70)
            page_info = gr.Markdown(elem_classes=["muted"])
            with gr.Row():
                gallery = gr.Gallery(columns=10, height=470, allow_preview=False,
                                     object_fit="contain", show_label=False, scale=4,
                                     elem_id="data-gallery")
                with gr.Column(scale=1, min_width=200):
                    gr.Markdown("Selected image", elem_classes=["image-caption"])
                    detail_img = gr.Image(show_label=False, height=200, interactive=False,
                                          buttons=[], elem_id="image-detail")
                    detail_txt = gr.Markdown("Click a thumbnail for its details.")
    page_ids = gr.State([])
    dataset = shared.dataset
    page_out = [gallery, page_ids, page, page_info]

    dataset.change(ui.bind(show_dataset, ctx), dataset, [info, counts, cls, *page_out])
    cls.change(ui.bind(first_page, ctx), [dataset, cls, split], page_out)
    split.change(ui.bind(first_page, ctx), [dataset, cls, split], page_out)
    page.submit(ui.bind(show_page, ctx), [dataset, cls, split, page], page_out)
    prev_btn.click(ui.bind(prev_page, ctx), [dataset, cls, split, page], page_out)
    next_btn.click(ui.bind(next_page, ctx), [dataset, cls, split, page], page_out)
    gallery.select(ui.bind(select_image, ctx), page_ids, [detail_img, detail_txt])
    zip_btn.click(ui.bind(on_zip, ctx), [upload, zip_name, test_fraction], [status, dataset],
                  concurrency_id="import", api_name="import_zip")
    demo_btn.click(ui.bind(on_demo, ctx), None, [status, dataset], concurrency_id="import",
                   api_name="import_demo")
    folder_btn.click(ui.bind(on_folder, ctx), [folder, name, test_fraction], [status, dataset],
                     concurrency_id="import", api_name="import_folder")
    shared.on_refresh(ui.bind(refresh, ctx), [dataset], [dataset])
