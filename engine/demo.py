"""The whole pipeline, headless, on the bundled digits dataset.

import -> encode (pca, class) -> train an RCDM on each -> generate (2x for the RCDM, 1x for
the class-conditioned baseline) -> re-encode -> keep the middle band of the 2x (-> 1x) ->
evaluate six training mixes on the real test split -> export the middle-band selection.

The mixes: real only; RCDM synthetic 1x (the first variation of every training image,
unfiltered); the middle band of the 2x (the paper's filter, also 1x); the whole 2x; the
class-conditioned baseline 1x; real + the RCDM 2x.

The low-data regime: ``DemoConfig().with_per_class(N)`` imports the digits keeping N training
images per class (and a validation split) as the dataset ``digits-nN`` (``digits-all``: every
training image, with the validation split); its test images are the same as the full
``digits`` dataset's (``engine.data.split_images``), so results at N = 10, 25, 50 and all
compare on the same held-out images. There the demo does not pick the synthetic set: the
recipe search (``engine.recipe``) picks it on the validation split, and the test split is
read only by the final report: the recommended real + synthetic set, real only and the best
classical augmentation (each at its best length on validation), and, as fixed references,
RCDM synthetic-only at 1x and at the largest variations and the class-conditioned baseline
at 1x; every figure the mean (and std) over ``recipe.report_seeds`` classifier seeds.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from engine import recipe
from engine.config import (
    QUICK_TRAIN,
    BandConfig,
    EncodeConfig,
    EvalConfig,
    ExportConfig,
    GenerateConfig,
    ImportConfig,
    RecipeSpace,
    TrainConfig,
)
from engine.errors import InvalidConfigError, JobError
from engine.jobs import JobManager
from engine.progress import CancelToken, ProgressFn, no_progress
from engine.project import Dataset, Evaluation, Project
from engine.stages import (
    curate_stage,
    encode_stage,
    evaluate_stage,
    export_stage,
    generate_stage,
    import_stage,
    train_stage,
)

log = logging.getLogger(__name__)


DEMO_ENCODERS = ("pca", "simclr")  # offline: the demo needs no download
DEMO_VAL_FRACTION = 0.1  # the validation split of the low-data demo (about 18 per class)


def low_data_space(epochs: int, seeds: int = 3) -> RecipeSpace:
    """The recipe search of the low-data demo: the curation band (all / middle), variations
    per image (1x, 2x, 4x) and the perturbation lambda (0, 0.5): 12 candidates over two
    generations, successive halving from ``epochs // 4`` to ``epochs`` epochs; real only, the
    classical augmentations and the winner at ``epochs`` and 3 x ``epochs``, each keeping its
    best on validation."""
    return RecipeSpace(bands=("all", "middle"), variations=(1, 2, 4), perturb=(0.0, 0.5),
                       rungs=(epochs // 4, epochs) if epochs >= 4 else (epochs,), eta=3,
                       report_seeds=seeds,
                       baseline_epoch_factors=(1, 3), budget_epochs=100_000)


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo run. ``quick()`` fits in a few minutes on a 2-core CPU.

    ``importing`` says how the digits are imported (the default: every non-test image
    trains, as before); ``with_per_class(N)`` sets the low-data regime.
    """

    encoder: str = "pca"
    importing: ImportConfig = field(default_factory=ImportConfig)
    encode: EncodeConfig = field(default_factory=lambda: EncodeConfig(encoder="pca", dim=32))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        block_channels=(32, 64), steps=1200, batch_size=64, checkpoint_every=300,
        preview_every=300))
    generate: GenerateConfig = field(default_factory=lambda: GenerateConfig(
        variations=2, sampler="ddim", steps=25))
    band: BandConfig = field(default_factory=lambda: BandConfig.preset("middle", 0.5))
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    # the low-data regime's recipe search (None: the fixed six mixes of the full demo)
    recipe: RecipeSpace | None = None

    @classmethod
    def quick(cls) -> "DemoConfig":
        return cls(train=TrainConfig(**QUICK_TRAIN),  # the quick preset
                   generate=GenerateConfig(variations=2, sampler="ddim", steps=10),
                   evaluate=EvalConfig(epochs=8))

    def with_encoder(self, name: str) -> "DemoConfig":
        """The same sizes, conditioned on the offline encoder ``name`` (pca or simclr)."""
        if name not in DEMO_ENCODERS:
            raise InvalidConfigError(
                f"the demo runs offline encoders only ({', '.join(DEMO_ENCODERS)}), got {name!r}")
        return replace(self, encoder=name, encode=self.encode.replace(encoder=name))

    def with_per_class(self, n: int | None, val_fraction: float = DEMO_VAL_FRACTION,
                       seeds: int = 3) -> "DemoConfig":
        """The same sizes in the low-data regime: ``n`` real training images per class
        (None: all of them) and a validation split of ``val_fraction`` of each class; the
        synthetic set is chosen by ``low_data_space`` (``seeds`` classifier seeds per
        reported figure).

        Raises:
            InvalidConfigError: ``n`` < 1, a bad fraction (``ImportConfig.validate``).
        """
        return replace(self, importing=self.importing.replace(train_per_class=n,
                                                              val_fraction=val_fraction),
                       recipe=low_data_space(self.evaluate.epochs, seeds))

    @property
    def dataset_name(self) -> str:
        """``digits``; in the low-data regime ``digits-nN`` (``digits-all`` for every image)."""
        n = self.importing.train_per_class
        if self.recipe is None and n is None:
            return "digits"
        return "digits-all" if n is None else f"digits-n{n}"

    def to_dict(self) -> dict[str, Any]:
        return {"encoder": self.encoder, "importing": self.importing.to_dict(),
                "encode": self.encode.to_dict(),
                "train": self.train.to_dict(), "generate": self.generate.to_dict(),
                "band": self.band.to_dict(), "evaluate": self.evaluate.to_dict(),
                "export": self.export.to_dict(),
                "recipe": None if self.recipe is None else self.recipe.to_dict()}


def run_demo(project: Project, config: DemoConfig, export_dir: Path | None = None,
             progress: ProgressFn = no_progress, cancel: CancelToken | None = None,
             say=print) -> dict[str, Any]:
    """Run every stage on the digits and return the results (top-1/top-5 per mix, on the
    real test split, and counts; in the low-data regime the means and stds over seeds and
    the recipe that won, see the module's docstring).

    Raises:
        InvalidConfigError: the project holds a dataset of the demo's name imported with
            other split options.
        JobError: a stage failed, or the recipe search found no candidate to recommend.
    """
    t0 = time.time()
    jobs = JobManager(project)
    cancel = cancel or CancelToken()

    def run(spec):
        say(f"-> {spec.title}")
        return jobs.run_inline(spec, progress=progress, cancel=cancel)

    # 1. the dataset
    existing = [d for d in project.list(Dataset) if d.name == config.dataset_name]
    if existing:
        ds = existing[0]
        if ImportConfig.from_dict(ds.config) != config.importing:
            raise InvalidConfigError(
                f"dataset {ds.name} of {project.path.name} was imported with other split "
                f"options ({ds.config}); run the demo in another project")
    else:
        ds = project.get(Dataset, run(import_stage.prepare(
            project, None, config.dataset_name, config.importing, demo=True)).result_id)
    say(f"dataset {ds.name}: {ds.num_images} images, {ds.num_classes} classes, "
        f"{ds.num_train} train / {ds.num_val} val / {ds.num_test} test")
    # 2. representations: the offline encoder, and the class label for the baseline
    enc_cfg = config.encode.replace(image_size=config.train.image_size)
    run(encode_stage.prepare(project, enc_cfg, dataset_ref=ds.id))
    run(encode_stage.prepare(project, EncodeConfig(encoder="class"), dataset_ref=ds.id))
    # 3. two RCDMs, same recipe: conditioned on the representation / on the class
    rcdm = run(train_stage.prepare(project, config.train, ds.id, encoder=config.encoder,
                             name=f"rcdm-{config.encoder}")).result_id
    cond_ldm = run(train_stage.prepare(project, config.train, ds.id, encoder="class",
                                 name="class-conditioned")).result_id
    # 4. the class-conditioned baseline: 1x
    gen_cls = run(generate_stage.prepare(project, config.generate.replace(variations=1),
                                   cond_ldm)).result_id
    baseline = curate_stage.save_all(project, gen_cls, name="demo-class-conditioned")
    if config.recipe is not None:
        results = _searched_mixes(project, config, ds, rcdm, baseline.id, run, export_dir,
                                  say)
    else:
        results = _fixed_mixes(project, config, ds, rcdm, baseline.id, run, export_dir, say)
    results.update(test_images=int(ds.num_test), eval_split="test",
                   train_per_class=config.importing.train_per_class,
                   dataset=ds.name, classes=int(ds.num_classes),
                   train_images=int(ds.num_train),
                   val_images=int(ds.num_val),
                   encoder=config.encoder, seconds=round(time.time() - t0, 1))
    return results


def _export(project: Project, config: DemoConfig, selection_id: str, run,
            export_dir: Path | None) -> str:
    exp = run(export_stage.prepare(project, config.export, selection_id, out_dir=export_dir))
    return str(json.loads((project.abs(exp.folder) / "result.json").read_text())["folder"])


def _fixed_mixes(project: Project, config: DemoConfig, ds: Dataset, rcdm: str,
                 baseline_id: str, run, export_dir: Path | None, say) -> dict[str, Any]:
    """The full demo: generate 2x, keep the middle band, evaluate six fixed mixes on test."""
    gen = run(generate_stage.prepare(project, config.generate, rcdm)).result_id
    # re-encode the generated images with the conditioning encoder
    enc_cfg = config.encode.replace(image_size=config.train.image_size)
    run(encode_stage.prepare(project, enc_cfg, generation_ref=gen))
    # keep the middle band of each class (2x -> 1x, the paper's filter); the unfiltered
    # 1x (first variation of each source) and the whole 2x for comparison
    bd = curate_stage.band_data(project, gen, centroid=config.band.centroid,
                                metric=config.band.metric)
    selection = curate_stage.save_selection(project, bd, config.band, name="demo-middle")
    first = curate_stage.save_all(project, gen, name="demo-unfiltered-1x", first_variations=1)
    say(f"generated {bd.distances.shape[0]}, kept {selection.count} in the middle band")
    # training value: the same classifier recipe on each mix, tested on the real test split
    evals = {}
    for key, mix, sel, whole in [
            ("real", "real", None, None),
            ("synthetic", "synthetic", first.id, None),
            ("synthetic_filtered", "synthetic", selection.id, None),
            ("synthetic_2x", "synthetic", None, gen),
            ("class_conditioned", "synthetic", baseline_id, None),
            ("real_plus_synthetic", "real+synthetic", None, gen)]:
        eid = run(evaluate_stage.prepare(project, config.evaluate, mix=mix, dataset_ref=ds.id,
                                   selection_ref=sel, generation_ref=whole,
                                   name=f"demo-{key}")).result_id
        evals[key] = project.get(Evaluation, eid)
    results: dict[str, Any] = {
        key: {"top1": round(e.top1, 2), "top5": round(e.top5, 2), "train_images": e.num_train}
        for key, e in evals.items()}
    results.update(generated=int(bd.distances.shape[0]), selected=int(selection.count),
                   export=_export(project, config, selection.id, run, export_dir))
    return results


def _summary(rows: list[Evaluation], **extra: Any) -> dict[str, Any]:
    """Mean (and std over seeds, with two or more) of top-1 / top-5 of one arm's runs."""
    top1 = [e.top1 for e in rows]
    return {"top1": round(float(np.mean(top1)), 2),
            "top1_std": round(float(np.std(top1, ddof=1)), 2) if len(top1) > 1 else None,
            "top5": round(float(np.mean([e.top5 for e in rows])), 2),
            "train_images": int(rows[0].num_train), "seeds": len(rows),
            "epochs": int(rows[0].config.get("epochs", 0)), **extra}


def _searched_mixes(project: Project, config: DemoConfig, ds: Dataset, rcdm: str,
                    baseline_id: str, run, export_dir: Path | None, say) -> dict[str, Any]:
    """The low-data demo: the recipe search picks the synthetic set on validation; the
    report and the fixed references are scored on test over the report seeds."""
    space = config.recipe
    record = recipe.start(project, space, config.evaluate, config.generate, model_ref=rcdm,
                           dataset_ref=ds.id, name="demo-recipe")
    say(f"recipe search {record['name']}: {len(recipe.new_state(space)['candidates'])} "
        f"candidates, chosen on the {ds.num_val} validation images")
    recipe.advance(project, record["id"], submit=run)
    row, state = recipe.load(project, record["id"])
    if state["phase"] != "done" or not state["winner"]:
        raise JobError(f"the recipe search {row.name} recommends nothing: "
                       f"{state['stop_reason'] or state['phase']}")
    by_id = {c["id"]: c for c in state["candidates"]}
    winner = by_id[state["winner"]]
    # the report's runs on test, per arm
    runs: dict[str, list[Evaluation]] = {}
    for member in row.members:
        if member["key"].startswith("report/"):
            arm = member["key"].split("/")[1]
            runs.setdefault(arm, []).append(project.get(Evaluation, member["evaluation_id"]))
    val = recipe.report_table(state).set_index("arm")["val top-1"]
    results: dict[str, Any] = {
        "real": _summary(runs[recipe.REAL], val_top1=round(float(val[recipe.REAL]), 2)),
        "real_plus_synthetic": _summary(
            runs[winner["id"]], val_top1=round(float(val[winner["id"]]), 2),
            recipe=recipe.candidate_label(winner),
            near_copy_fraction=round(state["made"][winner["id"]]["copy_fraction"], 4))}
    if state["best_classical"]:
        arm = state["best_classical"]
        results["classical"] = _summary(runs[arm], augment=arm,
                                        val_top1=round(float(val[arm]), 2))
    # fixed references on test: RCDM synthetic only at 1x and at the most variations
    # (unperturbed, unfiltered), the class-conditioned baseline at 1x
    key = recipe.generation_key(min(space.guidance, key=lambda g: abs(g - 1.0)),
                                 min(space.perturb))
    gen_id = row.config["jobs"][key]["generation_id"]
    most = max(space.variations)
    first = curate_stage.save_all(project, gen_id, name="demo-unfiltered-1x",
                                  first_variations=1)
    every = curate_stage.save_all(project, gen_id, name=f"demo-unfiltered-{most}x",
                                  first_variations=most)
    for name, sel_id, extra in [("synthetic", first.id, {"variations": 1}),
                                ("synthetic_max", every.id, {"variations": most}),
                                ("class_conditioned", baseline_id, {"variations": 1})]:
        rows = []
        for s in range(space.report_seeds):
            cfg = config.evaluate.replace(epochs=space.rungs[-1], seed=space.seed + s)
            eid = run(evaluate_stage.prepare(project, cfg, mix="synthetic", dataset_ref=ds.id,
                                             selection_ref=sel_id, split="test",
                                             name=f"demo-{name}-s{space.seed + s}")).result_id
            rows.append(project.get(Evaluation, eid))
        results[name] = _summary(rows, **extra)
    sel_id = recipe.winner_selection(state)
    results.update(
        recipe={"winner": recipe.candidate_label(winner),
                **{k: winner[k] for k in ("band", "variations", "guidance", "perturb",
                                          *recipe.MIXING_FIELDS)},
                "verdict": recipe.verdict(state), "advice": recipe.verdict_text(state),
                "candidates": len(state["candidates"]),
                "evaluation_epochs": recipe.queued_epochs(state),
                "experiment": row.name, "selection": sel_id},
        generated=int(len(project.samples(gen_id))), selected=int(state["made"][winner["id"]]["count"]),
        export=_export(project, config, sel_id, run, export_dir))
    return results


def results_table(results: dict[str, Any]) -> str:
    """A plain-text table of the demo's results (the low-data demo's: mean ± std over seeds,
    the epochs each trained for, and the recipe that won)."""
    if "recipe" in results:
        return _searched_table(results)
    enc = results.get("encoder", "")
    names = {"real": "real only",
             "synthetic": f"RCDM-{enc} synthetic 1x",
             "synthetic_filtered": f"RCDM-{enc} middle band of 2x (-> 1x)",
             "synthetic_2x": f"RCDM-{enc} synthetic 2x",
             "class_conditioned": "class-conditioned synthetic 1x",
             "real_plus_synthetic": f"real + RCDM-{enc} synthetic 2x"}
    split = results.get("eval_split", "test")
    lines = [f"{'training data':<42} {'images':>7} {f'top-1 ({split})':>12} "
             f"{f'top-5 ({split})':>12}"]
    for key, label in names.items():
        r = results[key]
        lines.append(f"{label:<42} {r['train_images']:>7} {r['top1']:>12.2f} "
                     f"{r['top5']:>12.2f}")
    n = results.get("train_per_class")
    regime = f"{n} real training images per class; " if n else ""
    lines.append(f"{regime}scored on the {results['test_images']} held-out real {split} "
                 f"images; generated "
                 f"{results['generated']}, selected {results['selected']}; "
                 f"{results['seconds']:.0f} s")
    return "\n".join(lines)


def searched_rows(results: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(key, label, figures) of each row of the low-data demo's table, in reading order."""
    enc = results.get("encoder", "")
    rows = [("real", "real only", results["real"])]
    if "classical" in results:
        rows.append(("classical", f"real + {results['classical']['augment']} (best classical)",
                     results["classical"]))
    rows += [("real_plus_synthetic", f"real + {results['recipe']['winner']} (best synthetic)",
              results["real_plus_synthetic"]),
             ("synthetic", f"RCDM-{enc} synthetic only 1x", results["synthetic"]),
             ("synthetic_max", f"RCDM-{enc} synthetic only "
                               f"{results['synthetic_max']['variations']}x",
              results["synthetic_max"]),
             ("class_conditioned", "class-conditioned synthetic only 1x",
              results["class_conditioned"])]
    return rows


def mean_std(figures: dict[str, Any]) -> str:
    """``97.21 ± 0.43`` (no ± with one seed)."""
    std = figures.get("top1_std")
    return f"{figures['top1']:.2f}" + ("" if std is None else f" ± {std:.2f}")


def _searched_table(results: dict[str, Any]) -> str:
    seeds = results["real"]["seeds"]
    lines = [f"{'training data':<52} {'images':>7} {'epochs':>6} {'val top-1':>9} "
             f"{f'test top-1 ({seeds} seeds)':>22}"]
    for _, label, r in searched_rows(results):
        val = f"{r['val_top1']:.2f}" if r.get("val_top1") is not None else "-"
        lines.append(f"{label:<52} {r['train_images']:>7} {r['epochs']:>6} {val:>9} "
                     f"{mean_std(r):>22}")
    n = results.get("train_per_class")
    rec = results["recipe"]
    lines.append(f"{n or 'all'} real training images per class; chosen on the "
                 f"{results['val_images']} validation images ({rec['candidates']} candidates, "
                 f"{rec['evaluation_epochs']} evaluation-epochs), scored on the "
                 f"{results['test_images']} held-out test images; {results['seconds']:.0f} s")
    if rec.get("advice"):
        lines.append(rec["advice"])
    return "\n".join(lines)


REGIME_COLUMNS = (("real", "real only"), ("classical", "best classical aug."),
                  ("real_plus_synthetic", "real + best synthetic"),
                  ("synthetic", "synthetic only 1x"), ("synthetic_max", "synthetic only max"),
                  ("class_conditioned", "class-cond. 1x"))


def regimes_table(results: list[dict[str, Any]], markdown: bool = False) -> str:
    """One row per low-data regime (N real images per class): test top-1 mean ± std of each
    arm, and the recipe that won; plain text, or a Markdown table."""
    head = ["N / class", *[label for _, label in REGIME_COLUMNS],
            "best synthetic recipe (verdict on validation)"]
    rows = []
    for r in results:
        per_class = r["train_images"] // max(1, r.get("classes", 1))
        cells = [str(r.get("train_per_class") or f"all ({per_class})")]
        for key, _ in REGIME_COLUMNS:
            cell = mean_std(r[key]) if key in r else "-"
            if key == "classical" and key in r:
                cell += f" ({r[key]['augment']})"
            if key == "synthetic_max" and key in r:
                cell += f" ({r[key]['variations']}x)"
            cells.append(cell)
        rec = r.get("recipe", {})
        verdict = rec.get("verdict") or {}
        advice = "" if not verdict else " (on val: helps, use it)" if verdict["helps"] \
            else f" (on val: use {verdict['label']})"
        cells.append(rec.get("winner", "-") + advice)
        rows.append(cells)
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(c) + " |" for c in rows]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths))
                     for line in [head, *rows])
