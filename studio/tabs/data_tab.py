"""Data tab: import the demo, a folder or a zip upload, the dataset's summary, a paginated
gallery of thumbnails (one page read at a time: fast at tens of thousands of images).

Handlers first (module-level, the context as first argument), then ``build``: the layout and
one line of wiring per event."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from engine.config import ImportConfig
from engine.errors import InvalidConfigError
from engine.project import Dataset, Image, Job
from studio import ui
from studio.choices import (
    ALL,
    class_choices,
    dataset_choices,
    discard_upload,
    image_page,
    import_demo,
    import_outcome,
    projects_root,
    receive_zip,
)
from studio.context import StudioContext
from studio.shared import Shared

log = logging.getLogger(__name__)

ZIP_MAX_BYTES = 8 * 1024 ** 3  # unpacked size of an uploaded zip
ZIP_MAX_FILES = 1_000_000


SPLIT_COLUMNS = ["train", "val", "test", "unused"]


def summary(ctx: StudioContext, dataset_id: str | None) -> tuple[str, pd.DataFrame]:
    """Markdown summary and per-class counts (class, train, val, test, unused) of a dataset,
    with a warning per kind of split too small to trust (``engine.data.split_warnings``)."""
    from engine import data

    if not dataset_id:
        return ("No dataset yet. Import the bundled **digits** (1,797 images of 10 classes, "
                "no download) or an image folder with one sub-folder per class."), \
            pd.DataFrame(columns=["class", *SPLIT_COLUMNS])
    ds = ctx.project.get(Dataset, dataset_id)
    images = ctx.project.images(ds.id)
    counts = (images.groupby(["label", "class_name", "split"]).size().unstack(fill_value=0)
              .reset_index().sort_values("label"))
    for col in SPLIT_COLUMNS:
        if col not in counts:
            counts[col] = 0
    table = counts[["class_name", *SPLIT_COLUMNS]].rename(columns={"class_name": "class"})
    skipped = ds.skipped
    unused = ds.num_images - ds.num_train - ds.num_val - ds.num_test
    config = ds.config
    regime = (f"  \n{config['train_per_class']} real training images per class "
              f"(the low-data regime; {unused:,} unused)" if config.get("train_per_class")
              else "")
    text = (f"**{ds.name}** — {ds.num_images:,} images, {ds.num_classes} classes, "
            f"{ds.num_train:,} train / {ds.num_val:,} validation / {ds.num_test:,} held-out "
            f"test{regime}  \n"
            f"<small>from {ds.source or 'unknown'} · id {ds.id}</small>")
    if skipped:
        text += f"  \n{len(skipped)} file(s) skipped at import, e.g. " \
                f"`{skipped[0].get('path')}`: {skipped[0].get('reason')}"
    known = {k: v for k, v in config.items() if k in ImportConfig.__dataclass_fields__}
    warned = data.split_warnings(images, ImportConfig.from_dict(known))
    if warned:
        text += "  \n⚠ " + "  \n⚠ ".join(warned)
    return text, table


DETAIL_SIDE = 1024  # a referenced image (outside the assets) is sent at most this big


def image_details(ctx: StudioContext, image_id: str) -> tuple[Any, str]:
    """(the full image: its path, or for an image of a referenced folder, which the server
    does not serve, the image itself; markdown details)."""
    img = ctx.project.get(Image, image_id)
    text = (f"**{img.class_name}** (label {img.label}) · {img.split} split  \n"
            f"{img.width} x {img.height} px · index {img.idx}  \n"
            f"<small>id {img.id}<br>file {img.source_path or img.path}</small>")
    path = ctx.project.abs(img.path)
    if ctx.project.assets.resolve() in path.parents:
        return str(path), text
    from PIL import Image as PILImage

    with PILImage.open(path) as full:
        full.draft("RGB", (DETAIL_SIDE, DETAIL_SIDE))
        small = full.convert("RGB")
    small.thumbnail((DETAIL_SIDE, DETAIL_SIDE))
    return small, text


def import_config(test_fraction: float | None, val_fraction: float | None,
                  train_per_class: float | None, mode: str = ImportConfig.mode) -> ImportConfig:
    """The form's split options as an ImportConfig (an empty or 0 N: every image trains).

    Raises:
        InvalidConfigError: a value out of bounds (the config's own message), a fractional N.
    """
    n = None
    if train_per_class not in (None, "") and float(train_per_class) != 0:
        if float(train_per_class) != int(float(train_per_class)):
            raise InvalidConfigError(f"images per class must be a whole number, got "
                                     f"{train_per_class}")
        n = int(float(train_per_class))
    return ImportConfig(
        test_fraction=float(ImportConfig.test_fraction if test_fraction is None
                            else test_fraction),
        val_fraction=float(val_fraction or 0.0), train_per_class=n,
        mode=mode or ImportConfig.mode)


def import_folder(ctx: StudioContext, folder: str, name: str,
                  config: ImportConfig | None = None) -> Job:
    """Queue the import of a folder of the server (an ``import`` job)."""
    from engine.stages import import_stage

    if not folder or not folder.strip():
        raise InvalidConfigError("type the path of an image folder (one sub-folder per class)")
    path = Path(folder.strip()).expanduser()
    config = config or ImportConfig()
    if config.mode == "reference":  # the studio reads nothing outside the projects folder
        root = projects_root().resolve()
        if root not in path.resolve().parents:
            raise InvalidConfigError(
                f"the studio references only folders inside the projects folder {root}; "
                f"link or copy this folder instead (the command line's `import --mode "
                f"reference` may reference any folder)")
    if ctx.restrict:  # reachable from the network: no browsing of the server's disk
        root = projects_root().resolve()
        if root not in path.resolve().parents:
            raise InvalidConfigError(
                f"this studio is reachable from the network: it imports folders only from "
                f"inside the projects folder {root}; upload a zip of the ImageFolder instead")
    name = (name or "").strip() or path.name
    return ctx.submit(import_stage.prepare(ctx.project, path, name, config))


def import_zip(ctx: StudioContext, zip_path: str | None, name: str,
               config: ImportConfig | None = None) -> Job:
    """Queue the import of an uploaded zip of an ImageFolder. Here, only what is quick
    (``studio.choices.receive_zip``: rights, quota, the archive's directory, a copy into the
    project's ``uploads/``); the job unpacks it (counting the real bytes), imports it and
    removes that folder.

    Raises:
        InvalidConfigError: no file; UnsafeArchiveError: traversal, links, a zip bomb;
        DatasetError: a taken name; SignInRequiredError / QuotaError (a public studio).
    """
    from engine.stages import import_stage

    # before anything else: a visitor of a public studio may not import, nor upload past
    # the quota
    tmp, archive = receive_zip(ctx, zip_path, "an image folder", "import a dataset",
                               ZIP_MAX_BYTES, ZIP_MAX_FILES)
    name = (name or "").strip() or Path(zip_path or "").stem
    try:
        return ctx.submit(import_stage.prepare(
            ctx.project, None, name, config or ImportConfig(), cleanup=tmp, archive=archive,
            max_bytes=ZIP_MAX_BYTES, max_files=ZIP_MAX_FILES))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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


def submitted(job: Job) -> tuple[str, str]:
    """(status, pending job id) once an import job is queued."""
    return (ui.ok_md(f"{job.title}: queued; follow it in the Jobs panel below (the dataset "
                     f"appears here when it is done)"), job.id)


@ui.guard(2)
def on_demo(ctx: StudioContext, test_fraction: float | None, val_fraction: float | None,
            per_class: float | None) -> tuple[str, str]:
    return submitted(import_demo(ctx, config=import_config(test_fraction, val_fraction,
                                                            per_class)))


@ui.guard(2)
def on_folder(ctx: StudioContext, folder: str, name: str, test_fraction: float | None,
              val_fraction: float | None, per_class: float | None,
              mode: str = ImportConfig.mode) -> tuple[str, str]:
    config = import_config(test_fraction, val_fraction, per_class, mode)
    return submitted(import_folder(ctx, folder, name, config))


@ui.guard(2)
def on_zip(ctx: StudioContext, zip_path: str | None, name: str, test_fraction: float | None,
           val_fraction: float | None, per_class: float | None) -> tuple[str, str]:
    try:
        config = import_config(test_fraction, val_fraction, per_class)
        return submitted(import_zip(ctx, zip_path, name, config))
    finally:  # extracted (or refused): the upload itself is no longer needed
        discard_upload(zip_path)


def refresh(ctx: StudioContext, dataset_id: str | None, pending: str | None
            ) -> tuple[Any, str, Any]:
    """(dataset dropdown, pending import job, status) after the project's rows changed: a
    finished import selects its dataset and says so; a failed one says why."""
    if not pending:
        return ui.dropdown(dataset_choices(ctx), dataset_id), "", gr.skip()
    state, ds = import_outcome(ctx, pending)
    if state == "running":
        return ui.dropdown(dataset_choices(ctx), dataset_id), pending, gr.skip()
    if ds is None:
        job = ctx.project.get(Job, pending)
        return (ui.dropdown(dataset_choices(ctx), dataset_id), "",
                ui.error_md(f"{job.title}: {state}" + (f": {job.error}" if job.error else "")))
    text = (f"imported {ds.name}: {ds.num_images:,} images, {ds.num_classes} classes "
            f"({ds.num_train:,} train / {ds.num_val:,} val / {ds.num_test:,} test)")
    known = {k: v for k, v in ds.config.items() if k in ImportConfig.__dataclass_fields__}
    from engine import data

    warned = data.split_warnings(ctx.project.images(ds.id), ImportConfig.from_dict(known))
    if warned:  # the splits are too small to trust: say so where the user looks
        return (ui.dropdown(dataset_choices(ctx), ds.id), "",
                f'<div class="status-warn">{ui.escape(text)}<br>⚠ '
                + "<br>⚠ ".join(ui.escape(w) for w in warned) + "</div>")
    return ui.dropdown(dataset_choices(ctx), ds.id), "", ui.ok_md(text)


# ---------------------------------------------------------------------- layout and wiring


def build(ctx: StudioContext, shared: Shared) -> None:
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            gr.Markdown("#### Import", elem_classes=["section-title"])
            demo_btn = gr.Button("Import the demo digits (1,797 images, no download)",
                                 variant="primary", elem_id="import-demo")
            with gr.Accordion("Splits (every import below)", open=False):
                with gr.Row():
                    test_fraction = gr.Number(
                        label="Test fraction", value=ImportConfig.test_fraction, minimum=0.01,
                        maximum=0.9, step=0.05, elem_id="import-test-fraction",
                        info="held out for the final report; fixed by the folder and the "
                             "seed, whatever the two options beside it")
                    val_fraction = gr.Number(
                        label="Validation fraction", value=ImportConfig.val_fraction,
                        minimum=0.0, maximum=0.9, step=0.05, elem_id="import-val-fraction",
                        info="carved from the non-test images of each class; every choice "
                             "(band, recipe) is made on it; 0: none")
                    per_class = gr.Number(
                        label="Training images per class", value=None, precision=0,
                        minimum=0, elem_id="import-train-per-class",
                        info="the low-data regime: keep N real training images per class "
                             "(the rest kept as 'unused'); empty or 0: all")
            with gr.Accordion("…or an image folder on this machine", open=False):
                folder = gr.Textbox(label="Folder (one sub-folder per class)",
                                    placeholder="/data/imagenet-100/train")
                name = gr.Textbox(label="Dataset name", placeholder="default: folder name")
                mode = gr.Radio(
                    [("link", "link"), ("copy", "copy"), ("reference", "reference")],
                    value=ImportConfig.mode, label="Keep the images as",
                    elem_id="import-mode",
                    info="link: hard links to your files, no extra space (a copy when the "
                         "folder is on another disk); copy; reference: left where they are "
                         "(folders inside the projects folder only). Images that must be "
                         "converted (CMYK, 16-bit, palette, rotation) are stored as PNG.")
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
                split = gr.Radio(["all", "train", "val", "test", "unused"], value="all",
                                 label="Split", scale=3)
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
    pending = gr.State("")  # the import job this page waits for
    splits = [test_fraction, val_fraction, per_class]
    dataset = shared.dataset
    page_out = [gallery, page_ids, page, page_info]

    dataset.change(ui.bind(show_dataset, ctx), dataset, [info, counts, cls, *page_out])
    cls.change(ui.bind(first_page, ctx), [dataset, cls, split], page_out)
    split.change(ui.bind(first_page, ctx), [dataset, cls, split], page_out)
    page.submit(ui.bind(show_page, ctx), [dataset, cls, split, page], page_out)
    prev_btn.click(ui.bind(prev_page, ctx), [dataset, cls, split, page], page_out)
    next_btn.click(ui.bind(next_page, ctx), [dataset, cls, split, page], page_out)
    gallery.select(ui.bind(select_image, ctx), page_ids, [detail_img, detail_txt])
    zip_btn.click(ui.bind(on_zip, ctx), [upload, zip_name, *splits], [status, pending],
                  concurrency_id="import", api_name="import_zip").then(
        lambda: None, None, upload, api_visibility="private")  # the upload is gone: clear it
    demo_btn.click(ui.bind(on_demo, ctx), splits, [status, pending], concurrency_id="import",
                   api_name="import_demo")
    folder_btn.click(ui.bind(on_folder, ctx), [folder, name, *splits, mode], [status, pending],
                     concurrency_id="import", api_name="import_folder")
    shared.on_refresh(ui.bind(refresh, ctx), [dataset, pending], [dataset, pending, status])
