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
