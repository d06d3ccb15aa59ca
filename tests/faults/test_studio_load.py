"""The running studio under load and its file serving.

Ten clients poll the jobs panel over HTTP (Gradio's ``/gradio_api/call`` API) while a
generation job runs: every poll is answered, with the running job in it, and the job
finishes and is ingested afterwards. How fast they are answered is a timing claim, measured
by ``benchmarks/studio_load.py`` (no timing assertions here: CI machines are shared). Files
are served from the project's assets only: not the project file beside them, not the rest
of the disk.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from urllib.parse import quote

import httpx
import pytest

from engine.config import GenerateConfig
from engine.project import Image, Job

from .conftest import assert_repairable, wait_for

CLIENTS = 10
POLLS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def studio(built_base, tmp_path_factory):
    from studio.app import close, launch

    root = tmp_path_factory.mktemp("studio_load")
    shutil.copy2(built_base, root / "p.duckdb")
    shutil.copytree(built_base.with_name("base.assets"), root / "p.assets")
    port = _free_port()
    blocks = launch(root / "p.duckdb", port=port, open_browser=False, prevent_thread_lock=True)
    yield blocks, f"http://127.0.0.1:{port}/"
    close(blocks)


def _jobs_panel_api(blocks) -> str:
    """The api name of the event that redraws the jobs table without inputs."""
    for fn in blocks.fns.values():
        ids = [getattr(o, "elem_id", None) for o in fn.outputs]
        if "jobs-table" in ids and not fn.inputs and fn.api_name:
            return fn.api_name
    raise AssertionError("no input-less event redraws the jobs table")


def _call(client: httpx.Client, url: str, api: str) -> str:
    r = client.post(f"{url}gradio_api/call/{api}", json={"data": []})
    r.raise_for_status()
    event = r.json()["event_id"]
    r = client.get(f"{url}gradio_api/call/{api}/{event}")
    r.raise_for_status()
    return r.text


def test_ten_clients_poll_the_jobs_panel_during_a_generation(studio):
    from engine.stages import generate_stage

    blocks, url = studio
    ctx = blocks.studio
    api = _jobs_panel_api(blocks)
    job = ctx.submit(generate_stage.prepare(ctx.project, GenerateConfig(variations=20, steps=8),
                                      "tiny-model"))
    assert ctx.project.get(Job, job.id).status == "running"
    latencies: list[float] = []
    errors: list[str] = []

    def client_loop() -> None:
        with httpx.Client(timeout=10) as client:
            for _ in range(POLLS):
                t = time.perf_counter()
                try:
                    text = _call(client, url, api)
                    if "event: complete" not in text or job.id not in text:
                        errors.append(text[:300])
                except Exception as exc:  # noqa: BLE001 - collected and reported below
                    errors.append(repr(exc))
                latencies.append(time.perf_counter() - t)
                time.sleep(0.2)

    threads = [threading.Thread(target=client_loop) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert len(latencies) == CLIENTS * POLLS
    print(f"{CLIENTS} clients x {POLLS} polls: slowest answers "
          f"{[round(x, 3) for x in sorted(latencies)[-3:]]} s")
    # the job was running while they polled, and finishes and is ingested afterwards
    wait_for(lambda: ctx.poll() and ctx.project.get(Job, job.id).status not in
             ("queued", "running", "ingesting"), 180, "the generation to finish")
    assert ctx.project.get(Job, job.id).status == "done"
    assert_repairable(ctx.project)


def _get_file(url: str, path: str) -> int:
    return httpx.get(f"{url}gradio_api/file={quote(path)}", timeout=10).status_code


def test_only_the_projects_assets_are_served(studio):
    blocks, url = studio
    project = blocks.studio.project
    thumb = project.assets / project.list(Image)[0].thumb
    assert _get_file(url, str(thumb)) == 200
    refused = [str(project.path),  # the project file itself, beside the assets
               "/etc/passwd",
               str(project.assets / ".." / project.path.name),
               str(project.assets / "jobs" / ".." / ".." / project.path.name)]
    for path in refused:
        assert _get_file(url, path) in (403, 404), path


def test_the_default_bind_is_localhost(studio):
    import inspect

    from studio.app import launch
    from studio.cli import build_parser

    blocks, _ = studio
    assert blocks.server_name == "127.0.0.1"
    assert inspect.signature(launch).parameters["host"].default == "127.0.0.1"
    assert build_parser().parse_args([]).host in ("127.0.0.1", __import__("os").environ.get(
        "GRADIO_SERVER_NAME", "127.0.0.1"))
