"""Components and refresh hooks shared between the tabs of one app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import gradio as gr


@dataclass
class Refresher:
    fn: Callable[..., Any]
    inputs: list[Any]
    outputs: list[Any]


@dataclass
class Shared:
    """Cross-tab widgets.

    Attributes:
        dataset: the dataset the Data, Train and Evaluate tabs work on (a dropdown).
        revision: signature of the project's rows; changes when a job finishes, a row is
            added, ... Every tab refreshes its lists on its ``change``.
        refreshers: registered by the tabs; run on page load and on every revision change.
        project: key of the open project and its settings; changes on page load, when the
            studio switches project and when settings are saved.
        loaders: registered by the tabs; run when ``project`` changes (form defaults).
    """

    dataset: gr.Dropdown | None = None
    revision: gr.State | None = None
    project: gr.State | None = None
    refreshers: list[Refresher] = field(default_factory=list)
    loaders: list[Refresher] = field(default_factory=list)

    def on_refresh(self, fn: Callable[..., Any], inputs: list[Any], outputs: list[Any]) -> None:
        self.refreshers.append(Refresher(fn, list(inputs), list(outputs)))

    def on_project(self, fn: Callable[..., Any], inputs: list[Any], outputs: list[Any]) -> None:
        self.loaders.append(Refresher(fn, list(inputs), list(outputs)))
