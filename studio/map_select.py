"""The 2-D map's selection endpoint: a lasso or a box answered without a Gradio event.

Through a Gradio event, a lasso over 200,000 points took about a second from mouse-up to its
gallery: the page dispatched the event 350-600 ms after the mouse-up, and the queue, the
gallery's post-processing and the component update took 650-1,100 ms more. The map's script
now posts its bit mask straight to ``POST /rcdm/map-selection`` and draws the answer (the status
line and the thumbnails) itself.

**Who may ask.** Every map value the studio sends carries a token: a random capability
registered here (``MapViews``) with the session that drew the map, its project, its layout and
the band controls' values at that moment. The endpoint answers only a known token (and, behind
``--auth``'s login page, a signed-in cookie), acts as that session
(``studio.context.acting_as``), only reads, and keeps the session's last selection: what the
map's Keep / Drop buttons act on. Tokens and selections are bounded (the oldest are forgotten).
"""

from __future__ import annotations

import base64
import inspect
import logging
import math
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from fastapi import Request  # at module level: FastAPI reads the endpoint's annotations

from engine.config import MAP_MAX_POINTS
from engine.errors import StudioError

log = logging.getLogger(__name__)

PATH = "/rcdm/map-selection"
MAX_VIEWS = 1024  # map values remembered (each band change or recolour makes one)
MAX_PICKED = 64  # sessions whose last selection is kept for Keep / Drop
MAX_MASK_CHARS = 4 * math.ceil(math.ceil(MAP_MAX_POINTS / 8) / 3)  # base64 of a full mask
MAX_CONCURRENT = 2  # selections answered at once (the rest wait): the studio stays responsive


@dataclass(frozen=True)
class MapView:
    """A drawn map: the session that drew it, its project file, its layout (id, points) and
    the band controls' values when it was drawn."""

    session: str
    project: str
    layout: str
    count: int
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Picked:
    """A session's last selection: the generated images' sample indices, in gallery order."""

    project: str
    generation: str
    indices: np.ndarray


class MapViews:
    """The map tokens and the last selection of each session (thread-safe, bounded)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._views: OrderedDict[str, MapView] = OrderedDict()
        self._picked: OrderedDict[str, Picked] = OrderedDict()
        self._sort: dict[str, tuple[bool, str | None, str | None]] = {}

    def register(self, view: MapView) -> str:
        """A new token for ``view`` (the oldest tokens are forgotten past ``MAX_VIEWS``)."""
        token = secrets.token_urlsafe(16)
        with self._lock:
            self._views[token] = view
            while len(self._views) > MAX_VIEWS:
                self._views.popitem(last=False)
        return token

    def get(self, token: str) -> MapView | None:
        with self._lock:
            return self._views.get(token)

    def set_sort(self, session: str, sort: bool, key: str | None, order: str | None) -> None:
        """The gallery order a session asked for ("Sort a selection by the score of ...")."""
        with self._lock:
            if sort:
                self._sort[session] = (True, key, order)
                while len(self._sort) > MAX_VIEWS:
                    self._sort.pop(next(iter(self._sort)))
            else:
                self._sort.pop(session, None)

    def sort(self, session: str) -> tuple[bool, str | None, str | None]:
        with self._lock:
            return self._sort.get(session, (False, None, None))

    def remember(self, session: str, picked: Picked) -> None:
        with self._lock:
            self._picked[session] = picked
            self._picked.move_to_end(session)
            while len(self._picked) > MAX_PICKED:
                self._picked.popitem(last=False)

    def picked(self, session: str, project: str, generation: str) -> np.ndarray | None:
        """The session's last selection when it was made on this project and generation."""
        with self._lock:
            p = self._picked.get(session)
        if p is None or p.project != project or p.generation != generation:
            return None
        return p.indices


def mask_rows(mask_b64: str, count: int) -> np.ndarray:
    """Rows of the layout picked by a lasso or a box: the browser's bit per point (least
    significant bit first, base64) -> (K,) int64 row numbers.

    Raises:
        InvalidSelectionError: not base64, or not one bit per point of the map.
    """
    try:
        raw = np.frombuffer(base64.b64decode(mask_b64 or "", validate=True), dtype=np.uint8)
    except ValueError:
        raise InvalidSelectionError("the selection is not base64") from None
    if len(raw) not in (0, math.ceil(count / 8)):
        raise InvalidSelectionError(f"the selection has {len(raw) * 8} bits for a map of "
                                    f"{count:,} points: draw the map again")
    bits = np.unpackbits(raw, bitorder="little")[:count]
    return np.flatnonzero(bits).astype(np.int64)


class InvalidSelectionError(StudioError):
    """A selection the endpoint cannot read (a stale map, a malformed mask)."""


def install(app: Any, ctx: Any, answer: Callable[[Any, MapView, np.ndarray], dict[str, Any]],
            acting_as: Callable[[str], Any]) -> None:
    """Add ``POST /rcdm/map-selection`` to the studio's server (Gradio's FastAPI ``app``).

    ``answer(ctx, view, rows)`` computes the selection's status and gallery for the map
    ``view`` (rows of its layout), called inside ``acting_as(view.session)``. The request is
    JSON ``{"token": str, "mask": base64}``; the answer JSON ``{"text", "items": [{"src",
    "caption", "i"}], ...}`` or ``{"error": "..."}`` with status 400 / 401 / 409.
    """
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    gate = threading.BoundedSemaphore(MAX_CONCURRENT)

    def work(view: MapView, mask: str) -> dict[str, Any]:
        if not ctx.knows(view.session):
            raise InvalidSelectionError("this page's session has ended: reload the page")
        with gate, acting_as(view.session):
            return answer(ctx, view, mask_rows(mask, view.count))

    async def select(request: Request) -> JSONResponse:
        if not await _signed_in(app, request):
            return JSONResponse({"error": "sign in first"}, status_code=401)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the request is not JSON"}, status_code=400)
        token, mask = (body.get("token"), body.get("mask")) if isinstance(body, dict) \
            else (None, None)
        if not isinstance(token, str) or not isinstance(mask, str) or len(token) > 64 \
                or len(mask) > MAX_MASK_CHARS:
            return JSONResponse({"error": "expected {token, mask}"}, status_code=400)
        view = ctx.map_views.get(token)
        if view is None:
            return JSONResponse({"error": "this map is no longer known to the studio: draw "
                                          "it again"}, status_code=409)
        try:
            return JSONResponse(await run_in_threadpool(work, view, mask))
        except StudioError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        except Exception:  # noqa: BLE001 - the page shows one line; the log has the rest
            log.exception("map selection failed")
            return JSONResponse({"error": "the selection failed: see the studio's log"},
                                status_code=500)

    app.add_api_route(PATH, select, methods=["POST"], include_in_schema=False)


async def _signed_in(app: Any, request: Any) -> bool:
    """Gradio's own login check (``--auth``'s login page): the session cookie must be valid
    when the server has a login."""
    auth, dependency = getattr(app, "auth", None), getattr(app, "auth_dependency", None)
    if auth is None and dependency is None:
        return True
    if dependency is not None:
        user = dependency(request)
        if inspect.isawaitable(user):
            user = await user
        return user is not None
    cookie = getattr(app, "cookie_id", "")
    token = (request.cookies.get(f"access-token-{cookie}")
             or request.cookies.get(f"access-token-unsecure-{cookie}"))
    return app.tokens.get(token) is not None
