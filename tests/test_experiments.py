"""The evaluation lab: the three experiments, seeds, the queue's limit, restarts.

A tiny project: 24 real 12x12 images in 3 classes, a PCA encoding, and a stand-in
generation of 4 variations per training image (each a noisy copy of its source, written as
PNGs through the same ingest path as a real generation), re-encoded with the PCA encoder.
Classifiers are 1-epoch resnet_tiny at 8x8.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import import_folder

from engine import experiments
from engine.config import EncodeConfig, EvalConfig, ImportConfig
from engine.errors import InvalidConfigError, NotFoundError
from engine.jobs import JobManager
from engine.project import Evaluation, Generation, Job, Project, Selection
from studio.figures import experiment_figure

pytestmark = pytest.mark.usefixtures("one_thread")

VARIATIONS = 4
EVAL = EvalConfig(arch="resnet_tiny", image_size=8, epochs=1, batch_size=16, warmup_epochs=0)


def add_noisy_generation(project: Project, dataset_id: str, k: int, name: str) -> Generation:
    """A generation of ``k`` noisy copies of every training image (idx = j * k + v)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    images = project.images(dataset_id, split="train")
    gen_id = f"gen_{name}"
    folder = project.new_folder("generations", gen_id)
    rows = []
    for j, img in enumerate(images.itertuples()):
        src = np.asarray(Image.open(project.abs(img.path)).convert("RGB"), dtype=np.int16)
        for v in range(k):
            idx = j * k + v
            noisy = np.clip(src + rng.integers(-40, 41, src.shape), 0, 255).astype(np.uint8)
            path = folder / f"{idx:06d}.png"
            Image.fromarray(noisy).save(path)
            rows.append({"id": f"{gen_id}_{idx:07d}", "generation_id": gen_id, "idx": idx,
                         "path": project.rel(path), "source_image_id": img.id,
                         "label": int(img.label), "class_name": img.class_name,
                         "seed": idx, "sampler": "noise", "steps": 0, "guidance": 1.0})
    gen = Generation(id=gen_id, name=name, model_id="", dataset_id=dataset_id, encoder="pca",
                     folder=project.rel(folder), count=len(rows),
                     config_json=json.dumps({"variations": k}))
    return project.add_generation(gen, pd.DataFrame(rows))


@pytest.fixture
def lab(tmp_path, tiny_folder):
    """(project path, generation name): dataset, PCA encoding, a re-encoded 4x generation."""
    from engine.stages import encode_stage

    path = tmp_path / "lab"
    with Project(path) as project:
        ds = import_folder(project, tiny_folder, "tiny",
                                      ImportConfig(test_fraction=0.25))
        jobs = JobManager(project, max_running=1)
        jobs.run_inline(encode_stage.prepare(project, EncodeConfig(encoder="pca", dim=4,
                                                             image_size=8), dataset_ref=ds.id))
        gen = add_noisy_generation(project, ds.id, VARIATIONS, "noisy-x4")
        jobs.run_inline(encode_stage.prepare(project, EncodeConfig(encoder="pca"),
                                       generation_ref=gen.id))
    return path, "noisy-x4"


def run_experiment(path, kind, gen, **options):
    with Project(path) as project:
        jobs = JobManager(project, max_running=1)
        record = experiments.launch(project, kind, [gen], EVAL, submit=jobs.run_inline,
                                    seeds=1, **options)
        return record, experiments.table(project, record)


def test_scaling_experiment_table_figure_exports_and_reopen(lab, tmp_path):
    path, gen = lab
    record, table = run_experiment(path, "scaling", gen)
    assert list(table["training data"]) == ["real only"] + [f"noisy-x4 {k}x" for k in (1, 2,
                                                                                        3, 4)]
    assert table.shape == (5, 10) and (table["split"] == "test").all()
    assert list(table["size (x real)"]) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert list(table["images"]) == [18, 18, 36, 54, 72]
    assert (table["seeds"] == "1/1").all()
    assert table["top-1 mean"].between(0, 100).all()
    assert table["top-1 std"].isna().all()  # one seed: no spread
    # reopened (a restart): the record, its table and its chart come back from the rows
    with Project(path) as project:
        again = experiments.get(project, "scaling")
        assert again["id"] == record["id"]
        pd.testing.assert_frame_equal(experiments.table(project, again), table)
        assert experiments.status(project, again) == {"status": "done", "done": 5, "total": 5}
        fig = experiment_figure(experiments.table(project, again), again)
        assert [t.type for t in fig.data] == ["scatter"]
        assert list(fig.data[0].x) == [1.0, 2.0, 3.0, 4.0]
        assert len(fig.layout.shapes) == 1  # the real-only line
        out = experiments.export(project, again, csv=tmp_path / "s.csv", md=tmp_path / "s.md")
        default = experiments.export(project, again)
        assert project.abs(project.rel(default["csv"])).exists()
        summary = experiments.summary_table(project)
        assert summary.loc[0, "status"] == "done" and summary.loc[0, "evaluations"] == "5/5"
    csv = pd.read_csv(out["csv"])
    assert list(csv["training data"]) == list(table["training data"])
    md = (tmp_path / "s.md").read_text()
    assert md.count("\n| noisy-x4") == 4 and "1 seed(s) per row" in md
    # the 1x..4x selections are the first k variations of each image, saved once
    with Project(path) as project:
        sels = {s.name: s.count for s in project.list(Selection)}
    assert sels == {f"noisy-x4-first{k}": 18 * k for k in (1, 2, 3, 4)}


def test_augmentation_experiment_rows_and_recipes(lab):
    path, gen = lab
    record, table = run_experiment(path, "augmentation", gen)
    assert list(table["training data"]) == [
        "real (crop)", "real + autoaugment", "real + randaugment", "real + mixup",
        "real + cutmix", "real + noisy-x4 1x", "real + noisy-x4 2x"]
    assert list(table["images"]) == [18] * 5 + [36, 54]
    with Project(path) as project:
        evals = {e.id: e for e in project.list(Evaluation)}
        augments = [json.loads(evals[m["evaluation_id"]].config_json)["augment"]
                    for m in record["members"]]
        fig = experiment_figure(experiments.table(project, record), record)
        assert fig.data[0].type == "bar" and len(fig.data[0].x) == 7
        assert "| real + mixup | 18 | 1/1 |" in experiments.markdown(project, record)
    assert augments == ["crop", "autoaugment", "randaugment", "mixup", "cutmix", "crop", "crop"]


def test_filtering_experiment_middle_band_of_2x(lab):
    path, gen = lab
    record, table = run_experiment(path, "filtering", gen)
    assert list(table["training data"]) == ["noisy-x4 unfiltered 1x",
                                            "noisy-x4 middle band of 2x"]
    assert list(table["images"]) == [18, 18]  # the middle half of 2x is 1x
    with Project(path) as project:
        band = project.get(Selection, "noisy-x4-middle-of-2x")
        members = project.selection_members(band)
        assert np.all(members % VARIATIONS < 2)  # only from the first two variations
        assert json.loads(band.config_json)["kind"] == "band_of_first"


def test_bad_experiments_are_named_errors(lab):
    path, gen = lab
    with Project(path) as project:
        with pytest.raises(InvalidConfigError, match="ablation"):
            experiments.plan(project, "ablation", [gen], EVAL)
        with pytest.raises(InvalidConfigError, match="8x needs 8"):
            experiments.plan(project, "scaling", [gen], EVAL, sizes=(8,))
        with pytest.raises(InvalidConfigError, match="one generation"):
            experiments.plan(project, "filtering", [gen, gen], EVAL)
        with pytest.raises(NotFoundError, match="no experiment"):
            experiments.get(project, "nope")


def test_seeds_give_mean_and_spread(lab):
    path, gen = lab
    with Project(path) as project:
        jobs = JobManager(project, max_running=1)
        record = experiments.launch(project, "filtering", [gen], EVAL, submit=jobs.run_inline,
                                    seeds=2, name="two-seeds")
        res = experiments.results(project, record)
        table = experiments.table(project, record)
    assert list(res["seed"]) == [0, 1, 0, 1]
    row = table.iloc[0]
    tops = res[res["run"] == 0]["top1"].astype(float)
    assert row["seeds"] == "2/2"
    assert row["top-1 mean"] == pytest.approx(tops.mean())
    assert row["top-1 std"] == pytest.approx(tops.std(ddof=1), nan_ok=True)
    assert not math.isnan(row["top-1 std"])


def test_queue_limit_and_restart_with_real_workers(lab, tmp_path, capsys):
    """Three evaluations, two at a time; the owner stops with jobs running and queued, and
    the command line (a new owner) picks them up and finishes the experiment."""
    import re

    from studio.cli import main

    path, gen = lab
    project = Project(path)
    jobs = JobManager(project, max_running=2)
    record = experiments.launch(project, "scaling", [gen], EVAL, submit=jobs.submit, seeds=1,
                                sizes=(1, 2), name="queued")
    ids = [project.get(Evaluation, m["evaluation_id"]).job_id for m in record["members"]]
    statuses = [project.get(Job, i).status for i in ids]
    assert statuses.count("running") == 2 and statuses.count("queued") == 1
    assert experiments.status(project, record)["status"] == "running"
    project.close()  # the studio stops; its workers keep running
    capsys.readouterr()

    code = main(["experiment", "show", "queued", "--project", str(path), "--wait",
                 "--max-running", "2", "--csv", str(tmp_path / "q.csv"), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    running = [int(n) for n in re.findall(r"(\d+) running", err)]
    assert running and max(running) <= 2
    result = json.loads(out.strip().splitlines()[-1])
    assert (result["status"], result["done"], result["total"]) == ("done", 3, 3)
    assert [r["seeds"] for r in result["table"]] == ["1/1"] * 3
    assert len(pd.read_csv(tmp_path / "q.csv")) == 3
    with Project(path) as project:
        assert [project.get(Job, i).status for i in ids] == ["done"] * 3


def test_cli_queues_lists_and_shows(lab, tmp_path, capsys):
    from studio.cli import main

    path, gen = lab
    args = ["--project", str(path), "--json"]
    assert main(["experiment", "filtering", "--generation", gen, "--seeds", "2",
                 "--epochs", "1", "--name", "filt"] + args) == 0
    queued = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (queued["status"], queued["total"]) == ("queued", 4)
    assert main(["experiment", "list"] + args) == 0
    listed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["experiments"]
    assert [(r["name"], r["status"], r["evaluations"]) for r in listed] == [
        ("filt", "queued", "0/4")]
    md = tmp_path / "f.md"
    assert main(["experiment", "show", "filt", "--markdown", str(md)] + args) == 0
    assert "| noisy-x4 middle band of 2x | 18 | 0/2 |" in md.read_text()
    assert main(["experiment", "show"] + args) == 2  # no id: a named error, exit code 2
    with Project(path) as project:  # queued, not started: a studio would run them
        jobs = project.list(Job, kind="evaluate")
        assert len(jobs) == 4 and {j.status for j in jobs} == {"queued"}


def test_cli_augmentation_runs_the_chosen_baselines(lab, capsys):
    from studio.cli import main

    path, gen = lab
    args = ["--project", str(path), "--json"]
    assert main(["experiment", "augmentation", "--generation", gen, "--seeds", "1",
                 "--epochs", "3", "--augmentations", "meada", "mixup", "--name", "adv"]
                + args) == 0
    queued = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["training data"] for r in queued["table"]] == [
        "real (crop)", "real + meada", "real + mixup", "real + noisy-x4 1x",
        "real + noisy-x4 2x"]
    with Project(path) as project:
        evals = {e.id: e for e in project.list(Evaluation)}
        record = experiments.get(project, "adv")
        augments = [json.loads(evals[m["evaluation_id"]].config_json)["augment"]
                    for m in record["members"]]
    assert augments == ["crop", "meada", "mixup", "crop", "crop"]


def test_default_concurrency_is_one_per_gpu_or_one(project):
    from engine.jobs import default_max_running, visible_gpus

    assert JobManager(project).max_running == default_max_running() == max(1, len(visible_gpus()))
    with pytest.raises(Exception, match="max_running"):
        JobManager(project, max_running=0)


def test_studio_experiments_section(lab):
    """The Evaluate tab builds with its Experiments section and shows a recorded experiment."""
    from studio.app import build_app
    from studio.tabs import evaluate_tab

    path, gen = lab
    run_experiment(path, "filtering", gen)
    blocks = build_app(path)
    ctx = blocks.studio
    try:
        assert any(getattr(b, "elem_id", None) == "exp-plot" for b in blocks.blocks.values())
        (label, exp_id), = evaluate_tab.experiment_choices(ctx)
        assert label == "filtering · filtering"
        assert [v for _, v in evaluate_tab.generation_choices(ctx)] == ["gen_noisy-x4"]
        gen_id = "gen_noisy-x4"
        table, fig, csv, md = evaluate_tab.experiment_view(ctx, exp_id)
        assert list(table.columns) == ["training data", "images", "seeds", "top-1 %", "top-5 %",
                                       "split"]
        assert len(table) == 2 and fig.data[0].type == "bar"
        assert csv["visible"] and str(ctx.project.assets) in csv["value"]
        assert md["value"].endswith("table.md")
        with pytest.raises(InvalidConfigError, match="needs a generation"):
            evaluate_tab.launch_experiment(ctx, "filtering", [], 1, "resnet_tiny", 1, None)
        # the page's "Score on" reaches the engine: this dataset has no validation split
        from engine.errors import NotReadyError

        with pytest.raises(NotReadyError, match="no val split"):
            evaluate_tab.launch_experiment(ctx, "filtering", [gen_id], 1, "resnet_tiny", 1,
                                           None, split="val")
        # recipe options from the page, the same KEY=VALUE lines as --set on the CLI
        cfg = evaluate_tab.recipe(ctx, "resnet_tiny", 3, "meada",
                         "# a comment\nmeada_adv_lr=0.25\n\nlabel-smoothing = 0.1\n")
        assert (cfg.augment, cfg.meada_adv_lr, cfg.label_smoothing) == ("meada", 0.25, 0.1)
        with pytest.raises(InvalidConfigError, match="no option 'adv_lr'"):
            evaluate_tab.recipe(ctx, "resnet_tiny", 3, "crop", "adv_lr=1")
        # the augmentation experiment with ME-ADA on request, and the options in every run
        record = evaluate_tab.launch_experiment(ctx, "augmentation", [gen_id], 1, "resnet_tiny", 3,
                                       "aug", "label_smoothing=0.1", with_meada=True)
        evals = {e.id: json.loads(e.config_json) for e in ctx.project.list(Evaluation)}
        configs = [evals[m["evaluation_id"]] for m in record["members"]]
        assert [c["augment"] for c in configs] == [
            "crop", "autoaugment", "randaugment", "mixup", "cutmix", "meada", "crop", "crop"]
        assert {c["label_smoothing"] for c in configs} == {0.1}
        plain = evaluate_tab.launch_experiment(ctx, "augmentation", [gen_id], 1, "resnet_tiny", 3,
                                      "aug2")
        assert len(plain["members"]) == 7  # no ME-ADA unless asked
    finally:
        ctx.close()


def test_workers_are_pinned_one_per_gpu(lab):
    """With two GPUs (given explicitly here), two workers run at once, one on each."""
    from engine.stages import encode_stage

    path, _ = lab
    with Project(path) as project:
        jobs = JobManager(project, max_running=2, gpus=[0, 1])
        a = jobs.submit(encode_stage.prepare(project, EncodeConfig(encoder="class")))
        b = jobs.submit(encode_stage.prepare(project, EncodeConfig(encoder="class")))
        assert {project.get(Job, a.id).status, project.get(Job, b.id).status} == {"running"}
        logs = [(jobs.folder(j) / "log.txt").read_text() for j in (a, b)]
        assert "CUDA_VISIBLE_DEVICES=0" in logs[0] and "CUDA_VISIBLE_DEVICES=1" in logs[1]
        assert jobs.wait(a.id, timeout=120).status == "done"
        assert jobs.wait(b.id, timeout=120).status == "done"


def test_a_job_of_several_processes_holds_that_many_gpus(lab):
    """A job with ``processes=2`` is pinned to both GPUs and fills both slots: the next job
    waits for it."""
    from engine.stages import encode_stage

    path, _ = lab
    with Project(path) as project:
        jobs = JobManager(project, max_running=2, gpus=[0, 1])
        wide = encode_stage.prepare(project, EncodeConfig(encoder="class"))
        wide.params["processes"] = 2
        a = jobs.submit(wide)
        b = jobs.submit(encode_stage.prepare(project, EncodeConfig(encoder="class")))
        assert project.get(Job, a.id).status == "running"
        assert project.get(Job, b.id).status == "queued"
        assert "CUDA_VISIBLE_DEVICES=0,1" in (jobs.folder(a) / "log.txt").read_text()
        assert jobs.wait(a.id, timeout=120).status == "done"
        assert jobs.wait(b.id, timeout=120).status == "done"
        assert "CUDA_VISIBLE_DEVICES=0)" in (jobs.folder(b) / "log.txt").read_text()


def test_an_experiment_is_a_row_with_members_jobs_status_and_code_version(lab):
    from engine.project import Experiment, Meta
    from engine.version import code_version

    path, gen = lab
    record, _ = run_experiment(path, "scaling", gen, sizes=(1,))
    with Project(path) as project:
        row = project.get(Experiment, record["id"])
        assert (row.kind, row.code_version) == ("scaling", code_version())
        assert [m["job_id"] for m in row.members] == \
            [project.get(Evaluation, m["evaluation_id"]).job_id for m in row.members]
        assert all(project.get(Job, m["job_id"]).status == "done" for m in row.members)
        assert row.config["recipe"] == EVAL.to_dict() and row.config["seeds"] == 1
        assert not [m for m in project.list(Meta) if m.key.startswith("experiment:")]
        assert experiments.status(project, record)["status"] == "done"
        row = project.get(Experiment, record["id"])
        assert row.status == "done" and row.finished_at is not None
        assert [r["training data"] for r in row.results] == ["real only", "noisy-x4 1x"]
        assert experiments.get(project, record["id"])["status"] == "done"


def test_an_experiment_on_the_validation_split(tmp_path, tiny_folder):
    """split="val": every evaluation is scored on the validation images (never test), the
    record and its tables say so; a dataset without validation split is refused."""
    from engine.errors import NotReadyError

    with Project(tmp_path / "val") as project:
        ds = import_folder(project, tiny_folder, "tiny",
                           ImportConfig(test_fraction=0.25, val_fraction=0.25))
        assert (ds.num_train, ds.num_val, ds.num_test) == (12, 6, 6)
        add_noisy_generation(project, ds.id, 1, "noisy-x1")
        jobs = JobManager(project, max_running=1)
        record = experiments.launch(project, "scaling", ["noisy-x1"], EVAL,
                                    submit=jobs.run_inline, seeds=1, sizes=(1,), split="val")
        assert record["split"] == "val"
        evals = [project.get(Evaluation, m["evaluation_id"]) for m in record["members"]]
        assert [(e.eval_split, e.num_test, e.status) for e in evals] == [("val", 6, "done")] * 2
        assert experiments.get(project, record["id"])["split"] == "val"
        assert (experiments.table(project, record)["split"] == "val").all()
        md = experiments.markdown(project, record)
        assert "top-1 % (val)" in md and "held-out real val split" in md
        with pytest.raises(InvalidConfigError, match="split must be one of"):
            experiments.launch(project, "scaling", ["noisy-x1"], EVAL, submit=jobs.create,
                               split="train")
        full = import_folder(project, tiny_folder, "full", ImportConfig(test_fraction=0.25))
        add_noisy_generation(project, full.id, 1, "full-x1")
        with pytest.raises(NotReadyError, match="no val split"):
            experiments.launch(project, "scaling", ["full-x1"], EVAL, submit=jobs.create,
                               sizes=(1,), split="val")


def test_visible_gpus_without_torch_reads_the_driver_and_cuda_visible_devices(
        tmp_path, monkeypatch):
    """The studio counts GPUs at start without importing torch (seconds): the driver's list,
    limited by CUDA_VISIBLE_DEVICES as CUDA reads it."""
    import sys

    from engine import jobs, settings

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(settings, "NVIDIA_GPUS", tmp_path / "gpus")
    if Path("/dev/kfd").exists() or list(Path("/dev").glob("nvidia[0-9]*")):
        pytest.skip("GPU device nodes here: without the (patched) driver list, torch decides")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert jobs.visible_gpus() == []  # no driver: no GPU
    for bus in ("0000:01:00.0", "0000:02:00.0"):
        (tmp_path / "gpus" / bus).mkdir(parents=True)
    assert jobs.visible_gpus() == [0, 1]
    for env, want in (("1", [0]), ("0,-1,1", [0]), ("", []), ("0,1,2,3", [0, 1])):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
        assert jobs.visible_gpus() == want, env
    assert "torch" not in sys.modules
