"""Share it without fear: every name and folder stays inside the project (or the projects
folder), every config field has bounds, and the command line answers the operating system's
refusals in one sentence (rc 2), leaving the project as it was.

Probes, each checking the filesystem and the project's rows, not only the exception:
- names with ``../``, ``/``, ``\\``, NUL, a line break, or too long are refused by the stages and
  the CLI before anything is written; a selection named ``../../..`` by an older version
  still exports inside ``exports/``;
- the studio's export handler refuses folders outside the projects folder (absolute, ``..``,
  a symlink pointing out) and writes the ones inside it;
- every numeric field of every config refuses an absurd value (too large, negative, text)
  with a sentence naming the field; the evaluate handler refuses ``epochs=1e11`` and
  ``image_size=100000`` before any job or row exists;
- ``Project("/")``, a project path that is a folder or in a place that cannot be written,
  a PermissionError and a RecursionError in a command: rc 2 and one ``error:`` line.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

import engine.config
from engine.errors import InvalidConfigError, StudioError
from engine.paths import MAX_NAME_CHARS, check_name, inside, sanitize_name
from engine.project import (
    Dataset,
    Evaluation,
    Export,
    Generation,
    Job,
    Model,
    Project,
    Selection,
)

from .conftest import TRAIN, snapshot
from .test_bad_cli import run_cli

BAD_NAMES = ["../../../tmp/rcdm-probe-selx", "a/b", "/abs", "a\\b", "..", "x\x00y", "two\nlines",
             "é" * (MAX_NAME_CHARS + 1), "", "   "]


def add_selection(project: Project, name: str = "sel") -> Selection:
    """A generation made of the dataset's own training images (no sampling) and a selection
    of all of it: what an export needs, in milliseconds."""
    from engine.stages import curate_stage

    ds, model = project.list(Dataset)[0], project.list(Model)[0]
    images = project.images(ds.id, split="train")
    rows = [{"id": f"gen-t_{i:07d}", "generation_id": "gen-t", "idx": i, "path": img.path,
             "source_image_id": img.id, "label": img.label, "class_name": img.class_name,
             "seed": i, "sampler": "ddim", "steps": 5, "guidance": 1.0}
            for i, img in enumerate(images.itertuples())]
    folder = project.new_folder("generations", "gen-t")
    project.add_generation(Generation(id="gen-t", name="gen", model_id=model.id,
                                      dataset_id=ds.id, encoder="pca",
                                      folder=project.rel(folder), count=len(rows),
                                      config_json='{"variations": 1}'), pd.DataFrame(rows))
    return curate_stage.save_all(project, "gen-t", name=name)


def _entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# ---------------------------------------------------------------------- names


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_check_name_refuses_names_that_could_leave_a_folder(name):
    with pytest.raises(InvalidConfigError, match="selection name must"):
        check_name(name, "selection name")


@pytest.mark.parametrize("name", ["flowers", "flowers 2x", "généré-v1.2", "a" * MAX_NAME_CHARS])
def test_check_name_keeps_ordinary_names(name):
    assert check_name(f"  {name} ") == name


def test_nested_names_allow_slashes_between_safe_parts():
    assert check_name("exp/real/seed0", nested=True) == "exp/real/seed0"
    for bad in ("exp/../x", "/exp", "exp//x", "exp/./x", "exp\\x"):
        with pytest.raises(InvalidConfigError):
            check_name(bad, nested=True)


@pytest.mark.parametrize("name", BAD_NAMES + ["CON", ".hidden", "a" * 300])
def test_sanitize_name_gives_one_harmless_component(name, tmp_path):
    part = sanitize_name(name)
    assert part and "/" not in part and "\\" not in part and "\x00" not in part
    assert not part.startswith(".") and len(part.encode()) <= 120
    assert (tmp_path / part).resolve().parent == tmp_path.resolve()


def test_inside_resolves_dots_and_symlinks(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    assert inside("a/b", root) == (root / "a" / "b").resolve()
    assert inside(root / "a", root) == (root / "a").resolve()
    for bad in ("../outside", str(outside), "link/x", "/etc", "a\x00b"):
        with pytest.raises(InvalidConfigError):
            inside(bad, root, "export folder")


@pytest.mark.parametrize("name", ["../../../tmp/rcdm-probe-selx", "a/b", "x\x00y", "é" * 200])
def test_stages_refuse_bad_names_before_writing_anything(built, name):
    """Selection (save_all, save_selection), model, generation, evaluation and experiment
    names: refused, and neither a row nor a file appears, in the project or beside it."""
    from engine import experiments
    from engine.config import EvalConfig, GenerateConfig, TrainConfig
    from engine.stages import curate_stage, evaluate_stage, generate_stage, train_stage

    sel = add_selection(built)
    before, beside = snapshot(built), _entries(built.path.parent)
    calls = {
        "save_all": lambda: curate_stage.save_all(built, sel.generation_id, name=name),
        "combine": lambda: curate_stage.combine(built, sel.id, sel.id, "union", name),
        "train": lambda: train_stage.prepare(built, TrainConfig(steps=1, **TRAIN), name=name),
        "generate": lambda: generate_stage.prepare(built, GenerateConfig(), name=name),
        "evaluate": lambda: evaluate_stage.prepare(built, EvalConfig(epochs=1), name=name),
        "experiment": lambda: experiments.launch(built, "scaling", [sel.generation_id],
                                                 EvalConfig(epochs=1), submit=None, name=name),
    }
    try:
        check_name(name, nested=True)
        calls.pop("evaluate")  # "a/b" is a nested evaluation name (experiment/run/seed)
    except InvalidConfigError:
        pass
    for what, call in calls.items():
        with pytest.raises(InvalidConfigError, match="name must"):
            call()
    assert snapshot(built) == before
    assert _entries(built.path.parent) == beside
    assert not Path("/tmp/rcdm-probe-selx").exists()


def test_a_dataset_name_with_a_separator_is_refused(built, tmp_path):
    from conftest import write_tiny_folder

    from engine.stages import import_stage

    folder = write_tiny_folder(tmp_path / "more", classes=2, per_class=2)
    before = snapshot(built)
    for name in ("../x", "a/b", "x\x00"):
        with pytest.raises(InvalidConfigError, match="dataset name must"):
            import_stage.prepare(built, folder, name)
    assert snapshot(built) == before


def test_project_add_is_the_backstop_for_every_stored_name(built):
    with pytest.raises(InvalidConfigError, match="selection name"):
        built.add(Selection(id="sel-x", name="../../x", generation_id="g", count=0))
    sel = add_selection(built)
    with pytest.raises(InvalidConfigError, match="selection name"):
        built.update(Selection, sel.id, name="..\\evil")
    assert built.get(Selection, sel.id).name == "sel"


def test_an_old_selection_named_dot_dot_still_exports_inside_the_assets(built, tmp_path):
    """A project written before names were checked: its selection's name cannot lead the
    default export folder out of ``exports/``."""
    from engine.config import ExportConfig
    from engine.jobs import JobManager
    from engine.stages import export_stage

    sel = add_selection(built)
    evil = "../../../../escape"
    with built.duck() as con:  # as an older version stored it
        con.execute("UPDATE selection SET name = ? WHERE id = ?", [evil, sel.id])
    beside = _entries(tmp_path)
    job = JobManager(built).run_inline(export_stage.prepare(built, ExportConfig(), sel.id))
    (x,) = built.list(Export)
    folder = Path(x.folder)
    assert job.status == "done" and (folder / "manifest.csv").is_file()
    assert folder.resolve().parent == (built.assets / "exports").resolve()
    assert _entries(tmp_path) == beside and not (tmp_path.parent / "escape").exists()


# ---------------------------------------------------------------------- the studio's folders


@pytest.fixture
def studio(built_base, tmp_path, monkeypatch):
    """A StudioContext on a copy of the built project inside the projects folder
    ``tmp_path/projects``, with a selection to export."""
    from studio.context import StudioContext

    root = tmp_path / "projects"
    root.mkdir()
    monkeypatch.setenv("RCDM_STUDIO_PROJECTS", str(root))
    shutil.copy2(built_base, root / "p.duckdb")
    shutil.copytree(built_base.with_name("base.assets"), root / "p.assets", symlinks=True)
    ctx = StudioContext(root / "p.duckdb")
    try:
        yield ctx, add_selection(ctx.project), root
    finally:
        ctx.close()


def test_the_export_tab_refuses_folders_outside_the_projects_folder(studio, tmp_path):
    from studio.tabs import export_tab

    ctx, sel, root = studio
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    before = snapshot(ctx.project)
    for folder in (str(tmp_path / "elsewhere"), "../elsewhere", "link/export", "/etc/rcdm",
                   str(ctx.project.assets / "datasets" / "x"), "other.assets/x", ".", "a\x00b"):
        with pytest.raises(InvalidConfigError, match="export folder"):
            export_tab.export(ctx, sel.id, False, folder)
    assert snapshot(ctx.project) == before
    assert ctx.project.list(Export) == []
    assert not (tmp_path / "elsewhere").exists() and _entries(outside) == set()


def test_the_export_tab_writes_a_folder_inside_the_projects_folder(studio):
    from studio.tabs import export_tab

    ctx, sel, root = studio
    job = ctx.jobs.wait(export_tab.export(ctx, sel.id, False, "shared/flowers").id,
                        timeout=300)
    assert job.status == "done", job.error
    (x,) = ctx.project.list(Export)
    assert Path(x.folder) == (root / "shared" / "flowers").resolve()
    assert (Path(x.folder) / "manifest.csv").is_file()


def test_a_network_studio_keeps_the_model_folder_in_the_projects_folder(studio, tmp_path):
    from engine.settings import KEYS, effective
    from studio.tabs import settings_tab

    ctx, _, root = studio
    ctx.restrict = True
    values = dict(effective(ctx.project), model_folder=str(tmp_path))
    text = settings_tab.on_save(ctx, *[values[k] for k in KEYS])
    assert "outside" in text and "model_folder" not in ctx.project.settings()


def test_open_project_slash_is_one_sentence_not_a_value_error(studio):
    from studio.tabs import projects_tab

    ctx, _, _ = studio
    with pytest.raises(InvalidConfigError, match="names a folder, not a project file"):
        projects_tab.open_project(ctx, "/")
    assert ctx.project.path.name == "p.duckdb"


def test_the_evaluate_handler_refuses_absurd_values_before_any_job(studio):
    """The issue's probes: epochs=1e11 started a job; image_size=100000 built a 43 TB memmap
    in the request handler. Both are refused by the config; no row, no job, no cache file."""
    from studio.tabs import evaluate_tab

    ctx, _, _ = studio
    ds = ctx.project.list(Dataset)[0]
    before = snapshot(ctx.project)
    with pytest.raises(InvalidConfigError, match=r"epochs must be in \[1, 10000\], got "
                                                 r"100000000000"):
        evaluate_tab.evaluate(ctx, "real", ds.id, None, "resnet_tiny", 1e11, None)
    with pytest.raises(InvalidConfigError, match=r"image_size must be in \[4, 1024\]"):
        evaluate_tab.evaluate(ctx, "real", ds.id, None, "resnet_tiny", 1, None,
                              options="image_size=100000")
    assert snapshot(ctx.project) == before
    assert ctx.project.list(Evaluation) == []


# ---------------------------------------------------------------------- config bounds

CONFIGS = [engine.config.ImportConfig, engine.config.EncodeConfig, engine.config.TrainConfig,
           engine.config.GenerateConfig, engine.config.BandConfig, engine.config.EvalConfig,
           engine.config.ExportConfig, engine.config.RecipeSpace]
# fields whose default is None but take a number
OPTIONAL_NUMBERS = {("ImportConfig", "train_per_class"), ("TrainConfig", "latent_scale"),
                    ("TrainConfig", "min_snr_gamma"), ("EvalConfig", "syn_fraction"),
                    ("RecipeSpace", "max_copy_fraction")}
NUMERIC = [(cls, f.name) for cls in CONFIGS for f in dataclasses.fields(cls)
           if (isinstance(f.default, (int, float)) and not isinstance(f.default, bool))
           or (cls.__name__, f.name) in OPTIONAL_NUMBERS]


def test_every_numeric_field_is_probed():
    assert len(NUMERIC) > 80
    assert {(c.__name__, n) for c, n in NUMERIC} >= OPTIONAL_NUMBERS


# no upper bound: a diverging learning rate costs nothing, its first NaN loss stops the run
# with a sentence (test_training_faults injects NaN losses with learning_rate=1e30)
UNBOUNDED_ABOVE = {("TrainConfig", "learning_rate"), ("EvalConfig", "learning_rate")}


@pytest.mark.parametrize("value", [10**12, -10**12, float("nan"), float("inf"), "12"],
                         ids=["huge", "negative", "nan", "inf", "text"])
@pytest.mark.parametrize("cls,field", NUMERIC, ids=[f"{c.__name__}.{n}" for c, n in NUMERIC])
def test_every_numeric_field_refuses_absurd_values(cls, field, value):
    if value == 10**12 and (cls.__name__, field) in UNBOUNDED_ABOVE:
        cls(**{field: value})
        return
    with pytest.raises(InvalidConfigError) as info:
        cls(**{field: value})
    assert field in str(info.value), str(info.value)


ABSURD = [
    (engine.config.EvalConfig, {"epochs": 10**11}, r"epochs must be in \[1, 10000\], got 1e\+?11|"
                                                   r"epochs must be in \[1, 10000\], got 100000000000"),
    (engine.config.EvalConfig, {"image_size": 100_000}, r"image_size must be in \[4, 1024\]"),
    (engine.config.EvalConfig, {"batch_size": 10**6}, r"batch_size must be in \[1, 65536\]"),
    (engine.config.TrainConfig, {"image_size": 100_000}, r"image_size must be in \[8, 1024\]"),
    (engine.config.TrainConfig, {"steps": 10**12}, r"steps must be in \[1, 100000000\]"),
    (engine.config.TrainConfig, {"block_channels": (32, 10**9)}, r"block_channels must list"),
    (engine.config.EncodeConfig, {"image_size": 100_000}, r"image_size must be in \[4, 1024\]"),
    (engine.config.GenerateConfig, {"variations": 10**6}, r"variations must be in \[1, 64\]"),
    (engine.config.GenerateConfig, {"points": 10**9}, r"points must be in \[2, 1024\]"),
    (engine.config.GenerateConfig, {"per_class": 10**9}, r"per_class must be in \[1, 100000\]"),
    (engine.config.GenerateConfig, {"guidance": 1e9}, r"guidance must be in \[0, 20\]"),
    (engine.config.BandConfig, {"target_per_class": 10**12}, r"target_per_class must be in"),
    (engine.config.RecipeSpace, {"variations": (1, 10**6)}, r"variations must be integers"),
    (engine.config.RecipeSpace, {"budget_seconds": 1e30}, r"budget_seconds must be in"),
]


@pytest.mark.parametrize("cls,values,message", ABSURD,
                         ids=[f"{c.__name__}.{next(iter(v))}" for c, v, _ in ABSURD])
def test_absurd_values_get_a_sentence_naming_the_limit(cls, values, message):
    with pytest.raises(InvalidConfigError, match=message):
        cls(**values)


def test_from_dict_applies_the_bounds_too():
    """What a spec, a project row or ``--set`` rebuilds goes through the same validation."""
    with pytest.raises(InvalidConfigError, match="epochs must be in"):
        engine.config.EvalConfig.from_dict({"epochs": 1e11})
    with pytest.raises(InvalidConfigError, match="image_size must be in"):
        engine.config.with_overrides(engine.config.TrainConfig(), ["image_size=100000"])


# ---------------------------------------------------------------------- projects and the CLI


def test_project_slash_a_folder_and_an_unwritable_place_are_sentences(tmp_path):
    with pytest.raises(InvalidConfigError, match="names a folder, not a project file"):
        Project("/")
    (tmp_path / "dir.duckdb").mkdir()
    with pytest.raises(StudioError, match="is a folder"):
        Project(tmp_path / "dir.duckdb")
    assert list((tmp_path / "dir.duckdb").iterdir()) == []
    if sys.platform.startswith("linux") and Path("/sys/kernel").is_dir():
        with pytest.raises(StudioError, match="cannot create project"):
            Project("/sys/rcdm-studio-probe/p")
        assert not Path("/sys/rcdm-studio-probe").exists()


def _one_error_line(code: int, out: str, err: str) -> str:
    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("->")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def cli_copy(built_base, tmp_path):
    shutil.copy2(built_base, tmp_path / "p.duckdb")
    shutil.copytree(built_base.with_name("base.assets"), tmp_path / "p.assets", symlinks=True)
    return tmp_path / "p.duckdb"


@pytest.mark.parametrize("argv", [["status"], ["import", ".", "--name", "x"]],
                         ids=["status", "import"])
def test_cli_project_slash_is_rc2_and_one_sentence(argv):
    line = _one_error_line(*run_cli([argv[0], "--project", "/", *argv[1:]]))
    assert "names a folder, not a project file" in line


@pytest.mark.parametrize("argv,expect", [
    (["train", "--name", "../../../tmp/rcdm-probe-x", "--steps", "1"],
     "model name must not contain"),
    (["import", "{folder}", "--name", "a/b"], "dataset name must not contain"),
    (["import", "{folder}", "--name", "é" * 200], "dataset name must be at most 120"),
    (["evaluate", "--name", "../../x", "--epochs", "1"], "evaluation name must not contain"),
    (["evaluate", "--epochs", "100000000000"], "epochs must be in [1, 10000]"),
    (["train", "--image-size", "100000"], "image_size must be in [8, 1024]"),
    (["evaluate", "--set", "image_size=100000"], "image_size must be in [4, 1024]"),
], ids=["train", "import-slash", "import-long", "evaluate-name", "evaluate-epochs",
        "train-image-size", "evaluate-image-size"])
def test_cli_bad_names_and_values_change_nothing(cli_copy, tmp_path, argv, expect):
    from conftest import write_tiny_folder

    folder = write_tiny_folder(tmp_path / "src", classes=2, per_class=2)
    argv = [a.replace("{folder}", str(folder)) for a in argv]
    with Project(cli_copy) as p:
        before = snapshot(p)
    beside = _entries(tmp_path)
    line = _one_error_line(*run_cli([argv[0], "--project", str(cli_copy), *argv[1:]]))
    assert expect in line, line
    with Project(cli_copy) as p:
        assert snapshot(p) == before
    assert _entries(tmp_path) == beside, _entries(tmp_path) ^ beside
    assert not Path("/tmp/rcdm-probe-x").exists()


@pytest.mark.skipif(not (sys.platform.startswith("linux") and Path("/sys/kernel").is_dir()),
                    reason="needs Linux's /sys, where nobody (root included) may make a folder")
def test_cli_permission_error_is_rc2_and_one_sentence(cli_copy):
    """A real refusal by the operating system inside a command (the shard plan's --out in
    /sys): one ``error:`` line naming the path, rc 2, the project unchanged."""
    with Project(cli_copy) as p:
        before = snapshot(p)
    out = "/sys/rcdm-studio-probe"
    line = _one_error_line(*run_cli(["generate", "--project", str(cli_copy), "--plan-only",
                                     "--out", out]))
    assert out in line and ("not permitted" in line or "permission denied" in line), line
    assert not Path(out).exists()
    with Project(cli_copy) as p:
        assert snapshot(p) == before


def test_cli_recursion_error_is_rc2_and_one_sentence(cli_copy):
    """``--set`` values are JSON: one nested 100,000 deep exhausts Python's recursion limit."""
    deep = "[" * 100_000 + "]" * 100_000
    with Project(cli_copy) as p:
        before = snapshot(p)
    line = _one_error_line(*run_cli(["evaluate", "--project", str(cli_copy), "--set",
                                     f"epochs={deep}"]))
    assert "nested too deeply" in line
    with Project(cli_copy) as p:
        assert snapshot(p) == before


def test_cli_os_error_text_names_the_path_and_a_hint():
    from studio.cli import os_error_text

    text = os_error_text(PermissionError(13, "Permission denied", "/data/out"))
    assert text == "permission denied: /data/out (check the folder's permissions)"
    text = os_error_text(OSError(28, "No space left on device", "/data/out/x.png"))
    assert text.startswith("no space left on device: /data/out/x.png") and "disk" in text


@pytest.mark.parametrize("key,value,message", [
    ("eval_epochs", 10**11, r"eval epochs must be in \[1, 10000\]"),
    ("train_steps", 10**12, r"train steps must be in \[1, 100000000\]"),
    ("gen_variations", 10**6, r"gen variations must be in \[1, 64\]"),
    ("train_batch", float("inf"), r"train batch must be a whole number"),
])
def test_settings_refuse_absurd_defaults(built, key, value, message):
    """The Settings tab's per-stage defaults feed the configs: the same bounds, nothing saved."""
    from engine.settings import effective, save

    before = built.settings()
    with pytest.raises(InvalidConfigError, match=message):
        save(built, dict(effective(built), **{key: value}))
    assert built.settings() == before


def test_the_export_tab_zips_in_a_job_not_in_the_request(studio, monkeypatch):
    import time

    from engine.stages import zip_stage
    from studio.tabs import export_tab

    ctx, sel, _ = studio
    job = ctx.jobs.wait(export_tab.export(ctx, sel.id, False, None).id, timeout=300)
    assert job.status == "done", job.error
    (x,) = ctx.project.list(Export)
    assert export_tab.on_choose(ctx, x.id)[0] == ""  # no zip yet: nothing to download
    status, download = export_tab.on_zip(ctx, x.id)
    assert "zipping" in status and download["visible"] is False
    (zjob,) = ctx.project.list(Job, kind="zip")
    assert export_tab.make_zip(ctx, x.id) is None  # one job per export at a time
    assert ctx.jobs.wait(zjob.id, timeout=300).status == "done"
    status, download = export_tab.zip_view(ctx, x.id)
    path = zip_stage.zip_path(ctx.project, x)
    assert f"{path.name} ready" in status and download["value"] == str(path)
    with zipfile.ZipFile(path) as zf:
        assert sum(n.endswith(".png") for n in zf.namelist()) == x.count
    assert export_tab.make_zip(ctx, x.id) is None  # current: nothing to do
    # the export written again (newer than its zip): the zip is stale until zipped again
    later = time.time() + 5
    os.utime(x.folder, (later, later))
    assert zip_stage.current(ctx.project, x) is None
    assert export_tab.make_zip(ctx, x.id) is not None
    # too big to zip: refused in one sentence, no job
    monkeypatch.setattr(zip_stage, "MAX_IMAGES", x.count - 1)
    with pytest.raises(InvalidConfigError, match="too many to zip"):
        zip_stage.prepare(ctx.project, x.id)
