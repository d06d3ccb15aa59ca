"""Bad command-line arguments: exit code 2, one readable line on stderr, no traceback, and
the project exactly as it was (rows and files)."""

from __future__ import annotations

import contextlib
import io
import shutil

import pytest

from engine.project import Project

from .conftest import snapshot


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``studio.cli.main`` in this process: (exit code, stdout, stderr)."""
    from studio.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def cli_project(built_base, tmp_path_factory):
    """A closed copy of the built project (the CLI opens it itself) and an empty other one."""
    root = tmp_path_factory.mktemp("cli")
    shutil.copy2(built_base, root / "p.duckdb")
    shutil.copytree(built_base.with_name("base.assets"), root / "p.assets")
    Project(root / "other").close()
    with Project(root / "p.duckdb") as p:
        from engine.project import Model

        model_id = p.list(Model)[0].id
    return root, model_id


CASES = [
    (["generate", "--variations", "-1"], "variations must be >= 1"),
    (["generate", "--variations", "0"], "variations must be >= 1"),
    (["generate", "--steps", "-5"], "steps must be in [1, 1000]"),
    (["generate", "--guidance", "50"], "guidance must be in [0, 20]"),
    (["generate", "--guidance", "-1"], "guidance must be in [0, 20]"),
    (["generate", "--guidance", "nan"], "guidance must be in [0, 20]"),
    (["generate", "--images"], "no source image chosen"),
    (["generate", "--images", "img_does_not_exist"], "unknown image id"),
    (["generate", "--model", "no-such-model"], "no model 'no-such-model'"),
    (["train", "--steps", "-5"], "steps must be >= 1"),
    (["train", "--batch-size", "0"], "batch_size must be >= 1"),
    (["train", "--lr", "-0.1"], "learning_rate must be > 0"),
    (["train", "--cond-dropout", "1.5"], "cond_dropout must be in [0, 1)"),
    (["train", "--encoder", "clip"], "no encoding with the clip encoder"),
    (["encode", "--dim", "0"], "dim must be >= 1"),
    (["encode", "--encoder", "no-such-encoder"], "no-such-encoder"),
    (["curate", "--generation", "nope"], "no generation 'nope'"),
    (["curate", "--generation", "nope", "--low", "0.8", "--high", "0.2"], "0 <= low < high"),
    (["curate", "--generation", "nope", "--preset", "middle", "--fraction", "0"], "keep_fraction"),
    (["evaluate", "--epochs", "0"], "epochs must be >= 1"),
    (["evaluate", "--mix", "synthetic"], "needs a selection or a generation"),
    (["evaluate", "--mix", "synthetic", "--selection", "empty"], "no selection 'empty'"),
    (["export", "--selection", "nope"], "no selection 'nope'"),
    (["import", "/no/such/folder", "--name", "x"], "does not exist"),
    (["import", ".", "--name", "x", "--test-fraction", "1.5"], "test_fraction must be in (0, 1)"),
    (["jobs", "retry"], "needs a job id"),
    (["jobs", "retry", "job_nope"], "no job 'job_nope'"),
]


@pytest.mark.parametrize("argv,expect", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_argument_is_one_line_and_changes_nothing(cli_project, argv, expect):
    root, _ = cli_project
    path = str(root / "p.duckdb")
    with Project(path) as p:
        before = snapshot(p)
    code, out, err = run_cli([argv[0], "--project", path, *argv[1:]])
    assert code == 2, (out, err)
    assert "Traceback" not in err + out
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("->")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], err
    with Project(path) as p:
        assert snapshot(p) == before


def test_a_model_from_another_project_is_refused(cli_project):
    root, model_id = cli_project
    other = str(root / "other.duckdb")
    with Project(other) as p:
        before = snapshot(p)
    code, _, err = run_cli(["generate", "--project", other, "--model", model_id])
    assert code == 2 and err.strip() == f"error: no model {model_id!r} in other.duckdb"
    with Project(other) as p:
        assert snapshot(p) == before


@pytest.mark.parametrize("argv", [["generate", "--variations", "many"],
                                  ["train", "--steps", "1e9.5"],
                                  ["jobs", "explode"],
                                  ["curate", "--generation", "g", "--metric", "l7"]])
def test_malformed_arguments_get_argparse_usage_not_a_traceback(cli_project, argv):
    root, _ = cli_project
    code, out, err = run_cli([argv[0], "--project", str(root / "p.duckdb"), *argv[1:]])
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"rcdm-studio {argv[0]}: error:")


def test_a_missing_project_is_not_created_by_status_or_check(tmp_path):
    for cmd in ("status", "check", "jobs"):
        code, _, err = run_cli([cmd, "--project", str(tmp_path / "nope")])
        assert code == 2 and err.strip() == f"error: no project at {tmp_path / 'nope.duckdb'}"
    assert list(tmp_path.iterdir()) == []
