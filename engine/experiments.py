"""The paper's three experiments, each a set of evaluation jobs recorded in the project.

- "scaling": synthetic-only training at 1x..4x the real set (the first k variations of each
  real image) for each chosen generation (one per model), with real-only as the reference
  line (the paper's Figure 2);
- "augmentation": real, real + each classical augmentation (AutoAugment, RandAugment, Mixup,
  CutMix), real + 1x and real + 2x synthetic (the paper's Table 2);
- "filtering": the unfiltered 1x (first variation of each image) against the middle band of
  a 2x generation (-> 1x) in the conditioning encoder's space (the paper's Table 1).

Every evaluation of an experiment is scored on one real split, ``split``: ``"test"`` (the
default, the final report) or ``"val"`` (the validation split carved from the training images,
for choices); its tables say which.

Every configuration runs with ``seeds`` seeds: one evaluation (one job, one ``Evaluation``
row, its seed in its config) per seed. The experiment itself is one ``Experiment`` row
holding its plan (kind, inputs, the recipe, the configurations), its member evaluations and
their jobs, its status, its results and the code version that planned it; ``rcdm-studio
check`` verifies its members exist. Its table (mean and spread over seeds) and chart are
rebuilt from the evaluations' rows whenever they are asked for, so an experiment survives a
restart of the studio and fills in as its jobs finish; ``status`` stores the status (and,
once done, the table) on the row.

The functions here take and return the experiment as a *record*, a dict: ``id``, ``name``,
``kind``, ``created_at`` (ISO text), ``dataset_id``, ``generations``, ``seeds``, ``split``,
``config`` (the recipe), ``options``, ``runs``, ``members`` (``evaluation_id``, ``job_id``, ``run``,
``seed``), ``status``, ``code_version``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from engine.config import AUGMENTS, BandConfig, EvalConfig
from engine.errors import InvalidConfigError, NotFoundError
from engine.paths import given_name
from engine.project import (
    Evaluation,
    Experiment,
    Generation,
    Job,
    Model,
    Project,
    Selection,
    dumps,
    free_name,
    new_id,
    utcnow,
)
from engine.stages import JobSpec

log = logging.getLogger(__name__)

KINDS = ("scaling", "augmentation", "filtering")
MAX_SEEDS = 100  # runs per configuration of an experiment
CLASSICAL = tuple(a for a in AUGMENTS if a not in ("none", "crop"))
ACTIVE = ("queued", "running")


@dataclass(frozen=True)
class Run:
    """One configuration of an experiment (run once per seed).

    Attributes:
        label: the row of the table ("real + mixup", "rcdm-pca 2x", ...).
        series: the line of the chart / the group of the table ("real", a model's name).
        x: the synthetic size in multiples of the real training set (0 for real only).
        mix, selection_id: the training mix of ``engine.stages.evaluate_stage``.
        augment: the recipe's augmentation for this configuration.
    """

    label: str
    series: str
    x: float
    mix: str
    selection_id: str | None
    augment: str


# ----------------------------------------------------------------------------- planning


def _variations(gen: Generation) -> int:
    return gen.variations


def _series_name(project: Project, gen: Generation) -> str:
    try:
        return project.get(Model, gen.model_id).name
    except NotFoundError:
        return gen.name


def first_variations(project: Project, gen: Generation, k: int) -> Selection:
    """The selection of the first ``k`` variations of every source image (reused if saved)."""
    from engine.stages import curate_stage

    if k > _variations(gen):
        raise InvalidConfigError(
            f"generation {gen.name} has {_variations(gen)} variation(s) per image; "
            f"{k}x needs {k}: generate with --variations {k} or more")
    how = {"kind": "first_variations", "k": k}
    for sel in project.list(Selection, generation_id=gen.id):
        if sel.config == how:
            return sel
    return curate_stage.save_all(project, gen.id, name=f"{gen.name}-first{k}",
                                 first_variations=k)


def middle_band_of_2x(project: Project, gen: Generation, keep_fraction: float = 0.5) -> Selection:
    """The middle ``keep_fraction`` band (per class, around the real class centroid) of the
    first two variations of every image: the paper's filter, 2x -> 1x. Reused if saved."""
    from engine import curation
    from engine.stages import curate_stage

    if _variations(gen) < 2:
        raise InvalidConfigError(
            f"generation {gen.name} has 1 variation per image; filtering keeps the middle of "
            f"2x: generate with --variations 2 or more")
    band = BandConfig.preset("middle", keep_fraction)
    how = {"kind": "band_of_first", "k": 2, "band": band.to_dict()}
    for sel in project.list(Selection, generation_id=gen.id):
        if sel.config == how:
            return sel
    bd = curate_stage.band_data(project, gen.id, centroid=band.centroid, metric=band.metric)
    idx = project.samples(gen.id)["idx"].to_numpy(np.int64)
    first_two = np.flatnonzero(idx % _variations(gen) < 2)  # rows of the 2x
    kept = curation.band_mask(bd.distances[first_two], bd.labels[first_two], band,
                              len(bd.class_names))
    mask = np.zeros(len(idx), dtype=bool)
    mask[first_two[kept]] = True
    sel = curate_stage.save_selection(project, bd, band, name=f"{gen.name}-middle-of-2x",
                                      mask=mask)
    return project.update(Selection, sel.id, config_json=dumps(how))


def plan(project: Project, kind: str, generations: list[str], eval_config: EvalConfig,
         sizes: tuple[int, ...] = (1, 2, 3, 4),
         augmentations: tuple[str, ...] = tuple(a for a in CLASSICAL if a != "meada"),
         keep_fraction: float = 0.5) -> tuple[str, list[Run]]:
    """The configurations of an experiment; saves the selections they need.

    Args:
        kind: one of ``KINDS``.
        generations: generation names or ids; scaling takes one or more (one line each),
            augmentation and filtering exactly one.
        eval_config: the recipe every configuration shares (its ``augment`` is the base).
        sizes: scaling: the synthetic sizes, in variations per real image.
        augmentations: augmentation: the classical ones compared with synthetic data.
        keep_fraction: filtering: the fraction of the 2x the middle band keeps.

    Returns:
        ``(dataset id, runs)`` in table order.

    Raises:
        InvalidConfigError: unknown kind, missing or extra generations, a generation with
            too few variations, generations of different datasets, an unknown augmentation.
        NotReadyError: filtering on a generation that is not re-encoded yet (raised by
            ``engine.stages.common.generation_encoding``).
    """
    if kind not in KINDS:
        raise InvalidConfigError(f"experiment kind must be one of {KINDS}, got {kind!r}")
    if not generations:
        raise InvalidConfigError(f"the {kind} experiment needs a generation (with enough "
                                 f"variations per image)")
    if kind != "scaling" and len(generations) != 1:
        raise InvalidConfigError(f"the {kind} experiment takes one generation, got "
                                 f"{len(generations)}")
    gens = [project.get(Generation, g) for g in generations]
    datasets = {g.dataset_id for g in gens}
    if len(datasets) != 1:
        raise InvalidConfigError("the generations of one experiment must come from the same "
                                 f"dataset, got {sorted(datasets)}")
    base = eval_config.augment
    num_train = max(1, _num_train(project, gens[0].dataset_id))
    real = Run("real only", "real", 0.0, "real", None, base)
    runs: list[Run] = []
    if kind == "scaling":
        if not sizes or min(sizes) < 1:
            raise InvalidConfigError(f"scaling sizes must be >= 1, got {sizes}")
        runs.append(real)
        for gen in gens:
            series = _series_name(project, gen)
            for k in sorted(set(sizes)):
                sel = first_variations(project, gen, k)
                runs.append(Run(f"{series} {k}x", series, round(sel.count / num_train, 3),
                                "synthetic", sel.id, base))
    elif kind == "augmentation":
        bad = [a for a in augmentations if a not in CLASSICAL]
        if bad:
            raise InvalidConfigError(f"classical augmentations are {CLASSICAL}, got {bad}")
        gen = gens[0]
        series = _series_name(project, gen)
        runs.append(Run(f"real ({base})", "real", 0.0, "real", None, base))
        for a in augmentations:
            runs.append(Run(f"real + {a}", "classical", 0.0, "real", None, a))
        for k in (1, 2):
            sel = first_variations(project, gen, k)
            runs.append(Run(f"real + {series} {k}x", "synthetic",
                            round(sel.count / num_train, 3), "real+synthetic", sel.id, base))
    else:  # filtering
        gen = gens[0]
        series = _series_name(project, gen)
        first = first_variations(project, gen, 1)
        band = middle_band_of_2x(project, gen, keep_fraction)
        runs.append(Run(f"{series} unfiltered 1x", "unfiltered",
                        round(first.count / num_train, 3), "synthetic", first.id, base))
        runs.append(Run(f"{series} middle band of 2x", "filtered",
                        round(band.count / num_train, 3), "synthetic", band.id, base))
    return gens[0].dataset_id, runs


def _num_train(project: Project, dataset_id: str) -> int:
    from engine.stages import common

    return len(common.split_indices(project, common.dataset(project, dataset_id)).train)


# ----------------------------------------------------------------------------- launching


def launch(project: Project, kind: str, generations: list[str], eval_config: EvalConfig,
           submit: Callable[[JobSpec], Job], seeds: int = 3, name: str | None = None,
           split: str = "test", **plan_options: Any) -> dict[str, Any]:
    """Plan an experiment, record it, and hand its evaluation jobs to ``submit``.

    Args:
        submit: queues (``JobManager.submit``, ``StudioContext.submit``) or runs
            (``JobManager.run_inline``) one job and returns its row.
        seeds: runs per configuration, with seeds ``eval_config.seed + 0 .. seeds - 1``.
        split: the real split every evaluation is scored on, ``"test"`` or ``"val"``.
        plan_options: ``sizes``, ``augmentations``, ``keep_fraction`` (see ``plan``).

    Returns:
        The experiment's record (``get`` reads it back).
    """
    from engine.stages import evaluate_stage

    name = given_name(name, "experiment name")
    if not 1 <= seeds <= MAX_SEEDS:
        raise InvalidConfigError(f"seeds must be in [1, {MAX_SEEDS}], got {seeds}")
    from engine.stages.common import EVAL_SPLITS

    if split not in EVAL_SPLITS:
        raise InvalidConfigError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
    dataset_id, runs = plan(project, kind, generations, eval_config, **plan_options)
    exp_id = new_id("exp")
    name = _unique_name(project, name or kind)
    # 1. every evaluation row first (queued), so the record lists them all
    members, specs = [], []
    for i, run in enumerate(runs):
        for s in range(seeds):
            config = eval_config.replace(seed=eval_config.seed + s, augment=run.augment)
            spec = evaluate_stage.prepare(project, config, mix=run.mix, dataset_ref=dataset_id,
                                    selection_ref=run.selection_id,
                                    name=f"{name}/{run.label}/seed{config.seed}",
                                    split=split)
            members.append({"evaluation_id": spec.params["evaluation_id"], "job_id": "",
                            "run": i, "seed": config.seed})
            specs.append(spec)
    config = {"recipe": eval_config.to_dict(), "generations": list(generations),
              "seeds": seeds, "split": split, "options": _jsonable(plan_options),
              "runs": [run.__dict__ for run in runs]}
    project.add(Experiment(id=exp_id, name=name, kind=kind, dataset_id=dataset_id,
                           status="queued", config_json=dumps(config),
                           members_json=dumps(members)))
    # 2. then the jobs (the record lists each member's job as soon as it is queued)
    for member, spec in zip(members, specs):
        job = submit(spec)
        member["job_id"] = job.id
        project.update(Evaluation, member["evaluation_id"], job_id=job.id)
        project.update(Experiment, exp_id, members_json=dumps(members))
    return record_of(project.get(Experiment, exp_id))


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


def record_of(row: Experiment) -> dict[str, Any]:
    """The record (see the module's docstring) of an Experiment row."""
    config = row.config
    created = row.created_at
    return {"id": row.id, "name": row.name, "kind": row.kind,
            "created_at": created.isoformat() if created is not None else "",
            "dataset_id": row.dataset_id, "generations": config.get("generations", []),
            "seeds": config.get("seeds", 1), "split": config.get("split", "test"),
            "config": config.get("recipe", {}),
            "options": config.get("options", {}), "runs": config.get("runs", []),
            "members": row.members, "status": row.status, "code_version": row.code_version}


def _unique_name(project: Project, base: str) -> str:
    return free_name({r["name"] for r in list_experiments(project)}, base)


# ----------------------------------------------------------------------------- reading


def list_experiments(project: Project) -> list[dict[str, Any]]:
    """Every experiment's record, oldest first."""
    return [record_of(row) for row in project.list(Experiment)]


def get(project: Project, ref: str) -> dict[str, Any]:
    """An experiment's record by id or name.

    Raises:
        NotFoundError: no experiment has that id or name.
    """
    named = [row for row in project.list(Experiment) if row.id == ref] or \
        [row for row in project.list(Experiment) if row.name == ref]
    if not named:
        raise NotFoundError(f"no experiment {ref!r} in {project.path.name}")
    return record_of(named[-1])


def results(project: Project, record: dict[str, Any]) -> pd.DataFrame:
    """One row per evaluation of the experiment: its configuration, seed, status, accuracy."""
    evals = {e.id: e for e in project.list(Evaluation)}
    rows = []
    for m in record["members"]:
        run = record["runs"][m["run"]]
        e = evals.get(m["evaluation_id"])
        rows.append({"run": m["run"], "label": run["label"], "series": run["series"],
                     "x": run["x"], "seed": m["seed"],
                     "evaluation_id": m["evaluation_id"],
                     "status": e.status if e is not None else "missing",
                     "images": e.num_train if e is not None else 0,
                     "top1": e.top1 if e is not None and e.status == "done" else None,
                     "top5": e.top5 if e is not None and e.status == "done" else None})
    return pd.DataFrame(rows, columns=["run", "label", "series", "x", "seed", "evaluation_id",
                                       "status", "images", "top1", "top5"])


def status(project: Project, record: dict[str, Any]) -> dict[str, Any]:
    """``{"status": queued|running|done|incomplete, "done": n, "total": n}`` of an experiment.

    The status (and, once done, the table) is stored on the experiment's row when it changed
    and the project is open for writing.
    """
    statuses = results(project, record)["status"].tolist()
    done = statuses.count("done")
    if record["kind"] == "recipe":  # engine.recipe.advance owns its status (members come late)
        return {"status": record["status"], "done": done, "total": len(statuses)}
    if done == len(statuses):
        state = "done"
    elif any(s == "running" for s in statuses):
        state = "running"
    elif any(s in ACTIVE for s in statuses):
        state = "queued"
    else:
        state = "incomplete"  # some failed, were cancelled or interrupted: retry their jobs
    _store_status(project, record, state)
    return {"status": state, "done": done, "total": len(statuses)}


def _store_status(project: Project, record: dict[str, Any], state: str) -> None:
    if project.read_only or record["kind"] == "recipe":  # engine.recipe.advance owns its row
        return
    try:
        row = project.get(Experiment, record["id"])
    except NotFoundError:
        return
    if row.status == state:
        return
    values: dict[str, Any] = {"status": state}
    if state == "done":
        t = table(project, record).astype(object)
        values.update(results_json=dumps(t.where(t.notna(), None).to_dict("records")),
                      finished_at=utcnow())
    project.update(Experiment, row.id, **values)
    record["status"] = state


def _std(values: pd.Series) -> float:
    v = values.dropna().astype(float)
    return float(v.std(ddof=1)) if len(v) >= 2 else math.nan


def table(project: Project, record: dict[str, Any]) -> pd.DataFrame:
    """Mean and spread (sample std over seeds) of top-1 / top-5 per configuration.

    Columns: training data, series, size (x real), images, seeds (done / planned),
    top-1 mean, top-1 std, top-5 mean, top-5 std (percent; NaN until a seed is done, std
    NaN with fewer than two), split (the real split they were scored on).
    """
    res = results(project, record)
    rows = []
    for i, run in enumerate(record["runs"]):
        r = res[res["run"] == i]
        done = r[r["status"] == "done"]
        rows.append({
            "training data": run["label"], "series": run["series"], "size (x real)": run["x"],
            "images": int(r["images"].max()) if len(r) else 0,
            "seeds": f"{len(done)}/{len(r)}",
            "top-1 mean": float(done["top1"].mean()) if len(done) else math.nan,
            "top-1 std": _std(done["top1"]),
            "top-5 mean": float(done["top5"].mean()) if len(done) else math.nan,
            "top-5 std": _std(done["top5"]),
            "split": record.get("split", "test"),
        })
    return pd.DataFrame(rows)


def _fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return ""
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def formatted_table(project: Project, record: dict[str, Any]) -> pd.DataFrame:
    """The table for reading: training data, images, seeds, top-1 % and top-5 % as
    "mean ± std" strings (empty until a seed is done), and the split they come from."""
    t = table(project, record)
    return pd.DataFrame({
        "training data": t["training data"], "images": t["images"], "seeds": t["seeds"],
        "top-1 %": [_fmt(m, s) for m, s in zip(t["top-1 mean"], t["top-1 std"])],
        "top-5 %": [_fmt(m, s) for m, s in zip(t["top-5 mean"], t["top-5 std"])],
        "split": [record.get("split", "test")] * len(t)})


def markdown(project: Project, record: dict[str, Any]) -> str:
    """The table as Markdown (top-1 / top-5 as mean ± std), with a line on the recipe."""
    t = formatted_table(project, record)
    cfg = record["config"]
    split = record.get("split", "test")
    lines = [f"| training data | images | seeds | top-1 % ({split}) | top-5 % ({split}) |",
             "|---|---:|---:|---:|---:|"]
    for r in t.itertuples(index=False):
        lines.append(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} |")
    lines.append("")
    lines.append(f"{record['name']} ({record['kind']}): {cfg['arch']}, {cfg['epochs']} epochs, "
                 f"batch {cfg['batch_size']}, base augmentation {cfg['augment']}, "
                 f"{record['seeds']} seed(s) per row; scored on the held-out real {split} "
                 f"split.")
    return "\n".join(lines) + "\n"


def export(project: Project, record: dict[str, Any], csv: Path | None = None,
           md: Path | None = None) -> dict[str, str]:
    """Write the table as CSV and / or Markdown; default paths are in the project's assets
    (``experiments/<id>/table.csv|.md``). Returns the paths written."""
    folder = project.new_folder("experiments", record["id"])
    csv = Path(csv) if csv is not None else folder / "table.csv"
    md = Path(md) if md is not None else folder / "table.md"
    for path, text in ((csv, table(project, record).to_csv(index=False)),
                       (md, markdown(project, record))):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return {"csv": str(csv), "markdown": str(md)}


def summary_table(project: Project) -> pd.DataFrame:
    """One row per experiment: id, name, kind, status, evaluations done / planned."""
    rows = []
    for r in list_experiments(project):
        st = status(project, r)
        rows.append([r["id"], r["name"], r["kind"], st["status"], f"{st['done']}/{st['total']}",
                     r["created_at"][:16].replace("T", " ")])
    return pd.DataFrame(rows, columns=["id", "name", "kind", "status", "evaluations",
                                       "created"])
