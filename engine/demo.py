"""The whole pipeline, headless, on the bundled digits dataset.

import -> encode (pca, class) -> train an RCDM on each -> generate (2x for the RCDM, 1x for
the class-conditioned baseline) -> re-encode -> keep the middle band of the 2x (-> 1x) ->
evaluate six training mixes on the real test split -> export the middle-band selection.

The mixes: real only; RCDM synthetic 1x (the first variation of every training image,
unfiltered); the middle band of the 2x (the paper's filter, also 1x); the whole 2x; the
class-conditioned baseline 1x; real + the RCDM 2x.

The low-data regime: ``DemoConfig().with_per_class(N)`` imports the digits keeping N training
images per class (and a validation split) as the dataset ``digits-nN``; its test images are
the same as the full ``digits`` dataset's (``engine.data.split_images``), so results at
N = 10, 25, 50 and all compare on the same held-out images.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine.config import (
    BandConfig,
    EncodeConfig,
    EvalConfig,
    ExportConfig,
    GenerateConfig,
    ImportConfig,
    TrainConfig,
)
from engine.errors import InvalidConfigError
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

    @classmethod
    def quick(cls) -> "DemoConfig":
        return cls(train=TrainConfig(block_channels=(16, 32), steps=400, batch_size=64,
                                     checkpoint_every=200, preview_every=200),
                   generate=GenerateConfig(variations=2, sampler="ddim", steps=10),
                   evaluate=EvalConfig(epochs=8))

    def with_encoder(self, name: str) -> "DemoConfig":
        """The same sizes, conditioned on the offline encoder ``name`` (pca or simclr)."""
        if name not in DEMO_ENCODERS:
            raise InvalidConfigError(
                f"the demo runs offline encoders only ({', '.join(DEMO_ENCODERS)}), got {name!r}")
        return replace(self, encoder=name, encode=self.encode.replace(encoder=name))

    def with_per_class(self, n: int | None,
                       val_fraction: float = DEMO_VAL_FRACTION) -> "DemoConfig":
        """The same sizes in the low-data regime: ``n`` real training images per class
        (None: all) and a validation split of ``val_fraction`` of each class.

        Raises:
            InvalidConfigError: ``n`` < 1, a bad fraction (``ImportConfig.validate``).
        """
        if n is None:
            return replace(self, importing=self.importing.replace(train_per_class=None))
        return replace(self, importing=self.importing.replace(train_per_class=n,
                                                              val_fraction=val_fraction))

    @property
    def dataset_name(self) -> str:
        """``digits``, or ``digits-nN`` in the low-data regime."""
        n = self.importing.train_per_class
        return "digits" if n is None else f"digits-n{n}"

    def to_dict(self) -> dict[str, Any]:
        return {"encoder": self.encoder, "importing": self.importing.to_dict(),
                "encode": self.encode.to_dict(),
                "train": self.train.to_dict(), "generate": self.generate.to_dict(),
                "band": self.band.to_dict(), "evaluate": self.evaluate.to_dict(),
                "export": self.export.to_dict()}


def run_demo(project: Project, config: DemoConfig, export_dir: Path | None = None,
             progress: ProgressFn = no_progress, cancel: CancelToken | None = None,
             say=print) -> dict[str, Any]:
    """Run every stage on the digits and return the results (top-1/top-5 per mix, on the
    real test split, and counts).

    Raises:
        InvalidConfigError: the project holds a dataset of the demo's name imported with
            other split options.
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
    # 4. generate: k variations per training image (RCDM), 1x for the baseline
    gen = run(generate_stage.prepare(project, config.generate, rcdm)).result_id
    gen_cls = run(generate_stage.prepare(project, config.generate.replace(variations=1),
                                   cond_ldm)).result_id
    # 5. re-encode the generated images with the conditioning encoder
    run(encode_stage.prepare(project, enc_cfg, generation_ref=gen))
    # 6. keep the middle band of each class (2x -> 1x, the paper's filter); the unfiltered
    #    1x (first variation of each source) and the whole 2x for comparison
    bd = curate_stage.band_data(project, gen, centroid=config.band.centroid,
                                metric=config.band.metric)
    selection = curate_stage.save_selection(project, bd, config.band, name="demo-middle")
    first = curate_stage.save_all(project, gen, name="demo-unfiltered-1x", first_variations=1)
    baseline = curate_stage.save_all(project, gen_cls, name="demo-class-conditioned")
    say(f"generated {bd.distances.shape[0]}, kept {selection.count} in the middle band")
    # 7. training value: the same classifier recipe on each mix, tested on the real test split
    evals = {}
    for key, mix, sel, whole in [
            ("real", "real", None, None),
            ("synthetic", "synthetic", first.id, None),
            ("synthetic_filtered", "synthetic", selection.id, None),
            ("synthetic_2x", "synthetic", None, gen),
            ("class_conditioned", "synthetic", baseline.id, None),
            ("real_plus_synthetic", "real+synthetic", None, gen)]:
        eid = run(evaluate_stage.prepare(project, config.evaluate, mix=mix, dataset_ref=ds.id,
                                   selection_ref=sel, generation_ref=whole,
                                   name=f"demo-{key}")).result_id
        evals[key] = project.get(Evaluation, eid)
    # 8. export the curated selection
    exp = run(export_stage.prepare(project, config.export, selection.id, out_dir=export_dir))
    folder = json.loads((project.abs(exp.folder) / "result.json").read_text())["folder"]
    results: dict[str, Any] = {
        key: {"top1": round(e.top1, 2), "top5": round(e.top5, 2), "train_images": e.num_train}
        for key, e in evals.items()}
    results.update(generated=int(bd.distances.shape[0]), selected=int(selection.count),
                   export=str(folder), test_images=int(ds.num_test), eval_split="test",
                   train_per_class=config.importing.train_per_class,
                   dataset=ds.name, train_images=int(ds.num_train),
                   val_images=int(ds.num_val),
                   encoder=config.encoder, seconds=round(time.time() - t0, 1))
    return results


def results_table(results: dict[str, Any]) -> str:
    """A plain-text table of the demo's results."""
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
