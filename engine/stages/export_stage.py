"""Export: a selection (optionally with the real training images) as an ImageFolder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.config import ExportConfig
from engine.paths import inside, sanitize_name
from engine.progress import CancelToken, ProgressFn
from engine.project import Export, Generation, Model, Project, Selection, dumps, new_id
from engine.stages import JobSpec, common

log = logging.getLogger(__name__)

MAX_SIZE_REFERENCE = 256  # real images whose most common size is an export's default


def band_text(how: dict[str, Any]) -> str:
    """A short description of how a selection was made, for the manifest's ``band`` column."""
    band = how.get("band")
    if not band:
        return str(how.get("kind", ""))
    unit = "quantile" if band.get("mode", "quantile") == "quantile" else "distance"
    text = f"{unit} {band.get('low', 0):g}-{band.get('high', 1):g}"
    if band.get("per_class"):
        text += f" ({len(band['per_class'])} per-class overrides)"
    if band.get("outlier", "none") != "none":
        text += f", outliers: {band['outlier']}"
    if band.get("target_per_class", 0):
        text += f", target {band['target_per_class']}/class ({band.get('target_pick')})"
    return text


def prepare(project: Project, config: ExportConfig, selection_ref: str,
            out_dir: str | Path | None = None) -> JobSpec:
    """Queue the export of a selection.

    Args:
        out_dir: the folder to write, anywhere (the caller checks it: the studio keeps it in
            the projects folder; on the command line the local user chose it); None: a new
            folder in the project's ``exports/``, named after the selection (sanitised by
            ``engine.paths.sanitize_name``, so no name leaves that folder).

    Raises:
        InvalidConfigError: an empty selection.
    """
    from engine.errors import InvalidConfigError

    sel = project.get(Selection, selection_ref)
    gen = project.get(Generation, sel.generation_id)
    model = project.get(Model, gen.model_id)
    ds = common.dataset(project, gen.dataset_id)
    samples = project.samples(gen.id).iloc[project.selection_members(sel)]
    if len(samples) == 0:
        raise InvalidConfigError("nothing to export: the selection is empty")
    gconf = gen.config
    rows = pd.DataFrame({
        "path": [str(project.abs(p)) for p in samples["path"]],
        "class_name": samples["class_name"].to_numpy(),
        "kind": "synthetic",
        "sample_id": samples["id"].to_numpy(),
        "source_image_id": samples["source_image_id"].to_numpy(),
        "seed": samples["seed"].to_numpy(),
        "model_id": model.id, "model": model.name, "encoder": model.encoder,
        "sampler": samples["sampler"].to_numpy(), "steps": samples["steps"].to_numpy(),
        "guidance": samples["guidance"].to_numpy(),
        "generation": gen.name, "selection": sel.name, "selection_id": sel.id,
        "band": band_text(sel.config),
    })
    if gconf.get("image_format", "png") != "png":  # the lossy encoder's quality
        rows["quality"] = int(gconf.get("quality", 95))
    if sel.encoding_id:
        try:
            from engine.stages import curate_stage

            band = sel.config.get("band", {})
            bd = curate_stage.band_data(project, gen.id, sel.encoding_id,
                                        centroid=band.get("centroid", "real"),
                                        metric=band.get("metric", "cosine"))
            members = project.selection_members(sel)
            rank, counts = bd.class_ranks()[:2]
            rows["distance"] = bd.distances[members]
            rows["class_quantile"] = (rank[members] + 0.5) / np.maximum(
                counts[bd.labels[members]], 1)
            rows["judged_by"] = bd.encoding.encoder
            rows["distance_metric"] = bd.metric
            rows["centroid"] = bd.centroid
        except Exception:  # noqa: BLE001 - distances are a nicety of the manifest
            log.info("export: no distances for selection %s", sel.name, exc_info=True)
    through = sel.config.get("hand", {}).get("through", "")
    if through:  # the hand decisions in force when the selection was saved
        from engine.stages import curate_stage

        state = curate_stage.hand_state(project, gen.id, through=through)
        rows["hand"] = np.where(state[project.selection_members(sel)] == 1, "kept by hand", "")
    if config.include_real:
        images = project.images(ds.id, split="train")
        real = pd.DataFrame({"path": [str(project.abs(p)) for p in images["path"]],
                             "class_name": images["class_name"].to_numpy(), "kind": "real",
                             "sample_id": images["id"].to_numpy()})
        rows = pd.concat([real, rows], ignore_index=True)
    export_id = new_id("exp")
    if out_dir:
        out = Path(out_dir).expanduser().absolute()
    else:
        exports = project.assets / "exports"
        out = exports / f"{sanitize_name(sel.name, 80)}-{export_id}"
        inside(out, exports, "export folder", "the project's exports folder")
    rows_path = project.new_folder("exports", "_specs") / f"{export_id}.parquet"
    try:
        rows.to_parquet(rows_path, index=False)
    except BaseException:  # a full disk: no half-written file left behind
        rows_path.unlink(missing_ok=True)
        raise
    card = {"title": f"{sel.name} ({ds.name})", "dataset": ds.name, "generation": gen.name,
            "model": model.name, "encoder": model.encoder, "selection": sel.name,
            "selection_config": sel.config, "generation_config": gconf,
            "model_config": model.config,
            "offline_encoder": model.encoder not in ("dinov2", "dinov3", "clip")}
    # the real images whose size the export takes by default (their headers are read by the
    # worker; evenly spaced, at most MAX_SIZE_REFERENCE)
    train = project.images(ds.id, split="train")["path"].tolist()
    step = max(1, len(train) // MAX_SIZE_REFERENCE)
    reference = [str(project.abs(p)) for p in train[::step][:MAX_SIZE_REFERENCE]]
    params = {"export_id": export_id, "selection_id": sel.id, "rows_path": str(rows_path),
              "out_dir": str(out), "config": config.to_dict(), "card": card,
              "size_reference": reference}
    return JobSpec(kind="export", title=f"Export {sel.name} ({len(rows)} images)",
                   params=params, made=(str(rows_path),))


def run(params: dict[str, Any], folder: Path, progress: ProgressFn,
        cancel: CancelToken) -> dict[str, Any]:
    from engine.imagefolder import export_imagefolder

    rows = pd.read_parquet(params["rows_path"])
    out = export_imagefolder(rows, Path(params["out_dir"]),
                             ExportConfig.from_dict(params["config"]), progress=progress,
                             cancel=cancel, card=params["card"],
                             size_reference=params.get("size_reference"))
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()}


def ingest(project: Project, params: dict[str, Any], result: dict[str, Any]) -> str:
    project.add(Export(id=params["export_id"], selection_id=params["selection_id"],
                       folder=str(result["folder"]), count=int(result["count"]),
                       manifest=str(result["manifest"]),
                       config_json=dumps({**params["config"], "image_size": result.get("size")}),
                       job_id=params.get("job_id", "")))
    Path(params["rows_path"]).unlink(missing_ok=True)
    return params["export_id"]


def on_failure(project: Project, spec: dict[str, Any], status: str, error: str) -> None:
    pass


def on_retry(project: Project, params: dict[str, Any]) -> None:
    pass

