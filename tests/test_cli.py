"""The command line: help on every command, JSON output, clear errors with exit code 2."""

from __future__ import annotations

import json

import pytest

from engine.cli import COMMANDS, build_parser, main


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
