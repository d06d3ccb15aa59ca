"""A public studio (``--share public``) against hostile clients: visitors browse but cannot
write, each session keeps its own project, signing in is checked by the owner, quotas stop
jobs with one sentence. The clients are ``gradio_client`` sessions, as a script would be."""

from __future__ import annotations

import socket

import pytest
from conftest import write_tiny_folder

from engine.errors import InvalidConfigError
from engine.project import Dataset, Job, Project, Selection

USER, PASSWORD = "editor", "s3cret-pass"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def public(tmp_path, monkeypatch):
    """A public studio on ``projects/pub`` (empty) beside ``projects/other``, with a tiny image
    folder inside the projects folder; yields (blocks, url, projects folder, image folder)."""
    from studio.access import Quotas
    from studio.app import close, launch

    projects = tmp_path / "projects"
    monkeypatch.setenv("RCDM_STUDIO_PROJECTS", str(projects))
    monkeypatch.setenv("RCDM_STUDIO_HOME", str(tmp_path / "home"))
    projects.mkdir()
    Project(projects / "other").close()
    folder = write_tiny_folder(projects / "incoming" / "pets", classes=2, per_class=3, size=8)
    port = _free_port()
    blocks = launch(projects / "pub", port=port, open_browser=False, prevent_thread_lock=True,
                    auth=f"{USER}:{PASSWORD}", share="public",
                    quotas=Quotas(max_jobs=1, max_disk=None))
    yield blocks, f"http://127.0.0.1:{port}/", projects, folder
    close(blocks)


def _client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


def test_visitors_browse_but_cannot_write(public):
    blocks, url, projects, folder = public
    ctx = blocks.studio
    visitor = _client(url)
    status, _ = visitor.predict("new", api_name="/create_project")
    assert "sign in to create a project" in status and "Traceback" not in status
    assert not (projects / "new.duckdb").exists()
    status = visitor.predict(str(folder), "pets", 0.34, 0, None, api_name="/import_folder")
    assert "sign in to" in status
    status, _ = visitor.predict(api_name="/open_demo")  # the demo does not exist yet
    assert "sign in to create the demo project" in status
    assert not (projects / "demo.duckdb").exists()
    status, recent = visitor.predict("other", api_name="/open_project")  # browsing is allowed
    assert "opened other" in status and recent["value"] == str(projects / "other.duckdb")
    assert ctx.project.list(Job) == [] and ctx.project.list(Dataset) == []
    # the page's login form is the only way in, and it is checked by the owner
    status = visitor.predict(USER, "wrong", api_name="/sign_in")
    assert "wrong user or password" in status
    status = visitor.predict(USER, PASSWORD, api_name="/sign_in")
    assert f"Signed in as <b>{USER}</b>" in status
    status, _ = visitor.predict("new", api_name="/create_project")
    assert "created new" in status and (projects / "new.duckdb").is_file()
    status = visitor.predict(str(folder), "pets", 0.34, 0, None, api_name="/import_folder")
    assert "queued" in status
    # another visitor is still a visitor, and still on the default project
    other = _client(url)
    status, _ = other.predict("newer", api_name="/create_project")
    assert "sign in to create a project" in status
    assert ctx.project.path == (projects / "pub.duckdb").resolve()
    status = visitor.predict(api_name="/sign_out")
    assert "visitor" in status


def test_a_visitor_project_allows_curation_writes_only(tmp_path):
    from studio.access import Access, SignInRequiredError, VisitorProject

    project = Project(tmp_path / "p")
    try:
        seen = VisitorProject(project, Access("public"))
        assert seen.path == project.path and seen.list(Dataset) == []  # reads pass
        with pytest.raises(SignInRequiredError, match="sign in to change this project"):
            seen.set_meta("x", "1")
        with pytest.raises(SignInRequiredError):
            seen.add(Dataset(id="ds_x", name="x"))
        with pytest.raises(SignInRequiredError):
            seen.new_folder("models", "mdl_x")
        assert seen.new_folder("selections", "sel_x").is_dir()  # curation's writes pass
        seen.add(Selection(id="sel_x", name="kept", generation_id="gen_x"))
        assert [s.name for s in project.list(Selection)] == ["kept"]
    finally:
        project.close()


def test_quotas_refuse_with_one_sentence(tmp_path):
    from studio.access import Access, QuotaError, Quotas, SignInRequiredError, parse_size

    (tmp_path / "big.bin").write_bytes(b"x" * 5000)
    access = Access("public", quotas=Quotas(max_jobs=2, max_disk=4096), projects_root=tmp_path)
    with pytest.raises(SignInRequiredError, match="sign in to train a model"):
        access.check_job("train", editor=False, active_jobs=0)
    with pytest.raises(QuotaError, match="limit per visitor is 2"):
        access.check_job("export", editor=False, active_jobs=2)
    with pytest.raises(QuotaError, match=r"holds 4\.9 KB, this studio's limit is 4\.0 KB"):
        access.check_job("train", editor=True, active_jobs=0)
    Access("private").check_job("train", editor=False, active_jobs=99)  # private: no checks
    upload = tmp_path / "u.zip"
    upload.write_bytes(b"z" * 2048)
    with pytest.raises(QuotaError, match="the upload is 2.0 KB, the limit is 1.0 KB"):
        Access("public", quotas=Quotas(max_upload=1024)).check_upload(upload)
    assert parse_size("20gb") == 20 * 1024 ** 3 and parse_size("0") is None
    with pytest.raises(InvalidConfigError, match="give a number"):
        parse_size("lots")
    with pytest.raises(InvalidConfigError, match="--share must be one of"):
        Access("everyone")


def test_the_disk_quota_stops_an_editor_job_in_the_app(public, monkeypatch):
    from studio.access import Quotas

    blocks, url, projects, folder = public
    ctx = blocks.studio
    ctx.access.quotas = Quotas(max_jobs=1, max_disk=1024)  # the projects folder holds more
    ctx.access.disk.forget()
    client = _client(url)
    assert "Signed in" in client.predict(USER, PASSWORD, api_name="/sign_in")
    status = client.predict(str(folder), "pets", 0.34, 0, None, api_name="/import_folder")
    assert "this studio's limit is 1.0 KB" in status and "Traceback" not in status
    assert ctx.project.list(Job) == []


def test_sessions_do_not_see_each_others_switches(tmp_path, monkeypatch):
    """Two sessions of a private studio: one switches and creates, the other keeps its
    project; the first's page closing releases the project it alone showed."""
    from studio.app import close, launch

    projects = tmp_path / "projects"
    monkeypatch.setenv("RCDM_STUDIO_PROJECTS", str(projects))
    monkeypatch.setenv("RCDM_STUDIO_HOME", str(tmp_path / "home"))
    port = _free_port()
    blocks = launch(None, port=port, open_browser=False, prevent_thread_lock=True)
    try:
        ctx = blocks.studio
        assert not ctx.has_project() and ctx.open_paths() == []  # nothing made silently
        assert list(tmp_path.glob("**/*.duckdb")) == []
        a, b = _client(f"http://127.0.0.1:{port}/"), _client(f"http://127.0.0.1:{port}/")
        status, recent = a.predict("alpha", api_name="/create_project")
        assert "created alpha" in status
        status, recent = b.predict("beta", api_name="/create_project")
        assert "created beta" in status and recent["value"] == str(projects / "beta.duckdb")
        status, recent = a.predict("alpha", api_name="/open_project")
        assert recent["value"] == str(projects / "alpha.duckdb")  # a is still on alpha
        assert sorted(p.name for p in ctx.open_paths()) == ["alpha.duckdb", "beta.duckdb"]
        assert ctx.sessions() == 2
    finally:
        close(blocks)


def test_a_visitors_zip_is_refused_before_it_is_unpacked(public, tmp_path):
    import zipfile

    from gradio_client import handle_file

    blocks, url, projects, folder = public
    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(folder.rglob("*.png")):
            zf.write(p, f"pets/{p.relative_to(folder).as_posix()}")
    status = _client(url).predict(handle_file(str(archive)), "pets", 0.34, 0, None,
                                  api_name="/import_zip")
    assert "sign in to import a dataset" in status
    uploads = blocks.studio.project.assets / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())  # nothing was extracted


def test_hugging_face_editors_sign_in_and_others_stay_visitors(tmp_path, monkeypatch):
    """On a Space with OAuth (OAUTH_CLIENT_ID set), the access bar's refresh receives the
    signed-in Hugging Face profile: a user listed in the editors becomes an editor, another
    stays a visitor. (The OAuth round trip itself needs a Space; this is what follows it.)"""
    import gradio as gr

    from studio.access import Access
    from studio.context import StudioContext
    from studio.tabs import access_tab

    monkeypatch.setenv("OAUTH_CLIENT_ID", "space-client")
    profile = {"name": "X", "profile": "", "picture": ""}
    ctx = StudioContext(tmp_path / "p", access=Access("public", editors=["Alice"]))
    try:
        assert ctx.access.oauth and not ctx.editor
        access_tab.refresh_oauth(ctx, gr.OAuthProfile({**profile, "preferred_username": "bob"}))
        assert not ctx.editor
        text, *_ = access_tab.refresh_oauth(
            ctx, gr.OAuthProfile({**profile, "preferred_username": "alice"}))
        assert ctx.editor and "Signed in as <b>alice</b>" in text
    finally:
        ctx.close()
