"""The command line: help on every command, JSON output, clear errors with exit code 2."""

from __future__ import annotations

import json

import pytest

from studio.cli import COMMANDS, build_parser, main


def test_every_subcommand_has_help(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args([name, "--help"])
        assert exc.value.code == 0
        assert "usage: rcdm-studio " + name in capsys.readouterr().out


def test_import_status_and_errors(tmp_path, tiny_folder, capsys):
    proj = str(tmp_path / "cli")
    assert main(["import", "--project", proj, "--name", "tiny", str(tiny_folder), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["images"], out["classes"], out["skipped"]) == (24, 3, [])
    assert main(["status", "--project", proj, "--json"]) == 0
    status = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [d["name"] for d in status["datasets"]] == ["tiny"]
    # the top-level --project is kept by sub-commands
    assert main(["--project", proj, "status"]) == 0
    assert "tiny" in capsys.readouterr().out
    # errors: one sentence, exit code 2, nothing half-done
    assert main(["import", "--project", proj, "--name", "tiny", str(tiny_folder)]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["import", "--project", proj, "--name", "x", str(tmp_path / "none")]) == 2
    assert main(["generate", "--project", proj]) == 2
    err = capsys.readouterr().err
    assert "no trained model" in err
    assert main(["status", "--project", str(tmp_path / "missing")]) == 2
    assert "no project at" in capsys.readouterr().err


def test_bad_values_are_refused(tmp_path, capsys):
    proj = str(tmp_path / "cli2")
    assert main(["generate", "--project", proj, "--guidance", "-1"]) == 2
    assert "guidance must be in" in capsys.readouterr().err
    assert main(["curate", "--project", proj, "--generation", "g", "--low", "0.8",
                 "--high", "0.2"]) == 2
    assert "band must satisfy" in capsys.readouterr().err


def test_encoders_lists_offline_ones(capsys):
    assert main(["encoders", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = {r["name"]: r for r in rows}
    assert names["pca"]["offline"] and "class" in names


def test_set_overrides_any_option_and_refuses_unknown_ones(tmp_path, tiny_folder, capsys):
    from engine.config import EvalConfig
    from engine.project import Evaluation, Project
    from studio.cli.console import with_sets

    cfg = with_sets(EvalConfig(), ["meada_adv_lr=0.25", "augment=meada", "hflip=true",
                                    "label-smoothing=0.1"])
    assert (cfg.meada_adv_lr, cfg.augment, cfg.hflip, cfg.label_smoothing) == \
        (0.25, "meada", True, 0.1)
    proj = str(tmp_path / "sets")
    assert main(["import", "--project", proj, "--name", "tiny", str(tiny_folder)]) == 0
    capsys.readouterr()
    # an unknown option names the known ones; a refused value says why; nothing is queued
    assert main(["evaluate", "--project", proj, "--set", "meada_lr=0.2"]) == 2
    assert "EvalConfig has no option 'meada_lr'" in capsys.readouterr().err
    assert main(["evaluate", "--project", proj, "--set", "epochs=0"]) == 2
    assert "epochs must be >= 1" in capsys.readouterr().err
    assert main(["evaluate", "--project", proj, "--set", "epochs"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    # applied to the run: the evaluation row records it
    assert main(["evaluate", "--project", proj, "--epochs", "1", "--set",
                 "label_smoothing=0.1", "--set", "image_size=8", "--json"]) == 0
    with Project(tmp_path / "sets") as p:
        (e,) = p.list(Evaluation)
        recorded = json.loads(e.config_json)
    assert (recorded["label_smoothing"], recorded["image_size"]) == (0.1, 8)


def test_commands_run_on_the_device_saved_in_the_project_settings(tmp_path):
    """The studio's Settings tab and the command line share one device setting."""
    import argparse

    from engine.project import Project
    from studio.cli.console import open_project

    path = str(tmp_path / "dev")
    with Project(path) as project:
        project.update_settings(device="cuda:7")  # saved by the studio on a GPU machine
    args = argparse.Namespace(project=path, device=None)
    with open_project(args, create=False):
        pass
    assert args.device == "cuda:7"
    given = argparse.Namespace(project=path, device="cpu")
    with open_project(given, create=False):
        pass
    assert given.device == "cpu"  # an explicit --device wins
    parser = build_parser()
    assert parser.parse_args(["encode", "--project", path]).device is None


def test_import_low_data_and_evaluate_on_val(tmp_path, capsys):
    from conftest import write_tiny_folder

    from engine.project import Evaluation, Job, Project

    folder = write_tiny_folder(tmp_path / "img", classes=2, per_class=20, size=8)
    proj = str(tmp_path / "low")
    assert main(["import", "--project", proj, "--name", "low", str(folder),
                 "--test-fraction", "0.25", "--val-fraction", "0.2",
                 "--train-per-class", "6", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["train"], out["val"], out["test"]) == (12, 8, 10)
    # 4 validation images a class: one sentence says the split is too small to trust
    assert out["warnings"] == [
        "every class has fewer than 5 validation images ('class_0': 4, 'class_1': 4): choices "
        "made on validation are noisy; import more images or raise the validation fraction"]
    with Project(tmp_path / "low") as p:  # the import ran as a job
        assert [j.kind for j in p.list(Job)] == ["import"] and out["job_id"]
    # a class with too few images is named in a warning
    assert main(["import", "--project", proj, "--name", "few", str(folder),
                 "--train-per-class", "30"]) == 0
    assert "warning: every class has fewer training images than the 30 asked ('class_0': " \
        "16, 'class_1': 16)" in capsys.readouterr().out
    assert main(["import", "--project", proj, "--name", "bad", str(folder),
                 "--train-per-class", "0"]) == 2
    assert "train_per_class must be" in capsys.readouterr().err
    # evaluate --on val: scored on the validation images, and says so
    assert main(["evaluate", "--project", proj, "--dataset", "low", "--epochs", "1",
                 "--set", "image_size=8", "--on", "val", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["eval_split"], out["test_images"], out["train_images"]) == ("val", 8, 12)
    assert main(["evaluate", "--project", proj, "--dataset", "low", "--epochs", "1",
                 "--set", "image_size=8"]) == 0
    assert "on 10 real test images" in capsys.readouterr().out
    with Project(tmp_path / "low") as p:
        assert sorted(e.eval_split for e in p.list(Evaluation)) == ["test", "val"]
    # a dataset without validation split: --on val is refused with the way out
    assert main(["evaluate", "--project", proj, "--dataset", "few", "--on", "val"]) == 2
    assert "no val split" in capsys.readouterr().err


def test_demo_and_import_demo_take_the_low_data_options():
    args = build_parser().parse_args(["demo", "--quick", "--per-class", "25"])
    assert (args.per_class, args.quick, args.seeds) == ([25], True, 3)
    args = build_parser().parse_args(["demo", "--per-class", "10,25, 50,ALL", "--seeds", "2"])
    assert (args.per_class, args.seeds) == ([10, 25, 50, None], 2)
    for bad in ("0", "ten", "10,,25", "-5"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["demo", "--per-class", bad])
    args = build_parser().parse_args(["import-demo", "--train-per-class", "10",
                                      "--val-fraction", "0.1"])
    assert (args.train_per_class, args.val_fraction) == (10, 0.1)
    from engine.demo import DemoConfig

    cfg = DemoConfig.quick().with_per_class(25)
    assert (cfg.importing.train_per_class, cfg.importing.val_fraction) == (25, 0.1)
    assert cfg.dataset_name == "digits-n25" and DemoConfig().dataset_name == "digits"
    # the low-data regime searches on validation; "all" keeps every image, with validation
    assert cfg.recipe.rungs[-1] == cfg.evaluate.epochs and cfg.recipe.report_seeds == 3
    every = DemoConfig.quick().with_per_class(None)
    assert every.dataset_name == "digits-all" and every.importing.val_fraction == 0.1
    assert DemoConfig().recipe is None
    assert cfg.importing.test_fraction == DemoConfig().importing.test_fraction


def test_demo_over_several_regimes_runs_each_in_its_own_project(tmp_path, monkeypatch,
                                                                capsys):
    """``demo --per-class 10,all``: one project per regime (NAME-n10, NAME-nall), one row
    each in the closing table, and ``{"regimes": [...]}`` as the JSON line."""
    import engine.demo

    seen = []

    def fake_run(project, config, export_dir, **_):
        seen.append((project.path.name, config.dataset_name, export_dir))
        n = config.importing.train_per_class
        arm = {"top1": 90.0 + (n or 100) / 100, "top1_std": 0.5, "top5": 99.0,
               "train_images": (n or 126) * 10, "seeds": 3, "epochs": 8, "val_top1": 90.0}
        return {"real": arm, "classical": {**arm, "augment": "mixup"},
                "real_plus_synthetic": arm, "synthetic": {**arm, "variations": 1},
                "synthetic_max": {**arm, "variations": 4},
                "class_conditioned": {**arm, "variations": 1},
                "recipe": {"winner": "2x g1 λ0 middle", "candidates": 12,
                           "evaluation_epochs": 500},
                "train_per_class": n, "classes": 10, "train_images": (n or 126) * 10,
                "val_images": 179, "test_images": 359, "encoder": "pca", "seconds": 1.0}

    monkeypatch.setattr(engine.demo, "run_demo", fake_run)
    rc = main(["demo", "--project", str(tmp_path / "study.duckdb"), "--per-class", "10,all",
               "--export", str(tmp_path / "out"), "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    assert [(p, d) for p, d, _ in seen] == [("study-n10.duckdb", "digits-n10"),
                                            ("study-nall.duckdb", "digits-all")]
    assert [e.name for _, _, e in seen] == ["n10", "nall"]
    regimes = json.loads(out.strip().splitlines()[-1])["regimes"]
    assert [r["train_per_class"] for r in regimes] == [10, None]
    table = out[out.index("N / class"):]
    assert "90.10 ± 0.50" in table and "all (126)" in table and "(mixup)" in table


def test_demo_channels_reach_the_rcdms_training_config(tmp_path, monkeypatch, capsys):
    """``demo --channels 3`` trains RGB RCDMs on the greyscale digits (as demos did before
    greyscale models); the default leaves the choice to the data (None: auto)."""
    import engine.demo

    seen = []

    def fake_run(project, config, export_dir, **_):
        seen.append(config.train.channels)
        raise SystemExit(0)

    monkeypatch.setattr(engine.demo, "run_demo", fake_run)
    for extra, want in (([], None), (["--channels", "3"], 3), (["--channels", "1"], 1)):
        with pytest.raises(SystemExit):
            main(["demo", "--project", str(tmp_path / "c.duckdb"), "--quick", *extra])
        assert seen[-1] == want
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--channels", "2"])
    assert "--channels" in capsys.readouterr().err


def test_one_demo_project_from_the_cli_and_the_studio(tmp_path, monkeypatch, capsys):
    """A bare NAME is the projects folder's project in the command line as in the studio:
    `--project demo` is the Projects tab's demo; a path stays a path; a command that needs a
    project and has none says so (rc 2) and creates nothing."""
    from studio.cli.console import resolve_project_arg
    from studio.tabs.projects_tab import demo_path

    monkeypatch.setenv("RCDM_STUDIO_PROJECTS", str(tmp_path / "projects"))
    monkeypatch.delenv("RCDM_STUDIO_PROJECT", raising=False)
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["--project", "demo", "status"])
    resolve_project_arg(args)
    assert args.project == str(demo_path()) == str(tmp_path / "projects" / "demo.duckdb")
    args = build_parser().parse_args(["--project", "./here/p", "status"])
    resolve_project_arg(args)
    assert args.project == str(tmp_path / "here" / "p.duckdb")
    assert main(["status"]) == 2
    assert "`status` needs a project: --project NAME" in capsys.readouterr().err
    assert main(["--project", "bad name!", "status"]) == 2
    assert "project name 'bad name!'" in capsys.readouterr().err
    assert list(tmp_path.rglob("*.duckdb")) == []
