"""Small helpers shared by the tabs: error display, dropdown choices, formatting.

Engine errors the user can cause (``StudioError``) reach the page as one sentence in the
tab's status line (and a toast), and so do the operating system's refusals the input or the
machine causes (permission denied, a full disk, a file gone, input nested too deeply: worded
by ``engine.errors.describe_os_error``, as in the CLI); anything else is logged with its
traceback and shown as a short line that points to the log, never as a stack trace.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import gradio as gr

from engine.errors import StudioError, describe_os_error
from studio.context import NoProjectError

log = logging.getLogger(__name__)


def bind(fn: Callable, *args: Any) -> Callable:
    """``fn`` with its first arguments bound (the studio context, maybe more), for wiring a
    module-level handler ``fn(ctx, ...)`` to an event. Unlike ``functools.partial`` the
    result keeps ``fn``'s signature (less the bound parameters) and type hints, which Gradio
    reads to pass ``gr.SelectData`` and ``gr.Progress``."""

    @functools.wraps(fn)
    def bound(*rest: Any, **kwargs: Any) -> Any:
        return fn(*args, *rest, **kwargs)

    sig = inspect.signature(fn)
    bound.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=list(sig.parameters.values())[len(args):])
    return bound


def initial(fn: Callable, ctx: Any) -> Any:
    """A view's value when the page is built: ``fn(ctx)`` on the default project, None when
    the studio has none (every view is filled in again when a session loads)."""
    return fn(ctx) if ctx.has_project() else None


def error_text(exc: BaseException) -> str:
    if isinstance(exc, StudioError):
        return str(exc)
    text = describe_os_error(exc)
    if text is not None:
        return text
    return f"unexpected {type(exc).__name__}: {exc} (details in the studio's log)"


def expected(exc: BaseException) -> bool:
    """True for an error the user or the machine caused (shown as one sentence), False for a
    bug (logged with its traceback)."""
    return isinstance(exc, StudioError) or describe_os_error(exc) is not None


def guard(n_outputs: int, status: int = 0) -> Callable:
    """Wrap a handler so that an error becomes a message in output ``status``.

    The other outputs are left unchanged (``gr.skip()``).
    """

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - shown in the page, logged in full
                if expected(exc):
                    log.info("%s: %s", fn.__name__, exc, exc_info=not isinstance(exc,
                                                                                  StudioError))
                else:
                    log.exception("handler %s failed", fn.__name__)
                gr.Warning(error_text(exc))
                out = [gr.skip()] * n_outputs
                out[status] = error_md(exc)
                return out[0] if n_outputs == 1 else tuple(out)

        return inner

    return wrap


def guard_refresh(fn: Callable, n_outputs: int) -> Callable:
    """Wrap a refresh hook: an error is logged and shown as a toast, the views keep their
    values (a refresh that fails, e.g. during a project switch, never breaks the page)."""

    @functools.wraps(fn)
    def inner(*args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - shown in the page, logged in full
            if isinstance(exc, NoProjectError):  # the access bar says it, once
                out = [gr.skip()] * n_outputs
                return out[0] if n_outputs == 1 else tuple(out)
            if expected(exc):
                log.info("refresh %s: %s", getattr(fn, "__name__", fn), exc)
            else:
                log.exception("refresh %s failed", getattr(fn, "__name__", fn))
            gr.Warning(error_text(exc))
            out = [gr.skip()] * n_outputs
            return out[0] if n_outputs == 1 else tuple(out)

    return inner


def error_md(exc: BaseException | str) -> str:
    text = exc if isinstance(exc, str) else error_text(exc)
    return f'<div class="status-error">⚠ {escape(text)}</div>'


def ok_md(text: str) -> str:
    return f'<div class="status-ok">✓ {escape(text)}</div>'


def info_md(text: str) -> str:
    return f'<div class="status-info">{escape(text)}</div>'


def escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def dropdown(choices: list[tuple[str, str]], current: str | None,
             prefer_last: bool = True) -> Any:
    """A dropdown update keeping ``current`` when it is still a choice, else the newest."""
    values = [v for _, v in choices]
    if current in values:
        value = current
    elif values:
        value = values[-1] if prefer_last else values[0]
    else:
        value = None
    return gr.update(choices=choices, value=value)


def pct(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return ""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {(seconds % 3600) // 60:02d} min"




def first(values: Iterable[Any], default: Any = None) -> Any:
    for v in values:
        return v
    return default


GALLERY_THUMB = 128  # longer side of the images galleries show


def gallery_path(path: str | os.PathLike[str], size: int = GALLERY_THUMB) -> str:
    """What a gallery should load for the image at ``path``: the file itself when it is small,
    else a thumbnail cached beside it in ``.thumbs/`` (made once, atomically), so a page of
    256 px generated images does not send full PNGs. Unreadable images are returned as they
    are (the gallery shows them broken; check reports them)."""
    from PIL import Image

    from engine.data import make_thumbnail

    src = Path(path)
    thumb = src.parent / ".thumbs" / f"{src.stem}.png"
    if thumb.exists():
        return str(thumb)
    try:
        with Image.open(src) as img:
            if max(img.size) <= size:
                return str(src)
            small = make_thumbnail(img.convert("RGB"), size)
        thumb.parent.mkdir(exist_ok=True)
        tmp = thumb.with_name(f"{thumb.stem}.{os.getpid()}.tmp.png")
        small.save(tmp)
        os.replace(tmp, thumb)
        return str(thumb)
    except OSError as exc:
        log.info("no thumbnail for %s: %s", src, exc)
        return str(src)
