"""Generate: images from a trained RCDM on representations of the conditioning space.

``GenerateConfig.mode`` picks the representations (engine.rcdm.conditions): variations of
real images (the paper's), interpolation between two images, mix-up within a class, or new
draws from each class's distribution. Representation ``j`` of the plan gets seeds
``seed + j * variations + v``, so (model, representation, seed, sampler, steps, guidance)
reproduces every image; the plan's representations are kept in the generation folder
(``source_cond.npy``) and each sample's provenance in ``samples.parquet``.

With ``GenerateConfig.perturb`` = λ > 0 every sample's representation gets Gaussian noise
relative to σ, the per-dimension standard deviation of the dataset's training encodings
(engine.rcdm.conditions); σ travels in the job's params, is saved as ``perturb_scale.npy``
in the generation folder, and the generation's config_json names it under
``conditions.perturb``.

Sources may be image files outside the project (``image_files``): each is validated and
decoded as an import would (``engine.data.validate_image``), seen at the encoder's size
(``engine.data.image_pixels``: RGB, centre square), encoded with the model's fitted encoder
in the owner (cheap for the offline encoders), and copied into the generation's
``sources/`` folder. Its source id is ``sha256:<hex of the file>``; its class is the one
given, or the nearest class centroid of the training encodings; the generation's
config_json lists each under ``conditions.external`` (name, sha256, copy, class and how it
was chosen). ``mode="edit"`` moves the sources along ``mean(B) - mean(A)`` of two classes'
training encodings (``conditions.edit``; the direction is saved as ``edit_direction.npy``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.config import GenerateConfig
from engine.errors import DatasetError, InvalidConfigError
from engine.image_formats import COLOUR, GREY, to_channels
from engine.paths import given_name, sanitize_name
from engine.progress import CancelToken, ProgressFn
from engine.project import Encoding, Generation, Project, dumps, new_id
from engine.project.store import save_array_atomic
from engine.stages import JobSpec, common

# per-sample weights go into the generation's config_json up to this many representations
# (beyond, they are in samples.parquet only)
MAX_INLINE_WEIGHTS = 1000
# σ of a perturbed generation, (D,) float64, in its folder
PERTURB_SCALE_FILE = "perturb_scale.npy"
# an edit's direction d, (D,) float64, in its folder
EDIT_DIRECTION_FILE = "edit_direction.npy"
INVERT_COND_FILE = "invert_cond.npy"  # (K, D) each plan row's source's own representation
SOURCES_DIR = "sources"  # copies of the source files from outside the project
MAX_SOURCE_FILES = 1024  # image files given as sources to one generation
LABEL_GIVEN, LABEL_NEAREST = "given", "nearest class centroid"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _class_index(ds: Any, name: str, what: str) -> int:
    name = str(name).strip()
    if name not in ds.classes:
        raise InvalidConfigError(f"{what} {name!r} is not a class of dataset {ds.name} "
                                 f"(classes: {', '.join(map(str, ds.classes[:20]))})")
    return ds.classes.index(name)


def external_sources(project: Project, ds: Any, enc: Encoding, files: list[str | Path],
                     label: str | None, train_cond: np.ndarray, train_labels: np.ndarray,
                     channels: int = 3) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Image files outside the project as sources: ((n, D) float32 representations, n
    records {"id", "name", "path", "sha256", "label", "class_name", "label_from",
    "centroid_distance"}).

    Each file is validated and decoded as an import of the model's dataset would be, seen as
    the encoder sees the dataset's images, and encoded with the encoding's fitted encoder.
    ``channels`` 1 (a greyscale model): a colour file is converted to L first (then repeated
    to RGB, as the encoder sees a greyscale dataset image).

    Raises:
        DatasetError: a file that is not a usable image (the reason in one sentence).
        InvalidConfigError: an encoder that cannot encode images, an unknown ``label``.
    """
    from engine import encoders
    from engine.config import ImportConfig
    from engine.data import image_pixels, validate_image
    from engine.rcdm.conditions import nearest_centroid

    if len(files) > MAX_SOURCE_FILES:
        raise InvalidConfigError(f"at most {MAX_SOURCE_FILES} source image files, got "
                                 f"{len(files)}")
    encoder = encoders.load_encoder(project.abs(enc.state_path))
    if not encoder.can_encode_images:
        raise InvalidConfigError(f"the model is conditioned on the {enc.encoder} encoder, "
                                 f"which cannot encode an image it is only shown")
    try:
        import_config = ImportConfig.from_dict(ds.config)
    except InvalidConfigError:
        import_config = ImportConfig()
    pixels, records = [], []
    for given in files:
        path = Path(given).expanduser()
        img, reason = validate_image(path, import_config)
        if img is None:
            raise DatasetError(f"{path.name} cannot be a source image: {reason}")
        seen = image_pixels(img, encoder.load_size)  # (s, s, 3) uint8
        if channels == GREY:
            seen = to_channels(to_channels(seen, GREY), COLOUR)
        pixels.append(seen)
        sha = _sha256(path)
        records.append({"id": f"sha256:{sha}", "name": path.name, "path": str(path.absolute()),
                        "sha256": sha})
    cond = encoder.encode(np.stack(pixels)).astype(np.float32)  # (n, D)
    if label is not None:
        labels = np.full(len(cond), _class_index(ds, label, "--label"), dtype=np.int64)
        dist = np.full(len(cond), np.nan)
    else:
        labels, dist = nearest_centroid(cond, train_cond, train_labels)
    for r, lab, d in zip(records, labels, dist):
        r.update(label=int(lab), class_name=str(ds.classes[int(lab)]),
                 label_from=LABEL_GIVEN if label is not None else LABEL_NEAREST,
                 centroid_distance=None if np.isnan(d) else float(d))
    return cond, records


def copy_sources(records: list[dict[str, Any]], out: Path, project: Project) -> None:
    """Copy each external source file into ``out/sources/`` (the original may vanish) and
    record the copy's project-relative path as ``file``."""
    folder = out / SOURCES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for r in records:
        dst = folder / f"{r['sha256'][:16]}-{sanitize_name(r['name'], 100)}"
        if not dst.exists():
            shutil.copyfile(r["path"], dst)
        r["file"] = project.rel(dst)


def source_names(params: dict[str, Any]) -> dict[str, str]:
    """Source id -> file name of the generation's sources from outside the project."""
    return {r["id"]: r["name"] for r in params.get("external") or []}


def _pool(images: pd.DataFrame, image_ids: list[str] | None, config: GenerateConfig,
          ds: Any, source_class: str | None = None, files: int = 0) -> pd.DataFrame:
    """The real images the plan is built from, in the order the user gave them (then the
    ``files`` sources from outside the project join them)."""
    if source_class is not None:
        if image_ids is not None:
            raise InvalidConfigError("give source image ids or a source class, not both")
        c = _class_index(ds, source_class, "source class")
        return images[(images["split"] == "train") & (images["label"] == c)]
    if image_ids is None:
        if config.mode == "interpolate" and files != 2:
            raise InvalidConfigError("interpolation needs two source images (their ids)")
        return images.iloc[:0] if files else images[images["split"] == "train"]
    if len(image_ids) == 0 and not files:
        raise InvalidConfigError("no source image chosen; select at least one real image")
    by_id = images.set_index("id", drop=False)
    missing = sorted(set(image_ids) - set(by_id.index))
    if missing:
        raise InvalidConfigError(f"unknown image id(s) for dataset {ds.name}: {missing[:5]}")
    if config.mode == "interpolate":
        if len(image_ids) + files != 2:
            raise InvalidConfigError(f"interpolation needs exactly two source images, got "
                                     f"{len(image_ids) + files}")
        return by_id.loc[list(image_ids)].reset_index(drop=True)
    return images[images["id"].isin(list(image_ids))]


def model_channels(model: Any) -> int:
    """The channels of the images a Model row's RCDM makes (1 or 3; 3 when its config has
    none recorded: a model trained before channels followed the data)."""
    return int(model.config.get("channels") or COLOUR)


def plan_params(project: Project, config: GenerateConfig, model_ref: str | None = None,
                image_ids: list[str] | None = None,
                image_files: list[str | Path] | None = None, label: str | None = None,
                source_class: str | None = None) -> tuple[dict[str, Any], Any]:
    """Everything a generation needs, read from the project, and its ConditionPlan.

    Args:
        image_ids: the pool of real images: the images to vary (variations), the two ends
            in order (interpolate), the images to mix or fit per class (mixup,
            class_sample), to edit (edit); None = the training split (or only the files).
        image_files: image files outside the project, added to the pool after
            ``image_ids`` (``external_sources``); recorded in ``params["external"]``.
        label: the class name of every file in ``image_files``; None = the nearest class
            centroid of the training encodings.
        source_class: instead of ``image_ids``, every training image of this class.

    Returns:
        (params, plan): params holds the model, dataset, config and the plan's labels and
        provenance (JSON); plan holds the (K, D) representations too.
    """
    from engine.rcdm.conditions import build_plan, representation_scale
    from engine.rcdm.sample import check_sampler

    check_sampler(config.sampler)
    model = common.trained_model(project, model_ref)
    ds = common.dataset(project, model.dataset_id)
    enc = project.get(Encoding, model.encoding_id)
    images = project.images(ds.id)
    files = list(image_files or [])
    chosen = _pool(images, image_ids, config, ds, source_class, len(files))
    embeddings = project.embeddings(enc)
    cond = np.asarray(embeddings[chosen["idx"].to_numpy(np.int64)], dtype=np.float32)
    ids, labels = chosen["id"].tolist(), chosen["label"].to_numpy(np.int64)
    train_rows = images[images["split"] == "train"].sort_values("idx")
    train_cond = np.asarray(embeddings[train_rows["idx"].to_numpy(np.int64)], np.float32)
    train_labels = train_rows["label"].to_numpy(np.int64)
    external: list[dict[str, Any]] = []
    if files:
        ext_cond, external = external_sources(project, ds, enc, files, label, train_cond,
                                              train_labels, model_channels(model))
        cond = np.concatenate([cond, ext_cond.astype(np.float32)])
        ids += [r["id"] for r in external]
        labels = np.concatenate([labels, [r["label"] for r in external]]).astype(np.int64)
    scale = None
    if config.perturb > 0:  # σ: the spread of the training encodings, whatever the pool
        scale = representation_scale(train_cond)
    direction = None
    if config.mode == "edit":
        from engine.rcdm.conditions import class_direction

        a, b = (_class_index(ds, part, "direction class")
                for part in config.direction.split(":"))
        direction = class_direction(train_cond, train_labels, a, b, config.normalise)
    plan = build_plan(config, cond, ids, labels, scale, direction)
    if config.invert:  # each plan row's source image and its own representation
        own = {i: row for i, row in zip(ids, cond)}
        plan_own = np.stack([own[s] for s in plan.source_ids]) if len(plan) else cond[:0]
        rows_by_id = chosen.set_index("id")
        files = {i: str(project.abs(rows_by_id.loc[i, "path"])) for i in chosen["id"]}
        files.update({r["id"]: r["path"] for r in external})
    params = {
        "model_id": model.id, "model_name": model.name, "dataset_id": ds.id,
        "encoder": model.encoder, "config": config.to_dict(),
        "model_dir": str(project.abs(model.checkpoint)), "mode": plan.mode,
        "source_ids": list(plan.source_ids), "partner_ids": list(plan.partner_ids),
        "weights": plan.weights.tolist(), "labels": plan.labels.astype(int).tolist(),
        "class_names": ds.classes, "pool_size": int(len(cond)),
    }
    if external:  # absent without files: other generations' params stay what they were
        params["external"] = external
    if direction is not None:
        params["edit_direction"] = direction.tolist()
    if config.invert:  # replaced by the copies' paths for outside files in prepare
        params["invert_sources"] = {s: files[s] for s in dict.fromkeys(plan.source_ids)}
        params["invert_cond"] = plan_own.tolist()
    if plan.perturb > 0:  # absent at λ = 0: the params (and a shard plan's fingerprint) of
        # an unperturbed generation stay what they were
        params.update(perturb_scale=plan.scale.tolist(), perturb_unit=bool(plan.unit))
    return params, plan


def plan_from_params(params: dict[str, Any], cond: np.ndarray):
    """The ConditionPlan of ``params`` (from ``plan_params``) and its (K, D) ``cond``."""
    from engine.rcdm.conditions import ConditionPlan

    k = len(params["labels"])
    return ConditionPlan(
        mode=params.get("mode", "variations"), cond=np.asarray(cond, dtype=np.float32),
        labels=np.asarray(params["labels"], dtype=np.int64),
        source_ids=list(params["source_ids"]),
        partner_ids=list(params.get("partner_ids") or [""] * k),
        weights=np.asarray(params.get("weights") or [0.0] * k, dtype=np.float64),
        perturb=float(params["config"].get("perturb", 0.0)),
        scale=(None if params.get("perturb_scale") is None
               else np.asarray(params["perturb_scale"], dtype=np.float64)),
        unit=bool(params.get("perturb_unit", False)))


def default_suffix(config: GenerateConfig) -> str:
    """The default generation name's suffix: "x4", "mixup", "x4-perturb0.5"..."""
    suffix = f"x{config.variations}" if config.mode == "variations" else config.mode
    if config.mode == "edit":  # "edit-3-to-8"
        suffix += "-" + sanitize_name(config.direction.replace(":", "-to-"), 40)
    return suffix + (f"-perturb{config.perturb:g}" if config.perturb > 0 else "")


def prepare(project: Project, config: GenerateConfig, model_ref: str | None = None,
            image_ids: list[str] | None = None, name: str | None = None,
            image_files: list[str | Path] | None = None, label: str | None = None,
            source_class: str | None = None) -> JobSpec:
    """Generate ``config.variations`` images per representation of ``config.mode``'s plan.

    Args:
        image_ids, image_files, label, source_class: see ``plan_params``; all None = every
            image of the training split.
    """
    name = given_name(name, "generation name")
    params, plan = plan_params(project, config, model_ref, image_ids, image_files, label,
                               source_class)
    gen_id = new_id("gen")
    out = project.new_folder("generations", gen_id)  # the plan's representations go there
    cond_path = out / "source_cond.npy"
    try:
        np.save(cond_path, plan.cond, allow_pickle=False)
        if params.get("external"):
            copy_sources(params["external"], out, project)
            if params.get("invert_sources"):  # invert the copies: the originals may vanish
                for r in params["external"]:
                    if r["id"] in params["invert_sources"]:
                        params["invert_sources"][r["id"]] = str(project.abs(r["file"]))
        if "invert_cond" in params:  # (K, D): a file, not JSON in the job's spec
            invert_path = out / INVERT_COND_FILE
            np.save(invert_path, np.asarray(params.pop("invert_cond"), np.float32),
                    allow_pickle=False)
            params["invert_cond_path"] = str(invert_path)
        if params.get("edit_direction") is not None:
            save_array_atomic(out / EDIT_DIRECTION_FILE,
                              np.asarray(params["edit_direction"], dtype=np.float64))
        name = project.unique_name(Generation,
                                   name or f"{params['model_name']}-{default_suffix(config)}")
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    params.update(generation_id=gen_id, name=name, cond_path=str(cond_path),
                  out_dir=str(out))
    what = "" if plan.mode == "variations" else f" ({plan.mode})"
    if plan.mode == "edit":
        what = f" (edit {config.direction}, λ = {', '.join(f'{v:g}' for v in config.strengths())})"
    if plan.perturb > 0:
        what += f" perturbed by λ = {plan.perturb:g}"
    if config.invert:
        what += " from the sources' inverted noise"
    if config.processes > 1:
        what += f" on {config.processes} processes"
    title = (f"Generate {len(plan) * config.variations} images{what} with "
             f"{params['model_name']}")
    return JobSpec(kind="generate", title=title, params=params, made=(str(out),))


def run(params: dict[str, Any], folder: Path, progress: ProgressFn,
        cancel: CancelToken) -> dict[str, Any]:
    from engine.rcdm.generation import generate_plan

    config = GenerateConfig.from_dict(params["config"])
    cond = np.load(params["cond_path"], allow_pickle=False)
    out_dir = Path(params["out_dir"])
    if config.processes > 1:
        rows = _run_on_processes(params, cond, config, out_dir, progress, cancel)
    else:
        plan = plan_from_params(params, cond)
        own = params.get("invert_cond_path")
        rows = generate_plan(Path(params["model_dir"]), plan, params["class_names"], config,
                             out_dir, model_id=params["model_id"], progress=progress,
                             cancel=cancel, source_names=source_names(params),
                             invert_pixels=_source_pixels(params.get("invert_sources") or {}),
                             invert_cond=None if own is None else np.load(own,
                                                                          allow_pickle=False))
    table = out_dir / "samples.parquet"
    tmp = table.with_name(table.name + ".tmp")
    rows.to_parquet(tmp, index=False)
    tmp.replace(table)
    return {"count": int(len(rows)), "samples": str(table)}


RANKS_PLAN_DIR = "ranks-plan"  # GENERATION/ranks-plan/: the plan and shards of a P-process run


def _run_on_processes(params: dict[str, Any], cond: np.ndarray, config: GenerateConfig,
                      out_dir: Path, progress: ProgressFn, cancel: CancelToken) -> pd.DataFrame:
    """The generation's shards on ``config.processes`` ranks (``generate_ranks``), their
    images then moved into ``out_dir/images`` as one process lays them out; the rows."""
    from engine.stages import shard_stage
    from engine.stages.generate_ranks import MODULE
    from engine.torchrun.launcher import RANKS_DIR, run_processes

    plan_dir = (out_dir / RANKS_PLAN_DIR).resolve()
    shard_stage.write_plan(plan_dir, params, cond)  # a retry finds its own plan and resumes
    run_processes(MODULE, ["--plan", str(plan_dir)], config.processes, plan_dir,
                  plan_dir / RANKS_DIR / "rank_0.json", "generation", progress, cancel)
    _, _, rows = shard_stage.collect_shards([plan_dir])
    paths = []
    for src, label, idx in zip(rows["path"], rows["label"], rows["idx"]):
        # the extension is the config's image_format's (.png, .webp, .jpg)
        dst = (out_dir.resolve() / "images" / f"{int(label):04d}"
               / f"{int(idx):07d}{Path(src).suffix}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        paths.append(str(dst))
    rows["path"] = paths
    shutil.rmtree(plan_dir, ignore_errors=True)
    return rows


def generation_config(params: dict[str, Any], project: Project,
                      extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The generation row's config_json: the GenerateConfig plus where the plan came from."""
    k = len(params["labels"])
    conditions: dict[str, Any] = {
        "mode": params.get("mode", "variations"), "representations": k,
        "pool_size": params.get("pool_size"),
        "cond_file": project.rel(params["cond_path"]),
        "samples_file": project.rel(Path(params["out_dir"]) / "samples.parquet"),
    }
    if conditions["mode"] == "interpolate" and k:
        conditions["pair"] = [params["source_ids"][0], params["partner_ids"][0]]
    if conditions["mode"] in ("interpolate", "mixup") and k <= MAX_INLINE_WEIGHTS:
        conditions["weights"] = params["weights"]
    if params.get("external"):
        conditions["external"] = [
            {k: r.get(k) for k in ("id", "name", "sha256", "file", "class_name", "label_from",
                                   "centroid_distance")} for r in params["external"]]
    if conditions["mode"] == "edit":
        conf = params["config"]
        d = np.asarray(params["edit_direction"], dtype=np.float64)
        conditions["edit"] = {
            "direction": conf["direction"], "normalise": bool(conf.get("normalise")),
            "strengths": list(conf.get("sweep") or [conf["strength"]]),
            "direction_norm": float(np.linalg.norm(d)),
            "direction_file": project.rel(Path(params["out_dir"]) / EDIT_DIRECTION_FILE),
            "formula": "source + strength * (mean(B) - mean(A)) over the training encodings"
                       + (", the direction of unit length" if conf.get("normalise") else "")}
        if k <= MAX_INLINE_WEIGHTS:
            conditions["weights"] = params["weights"]
    if params["config"].get("invert"):
        conditions["inversion"] = {
            "method": "edit-friendly DDPM inversion (Huberman-Spiegelglas et al., CVPR 2024): "
                      "each source inverted under its own representation, regenerated under "
                      "the sample's with the same noise",
            "steps": int(params["config"]["steps"]),
            "forward_seed": "config seed + the sample's variation index",
            "sources_cond_file": project.rel(params["invert_cond_path"])}
    if params.get("perturb_scale") is not None:
        from engine.rcdm.conditions import PERTURB_STREAM

        scale = np.asarray(params["perturb_scale"], dtype=np.float64)
        conditions["perturb"] = {
            "strength": float(params["config"].get("perturb", 0.0)),
            "scale": "per-dimension std of the training encodings",
            "scale_rms": float(np.sqrt(np.mean(scale ** 2))),
            "scale_file": project.rel(Path(params["out_dir"]) / PERTURB_SCALE_FILE),
            "unit": bool(params.get("perturb_unit", False)),
            "noise": f"cond + strength * scale * eps, eps ~ N(0, I) from numpy's "
                     f"default_rng([{PERTURB_STREAM}, sample seed])"
                     + (", then L2-normalised" if params.get("perturb_unit") else ""),
        }
    return {**params["config"], "conditions": conditions, **(extra or {})}


def _source_pixels(files: dict[str, str]):
    """(source ids, size) -> (b, size, size, 3) uint8: the sources' image files, seen as the
    dataset's images are (``engine.data.image_pixels``: RGB, centre square, resized)."""
    from PIL import Image as PILImage

    from engine.data import image_pixels

    def load(ids: list[str], size: int) -> np.ndarray:
        out = []
        for i in ids:
            if i not in files:
                raise DatasetError(f"no image file for source {i} to invert")
            with PILImage.open(files[i]) as img:
                out.append(image_pixels(img.convert("RGB"), size))
        return np.stack(out)

    return load


def ingest(project: Project, params: dict[str, Any], result: dict[str, Any]) -> str:
    rows = pd.read_parquet(result["samples"])
    gen_id = params["generation_id"]
    if params.get("perturb_scale") is not None:  # σ beside the plan's representations
        save_array_atomic(Path(params["out_dir"]) / PERTURB_SCALE_FILE,
                          np.asarray(params["perturb_scale"], dtype=np.float64))
    samples = pd.DataFrame({
        "id": [f"{gen_id}_{i:07d}" for i in rows["idx"]],
        "generation_id": gen_id,
        "idx": rows["idx"].astype("int64"),
        "path": [project.rel(p) for p in rows["path"]],
        "source_image_id": rows["source_image_id"],
        "label": rows["label"].astype("int64"),
        "class_name": rows["class_name"],
        "seed": rows["seed"].astype("int64"),
        "sampler": rows["sampler"],
        "steps": rows["steps"].astype("int64"),
        "guidance": rows["guidance"].astype("float64"),
    })
    if "cond_path" in params and "labels" in params:
        config_json = generation_config(params, project, result.get("provenance"))
    else:  # a job spec written before plans existed
        config_json = params["config"]
    gen = Generation(id=gen_id, name=params["name"], model_id=params["model_id"],
                     dataset_id=params["dataset_id"], encoder=params["encoder"],
                     folder=project.rel(params["out_dir"]), count=len(samples),
                     config_json=dumps(config_json), job_id=params.get("job_id", ""))
    project.add_generation(gen, samples)
    return gen_id


def on_failure(project: Project, spec: dict[str, Any], status: str, error: str) -> None:
    pass


def on_retry(project: Project, params: dict[str, Any]) -> None:
    pass
