"""The studio is safe to expose: login, files served only from the project's assets, upload
size limit, zip uploads extracted safely, projects opened only inside the projects folder.

One studio is launched (127.0.0.1, with a login and a 64 KB upload limit) on a project with
a tiny dataset; raw HTTP requests and gradio_client talk to it as a visitor would.
"""

from __future__ import annotations

import contextlib
import io
import socket
import stat
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from conftest import import_folder, write_tiny_folder

from engine.project import Dataset, Job

USER, PASSWORD = "alice", "s3cret-pass"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from engine.config import ImportConfig
    from engine.project import Project
    from studio.app import close, launch

    root = tmp_path_factory.mktemp("secure")
    mp = pytest.MonkeyPatch()
    mp.setenv("RCDM_STUDIO_HOME", str(root / "home"))
    mp.setenv("RCDM_STUDIO_PROJECTS", str(root / "projects"))
    path = root / "projects" / "guarded"
    with Project(path) as p:
        import_folder(p, write_tiny_folder(root / "tiny", per_class=4), "tiny",
                                 ImportConfig(test_fraction=0.25))
    port = _free_port()
    blocks = launch(path, port=port, open_browser=False, prevent_thread_lock=True,
                    auth=f"{USER}:{PASSWORD}", max_file_size="64kb")
    url = f"http://127.0.0.1:{port}"
    yield blocks, url, root
    close(blocks)
    mp.undo()


@contextlib.contextmanager
def _login(url: str, user: str = USER, password: str = PASSWORD):
    """An httpx client logged in (the cookie is marked Secure: sent by hand over http)."""
    with httpx.Client(base_url=url, timeout=20) as http:
        r = http.post("/login", data={"username": user, "password": password})
        assert r.status_code == 200, r.text
        http.headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in r.cookies.items())
        yield http


def test_login_is_required(server):
    _, url, _ = server
    assert httpx.get(f"{url}/config", timeout=20).status_code in (401, 403)
    wrong = httpx.post(f"{url}/login", data={"username": USER, "password": "wrong"},
                       timeout=20)
    assert wrong.status_code in (400, 401)
    with _login(url) as http:
        assert http.get("/config").status_code == 200


def test_files_served_only_from_the_assets(server):
    blocks, url, _ = server
    project = blocks.studio.project
    thumb = next(project.assets.rglob("*.png"))
    with _login(url) as http:
        ok = http.get(f"/gradio_api/file={thumb}")
        assert ok.status_code == 200 and ok.content[:4] == b"\x89PNG"
        for target in ("/etc/passwd", str(project.path), str(Path(__file__).resolve()),
                       f"{project.assets}/../{project.path.name}"):
            r = http.get(f"/gradio_api/file={target}")
            assert r.status_code in (403, 404), (target, r.status_code)
            assert b"root:" not in r.content
    # without a login not even an asset is served
    assert httpx.get(f"{url}/gradio_api/file={thumb}", timeout=20).status_code in (401, 403)


def test_upload_size_is_limited(server):
    _, url, _ = server
    with _login(url) as http:
        small = http.post("/gradio_api/upload",
                          files={"files": ("a.zip", b"x" * 1000, "application/zip")})
        assert small.status_code == 200
        big = http.post("/gradio_api/upload",
                        files={"files": ("b.zip", b"x" * 200_000, "application/zip")})
        assert big.status_code == 413


def _zip(entries: dict[str, bytes]) -> bytes:
    """A zip whose entries carry regular-file mode bits (as `zip` and ZipFile.write do)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in entries.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            zf.writestr(info, content)
    return buf.getvalue()


def test_zip_upload_imports_and_traversal_is_refused(server, tmp_path):
    from gradio_client import Client, handle_file

    blocks, url, root = server
    client = Client(url + "/", auth=(USER, PASSWORD), verbose=False)
    folder = write_tiny_folder(tmp_path / "pets", classes=2, per_class=3, size=8)
    entries = {f"pets/{p.relative_to(folder).as_posix()}": p.read_bytes()
               for p in sorted(folder.rglob("*.png"))}
    good = tmp_path / "pets.zip"
    good.write_bytes(_zip(entries))
    status = client.predict(handle_file(str(good)), "pets", 0.34, 0, None,
                            api_name="/import_zip")
    assert "queued" in status  # an import job; the unpacked folder waits for it
    ctx = blocks.studio
    job = ctx.project.list(Job, kind="import")[-1]
    deadline = time.monotonic() + 120
    while job.status in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.5)
        ctx.poll()
        job = ctx.project.get(Job, job.id)
    assert job.status == "done", job.error
    ds = ctx.project.get(Dataset, job.result_id)
    assert (ds.name, ds.num_images, ds.num_classes) == ("pets", 6, 2)
    assert not any((ctx.project.assets / "uploads").iterdir())  # temp removed

    evil = tmp_path / "evil.zip"
    evil.write_bytes(_zip({"a/x.png": entries[next(iter(entries))],
                           "../../escaped.txt": b"owned"}))
    status = client.predict(handle_file(str(evil)), "evil", 0.2, 0, None,
                            api_name="/import_zip")
    assert "status-error" in status and "Traceback" not in status
    assert not list(root.rglob("escaped.txt"))


def test_projects_outside_the_folder_are_refused_when_exposed(tmp_path, monkeypatch):
    from engine.errors import InvalidConfigError
    from studio.tabs.projects_tab import resolve_project

    monkeypatch.setenv("RCDM_STUDIO_PROJECTS", str(tmp_path / "projects"))
    assert resolve_project("flowers") == tmp_path / "projects" / "flowers.duckdb"
    inside = tmp_path / "projects" / "sub" / "x.duckdb"
    assert resolve_project(str(inside), restrict=True) == inside
    for bad in ("/etc/passwd", str(tmp_path / "elsewhere"),
                str(tmp_path / "projects" / ".." / "escape")):
        with pytest.raises(InvalidConfigError, match="outside the projects folder"):
            resolve_project(bad, restrict=True)
    assert resolve_project(str(tmp_path / "elsewhere")) == tmp_path / "elsewhere.duckdb"
    for bad in ("", "a b", "../x", "-x"):
        with pytest.raises(InvalidConfigError):
            resolve_project(bad, restrict=True)


def test_auth_parsing_and_exposure_warning():
    from engine.errors import InvalidConfigError
    from studio.app import exposure_warning, parse_auth

    assert parse_auth("a:b, c:d:e") == [("a", "b"), ("c", "d:e")]
    assert parse_auth("") is None and parse_auth(None) is None
    for bad in ("nopassword", ":x", "u:"):
        with pytest.raises(InvalidConfigError):
            parse_auth(bad)
    assert exposure_warning("127.0.0.1", None, {}) is None
    assert "without a login" in exposure_warning("0.0.0.0", None, {})
    assert exposure_warning("0.0.0.0", [("a", "b")], {}) is None
    assert exposure_warning("0.0.0.0", None, {"SPACE_ID": "me/studio"}) is None


def test_folder_import_stays_inside_the_projects_folder_when_exposed(tmp_path, monkeypatch):
    """Bound to the network, the Data tab's folder box cannot read the server's disk."""
    from engine.errors import InvalidConfigError
    from engine.project import Dataset
    from studio.context import StudioContext
    from studio.tabs import data_tab
    from tests.conftest import write_tiny_folder

    monkeypatch.setenv("RCDM_STUDIO_PROJECTS", str(tmp_path / "projects"))
    outside = write_tiny_folder(tmp_path / "outside")
    inside = write_tiny_folder(tmp_path / "projects" / "uploads" / "tiny")
    ctx = StudioContext(tmp_path / "projects" / "p")
    try:
        ctx.restrict = True
        with pytest.raises(InvalidConfigError, match="upload a zip"):
            data_tab.import_folder(ctx, str(outside), "out")
        assert ctx.project.list(Dataset) == [] and ctx.project.list(Job) == []
        job = ctx.jobs.wait(data_tab.import_folder(ctx, str(inside), "in").id, timeout=120)
        assert ctx.project.get(Dataset, job.result_id).num_images > 0
        ctx.restrict = False  # a local studio reads any folder
        job = ctx.jobs.wait(data_tab.import_folder(ctx, str(outside), "out").id, timeout=120)
        assert ctx.project.get(Dataset, job.result_id).name == "out"
    finally:
        ctx.close()


def test_the_studio_references_only_folders_inside_the_projects_folder(tmp_path, monkeypatch):
    """Issue 17: the Data tab's "reference" mode leaves images where they are, so it takes
    only folders inside the projects folder (the studio reads nothing outside it); the full
    image of a referenced dataset is sent as an image, never as a path to serve."""
    from engine.config import ImportConfig
    from engine.errors import InvalidConfigError
    from engine.project import Dataset
    from studio.context import StudioContext
    from studio.tabs import data_tab
    from tests.conftest import write_tiny_folder

    monkeypatch.setenv("RCDM_STUDIO_PROJECTS", str(tmp_path / "projects"))
    outside = write_tiny_folder(tmp_path / "outside")
    inside = write_tiny_folder(tmp_path / "projects" / "shared" / "tiny", size=120)
    ctx = StudioContext(tmp_path / "projects" / "p")
    try:
        reference = ImportConfig(mode="reference")
        with pytest.raises(InvalidConfigError, match="references only folders inside"):
            data_tab.import_folder(ctx, str(outside), "out", reference)
        assert ctx.project.list(Job) == []
        job = ctx.jobs.wait(data_tab.import_folder(ctx, str(inside), "in", reference).id,
                            timeout=120)
        ds = ctx.project.get(Dataset, job.result_id)
        image = ctx.project.images(ds.id).iloc[0]
        assert image["path"].startswith(str(inside))  # left where it is
        shown, _ = data_tab.image_details(ctx, image["id"])
        assert not isinstance(shown, str) and shown.size == (120, 120)
    finally:
        ctx.close()
