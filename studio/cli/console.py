"""What every command shares: the common options, opening the project, running a job in this
process with a progress bar and Ctrl-C as cancel, and printing the result (text or one JSON line)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from engine.progress import CancelToken, ProgressFn, console_progress


def project_arg(p: argparse.ArgumentParser, top: bool = False) -> None:
    # Sub-commands do not repeat the default, so `rcdm-studio --project X demo` keeps X.
    default = (os.environ.get("RCDM_STUDIO_PROJECT") or None) if top else argparse.SUPPRESS
    p.add_argument("--project", default=default,
                   help="the project: a bare NAME is NAME.duckdb in the projects folder "
                        "($RCDM_STUDIO_PROJECTS, default ./projects), the one the studio's "
                        "Projects tab opens; a path (./NAME, /data/NAME.duckdb) is that file; "
                        "its assets go beside it in NAME.assets/. Default $RCDM_STUDIO_PROJECT; "
                        "the studio without one opens on its Projects tab")


def resolve_project_arg(args: argparse.Namespace) -> None:
    """Turn ``--project`` into the project file's path (``engine.paths.resolve_project``).

    Raises:
        InvalidConfigError: a malformed name.
    """
    from engine.paths import resolve_project

    if getattr(args, "project", None):
        args.project = str(resolve_project(args.project))


def project_file(args: argparse.Namespace) -> str:
    """``--project`` as a path, for a command that needs one.

    Raises:
        InvalidConfigError: no ``--project`` (and no ``$RCDM_STUDIO_PROJECT``).
    """
    from engine.errors import InvalidConfigError

    if not getattr(args, "project", None):
        raise InvalidConfigError(f"`{args.command}` needs a project: --project NAME (in the "
                                 f"projects folder) or --project PATH/NAME.duckdb")
    return str(args.project)


def json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="print the result as one JSON object on the last line")


def device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None,
                   help="torch device: cpu, cuda, cuda:1, ... (default: the project's setting, "
                        "as in the studio's Settings tab; auto = cuda when there is one)")


def set_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                   help=f"any other {what} option, e.g. meada_adv_lr=0.25 (a JSON value or a "
                        f"string; repeatable; applied last)")


def with_sets(config: Any, sets: list[str]) -> Any:
    """``config`` with the ``--set KEY=VALUE`` overrides (``engine.config.with_overrides``)."""
    from engine.config import with_overrides

    return with_overrides(config, sets)


def open_project(args: argparse.Namespace, create: bool = True):
    """The project named by ``--project`` (created unless ``create`` is False). A ``--device``
    left out is filled in from the project's settings, so the command line and the studio run
    on the same device."""
    from engine import settings
    from engine.project import Project

    project = Project(project_file(args), create=create)
    if hasattr(args, "device") and not args.device:
        args.device = settings.device(project)
    return project


def machine_device(args: argparse.Namespace) -> str:
    """``--device``, or this machine's default when no project is open (cuda when present)."""
    from engine import settings

    return args.device or ("cuda" if settings.machine_profile()["cuda"] else "cpu")


@contextmanager
def interruptible() -> Iterator[tuple[ProgressFn, CancelToken]]:
    """A progress bar and a cancel token that Ctrl-C sets: the one wrapper every long command
    runs in. The engine stops at its next step and saves what it can; the bar is closed and the
    previous SIGINT handler restored however the block ends."""
    cancel = CancelToken()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.cancel())
    bar = console_progress()
    try:
        yield bar, cancel
    finally:
        bar.close()
        signal.signal(signal.SIGINT, previous)


def run_job(project: Any, spec: Any) -> Any:
    """Run a stage's job (``spec`` from ``prepare``) in this process, inside ``interruptible``;
    returns the finished job row."""
    from engine.jobs import JobManager

    print(f"-> {spec.title}", file=sys.stderr)
    with interruptible() as (bar, cancel):
        return JobManager(project).run_inline(spec, progress=bar, cancel=cancel)


def emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    """Print the result: ``text`` for people, or ``obj`` as one JSON line with ``--json``."""
    if getattr(args, "json", False):
        print(json.dumps(obj, default=str))
    else:
        print(text)
