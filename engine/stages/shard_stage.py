"""Generate, sharded: split a generation's samples over P processes, merge them back.

The generate stage (``generate_stage``) for a cluster: its plan is written once to a shared
folder, each worker (``rcdm-studio generate --shard K/P``) generates its shard there with
``engine.rcdm.generation.generate_plan`` and never opens the project for writing, and
``merge_shards`` ingests the shards into the project as one Generation.

A generation is a plan (K representations) times ``variations`` seeds: N = K * variations
samples, sample ``idx`` having its own seed. Shard ``k`` of ``P`` (0 <= k < P) generates
the samples ``idx = k, k + P, k + 2P, ...``: the shards are disjoint, their union is every
sample, their sizes differ by at most one, and every image is the one an unsharded run
writes (same representation, same seed). Workers never open the project for writing.

An output folder ``DIR`` (shared by the workers, or one per worker) holds::

    plan.json                  the generation (config, model, plan) and its fingerprint
    conditions.npy             (K, D) float32 representations of the plan (a perturbed
                               plan's σ and λ are in plan.json: each worker perturbs its own
                               samples from their seeds)
    shard-00003-of-00008/      one per shard run into DIR
        images/<label>/<idx>.png   (.webp / .jpg: the config's image_format)
        samples.parquet        the shard's rows (paths relative to the shard folder)
        manifest.json          written last: the shard is complete when it exists

``merge_shards`` checks that every shard of 0..P-1 is there once, complete, and made from
the same plan (fingerprint: config, plan, model weights), then ingests them into the
project as one Generation, laid out as an unsharded one.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.config import GenerateConfig
from engine.errors import InvalidConfigError, NotReadyError
from engine.paths import given_name
from engine.progress import CancelToken, ProgressEvent, ProgressFn, no_progress
from engine.project import Dataset, Generation, Model, Project, new_id
from engine.project.store import save_array_atomic
from engine.stages import generate_stage

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PLAN_FILE = "plan.json"
COND_FILE = "conditions.npy"
MANIFEST_FILE = "manifest.json"
SAMPLES_FILE = "samples.parquet"
_SHARD_RE = re.compile(r"^shard-(\d+)-of-(\d+)$")
_EDGE = 1 << 20  # bytes hashed at each end of a large weight file


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file of this process (workers may race)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, data: Any) -> None:
    _write_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))


def parse_shard(text: str) -> tuple[int, int]:
    """"K/P" -> (K, P) with 0 <= K < P, e.g. "3/8" -> (3, 8)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise InvalidConfigError(f"--shard must be K/P (e.g. 0/4), got {text!r}")
    k, p = int(m.group(1)), int(m.group(2))
    if p < 1 or not 0 <= k < p:
        raise InvalidConfigError(f"--shard K/P needs P >= 1 and 0 <= K < P, got {text!r}")
    return k, p


def shard_indices(n: int, k: int, p: int) -> np.ndarray:
    """Sample indices of shard ``k`` of ``p`` among ``n``: (ceil((n - k) / p),) int64."""
    if p < 1 or not 0 <= k < p:
        raise InvalidConfigError(f"shard {k} of {p} does not exist (0 <= k < p)")
    return np.arange(k, n, p, dtype=np.int64)


def shard_name(k: int, p: int) -> str:
    return f"shard-{k:05d}-of-{p:05d}"


def _hash_file(h: "hashlib._Hash", path: Path) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}:{size}:".encode())
    with open(path, "rb") as f:
        if size <= 2 * _EDGE:
            h.update(f.read())
        else:  # large weights: both ends and the size (a full hash of GBs on every worker
            h.update(f.read(_EDGE))  # would cost more than it catches)
            f.seek(size - _EDGE)
            h.update(f.read(_EDGE))


def model_fingerprint(model_dir: Path) -> str:
    """sha256 of a saved RCDM's config and weights (large files: size and both ends)."""
    model_dir = Path(model_dir)
    files = sorted(p for p in model_dir.rglob("*") if p.is_file())
    if not files:
        raise NotReadyError(f"no trained RCDM at {model_dir}")
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(model_dir).as_posix().encode())
        _hash_file(h, path)
    return h.hexdigest()


def plan_fingerprint(params: dict[str, Any], cond: np.ndarray, model_hash: str) -> str:
    """sha256 of what makes the images: config, model, plan and its representations.

    A PNG generation's ``image_format`` and ``quality`` stay out of it (PNG ignores the
    quality), so plans written before the two options existed keep their fingerprint."""
    keep = {k: params[k] for k in ("model_id", "dataset_id", "encoder", "config", "mode",
                                   "source_ids", "partner_ids", "weights", "labels",
                                   "class_names", "perturb_scale", "perturb_unit")
            if k in params}
    if keep.get("config", {}).get("image_format", "png") == "png":
        keep["config"] = {k: v for k, v in keep["config"].items()
                          if k not in ("image_format", "quality")}
    h = hashlib.sha256(json.dumps(keep, sort_keys=True).encode())
    h.update(np.ascontiguousarray(cond, dtype=np.float32).tobytes())
    h.update(model_hash.encode())
    return h.hexdigest()


def write_plan(out_dir: Path, params: dict[str, Any], cond: np.ndarray) -> dict[str, Any]:
    """Write ``plan.json`` + ``conditions.npy`` into ``out_dir`` (or check the ones there).

    Several workers may call this at once with the same plan; a different plan already in
    ``out_dir`` raises InvalidConfigError.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cond = np.ascontiguousarray(cond, dtype=np.float32)
    model_hash = model_fingerprint(Path(params["model_dir"]))
    fp = plan_fingerprint(params, cond, model_hash)
    config = GenerateConfig.from_dict(params["config"])
    if params["config"].get("invert"):
        raise InvalidConfigError("an inverted generation (--invert) reads its source images "
                                 "from the project: run it without --shard / --plan-only")
    plan = {"format_version": FORMAT_VERSION, "fingerprint": fp, "model_hash": model_hash,
            "total": len(cond) * config.variations, "params": params}
    existing = out_dir / PLAN_FILE
    if existing.is_file():
        old = read_plan(out_dir)[0]
        if old["fingerprint"] != fp:
            raise InvalidConfigError(
                f"{out_dir} already holds the plan of another generation (fingerprint "
                f"{old['fingerprint'][:12]}, this one {fp[:12]}); use another --out folder")
        return old
    buf = io.BytesIO()
    np.save(buf, cond, allow_pickle=False)
    _write_atomic(out_dir / COND_FILE, buf.getvalue())  # the plan file goes last
    _write_json(existing, plan)
    return plan


def read_plan(out_dir: Path) -> tuple[dict[str, Any], np.ndarray]:
    """(plan.json as a dict, (K, D) representations) of a shard output folder."""
    out_dir = Path(out_dir)
    path = out_dir / PLAN_FILE
    if not path.is_file():
        raise NotReadyError(f"{out_dir} holds no {PLAN_FILE}; write the plan first "
                            f"(rcdm-studio generate --project P ... --plan-only --out DIR)")
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise NotReadyError(f"cannot read {path}: {exc}") from exc
    if plan.get("format_version") != FORMAT_VERSION:
        raise InvalidConfigError(f"{path} has format_version={plan.get('format_version')!r}; "
                                 f"this studio reads {FORMAT_VERSION}")
    cond = np.load(out_dir / COND_FILE, allow_pickle=False)
    return plan, cond


def run_shard(out_dir: Path, k: int, p: int, model_dir: Path | None = None,
              progress: ProgressFn = no_progress, cancel: CancelToken | None = None
              ) -> dict[str, Any]:
    """Generate shard ``k`` of ``p`` of the plan in ``out_dir``; returns its manifest.

    Args:
        model_dir: where the model is on this machine (default: the plan's path); its
            fingerprint must match the plan's.

    A rerun skips the images already written, and rewrites the manifest last.
    """
    from engine.rcdm.generation import generate_plan

    out_dir = Path(out_dir)
    plan, cond = read_plan(out_dir)
    params = plan["params"]
    model_dir = Path(model_dir or params["model_dir"])
    if not model_dir.is_dir():
        raise NotReadyError(f"model folder {model_dir} not found on this machine; copy it "
                            f"here and pass --model-dir")
    if model_fingerprint(model_dir) != plan["model_hash"]:
        raise InvalidConfigError(f"the model at {model_dir} is not the one the plan in "
                                 f"{out_dir} was made with")
    config = GenerateConfig.from_dict(params["config"])
    subset = shard_indices(plan["total"], k, p)
    folder = out_dir / shard_name(k, p)
    (folder / MANIFEST_FILE).unlink(missing_ok=True)
    rows = generate_plan(model_dir, generate_stage.plan_from_params(params, cond),
                         params["class_names"], config, folder, model_id=params["model_id"],
                         subset=subset, progress=progress, cancel=cancel,
                         source_names=generate_stage.source_names(params))
    rows["path"] = [Path(x).relative_to(folder.resolve()).as_posix() for x in rows["path"]]
    tmp = folder / f".{SAMPLES_FILE}.tmp-{os.getpid()}"
    rows.to_parquet(tmp, index=False)
    os.replace(tmp, folder / SAMPLES_FILE)
    manifest = {"format_version": FORMAT_VERSION, "fingerprint": plan["fingerprint"],
                "shard": k, "num_shards": p, "count": int(len(rows)), "total": plan["total"]}
    _write_json(folder / MANIFEST_FILE, manifest)
    return manifest


def collect_shards(dirs: list[Path]) -> tuple[dict[str, Any], np.ndarray, pd.DataFrame]:
    """Check the shard output folders ``dirs`` and gather their samples.

    Returns:
        (plan with "num_shards" added, (K, D) representations, rows of every sample
        sorted by idx with absolute paths).

    Raises NotReadyError naming the missing or incomplete shards, and InvalidConfigError
    when the folders hold shards of different plans or shard counts.
    """
    if not dirs:
        raise InvalidConfigError("name at least one shard output folder")
    plan, cond, fp = None, None, None
    found: dict[int, Path] = {}
    counts: set[int] = set()
    incomplete: list[str] = []
    for d in map(Path, dirs):
        p_, c_ = read_plan(d)
        if fp is None:
            plan, cond, fp = p_, c_, p_["fingerprint"]
        elif p_["fingerprint"] != fp:
            raise InvalidConfigError(f"{d} holds shards of another generation than {dirs[0]} "
                                     f"(plan fingerprints {p_['fingerprint'][:12]} and "
                                     f"{fp[:12]}): same model and options are needed")
        for folder in sorted(x for x in d.iterdir() if _SHARD_RE.match(x.name)):
            manifest_path = folder / MANIFEST_FILE
            if not manifest_path.is_file():
                incomplete.append(folder.name)
                continue
            m = json.loads(manifest_path.read_text(encoding="utf-8"))
            if m.get("fingerprint") != fp:
                raise InvalidConfigError(f"{folder} was made from another plan than "
                                         f"{d / PLAN_FILE}")
            counts.add(int(m["num_shards"]))
            k = int(m["shard"])
            if k in found:
                log.warning("shard %d is in both %s and %s; using the first", k, found[k],
                            folder)
                continue
            found[k] = folder
    if len(counts) > 1:
        raise InvalidConfigError(f"the folders hold shards of different splits "
                                 f"(P = {sorted(counts)}); merge one split")
    if not counts:
        raise NotReadyError(f"no complete shard in {[str(d) for d in dirs]}"
                            + (f" (incomplete: {incomplete})" if incomplete else ""))
    p = counts.pop()
    missing = sorted(set(range(p)) - set(found))
    if missing:
        more = f"; incomplete: {incomplete}" if incomplete else ""
        raise NotReadyError(f"missing shard(s) {missing} of {p} "
                            f"(run `rcdm-studio generate --shard K/{p} --out DIR` for each)"
                            f"{more}")
    parts = []
    for k in range(p):
        folder = found[k]
        rows = pd.read_parquet(folder / SAMPLES_FILE)
        expected = shard_indices(plan["total"], k, p)
        if not np.array_equal(rows["idx"].to_numpy(np.int64), expected):
            raise NotReadyError(f"{folder} does not hold the samples of shard {k}/{p}")
        rows["path"] = [str(folder / x) for x in rows["path"]]
        absent = [x for x in rows["path"] if not Path(x).is_file()]
        if absent:
            raise NotReadyError(f"{folder} misses {len(absent)} image(s), e.g. {absent[0]}; "
                                f"rerun that shard")
        parts.append(rows)
    rows = pd.concat(parts).sort_values("idx").reset_index(drop=True)
    return {**plan, "num_shards": p}, cond, rows


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or no hard links
        shutil.copy2(src, dst)


def merge_shards(project: Project, dirs: list[Path], name: str | None = None,
                 progress: ProgressFn = no_progress) -> str:
    """Ingest the complete shards in ``dirs`` into ``project`` as one Generation.

    The images are hard-linked (or copied) into the project's assets with the layout of an
    unsharded generation. Returns the generation id.
    """
    name = given_name(name, "generation name")
    plan, cond, rows = collect_shards(list(dirs))
    params = dict(plan["params"])
    for row_type, ref in ((Model, params["model_id"]), (Dataset, params["dataset_id"])):
        project.get(row_type, ref)  # NotFoundError when merging into another project
    gen_id = new_id("gen")
    out = project.new_folder("generations", gen_id)
    try:  # a full disk, a shard gone: no half-made generation folder left behind
        images = out / "images"
        new_paths = []
        for i, (src, label, idx) in enumerate(zip(rows["path"], rows["label"], rows["idx"])):
            dst = images / f"{int(label):04d}" / f"{int(idx):07d}{Path(src).suffix}"
            _link_or_copy(Path(src), dst)
            new_paths.append(str(dst))
            if (i + 1) % 1000 == 0 or i + 1 == len(rows):
                progress(ProgressEvent(stage="merge", step=i + 1, total=len(rows)))
        rows["path"] = new_paths
        cond_path = out / "source_cond.npy"
        save_array_atomic(cond_path, np.asarray(cond, dtype=np.float32))
        table = out / "samples.parquet"
        rows.to_parquet(table, index=False)
        config = GenerateConfig.from_dict(params["config"])
        suffix = generate_stage.default_suffix(config.replace(mode=params.get("mode", config.mode)))
        params.update(generation_id=gen_id, cond_path=str(cond_path), out_dir=str(out),
                      name=project.unique_name(Generation, name or
                                               f"{params.get('model_name', 'model')}-{suffix}"))
        provenance = {"shards": {"num_shards": plan["num_shards"],
                                 "folders": [str(Path(d).resolve()) for d in dirs],
                                 "fingerprint": plan["fingerprint"]}}
        return generate_stage.ingest(project, params, {"samples": str(table),
                                                       "provenance": provenance})
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
