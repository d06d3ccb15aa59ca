"""The access bar under the header: who this browser session is in a shared studio (a
visitor, or an editor once signed in), and a hint when no project is open.

In a public studio (``--share public``) a visitor browses, curates and downloads; signing in
(a user and password of ``--auth`` / ``RCDM_STUDIO_AUTH``, or Hugging Face on a Space that
enables OAuth) makes this session an editor. The check is the owner's (``StudioContext``), not
this bar's: hiding a button is never the protection.

Handlers first (module-level, the context as first argument), then ``build``: the layout and
one line of wiring per event.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from studio import ui
from studio.context import StudioContext
from studio.shared import Shared

log = logging.getLogger(__name__)


def status_html(ctx: StudioContext) -> str:
    parts = []
    if ctx.access.public:
        s = ctx.session()
        if ctx.editor:
            parts.append(f'<span class="access editor">Signed in as <b>{ui.escape(s.user)}</b> '
                         f'· editor</span>')
        else:
            parts.append('<span class="access visitor">Public studio · you are browsing as a '
                         'visitor: browse, curate and download exports; sign in to import, '
                         'train, generate or evaluate</span>')
    if not ctx.has_project():
        parts.append('<span class="access no-project">No project is open: open the demo or '
                     'a project in the Projects tab</span>')
    return " ".join(parts)


def refresh(ctx: StudioContext) -> tuple[str, Any, Any, Any]:
    """The bar's text, the sign-in form, the sign-out button, and the bar itself (hidden
    when it has nothing to say: a private studio with a project open)."""
    signed = ctx.access.public and ctx.editor
    text = status_html(ctx)
    return (text, gr.update(visible=ctx.access.can_sign_in and not signed),
            gr.update(visible=signed), gr.update(visible=bool(text)))


def refresh_oauth(ctx: StudioContext, profile: gr.OAuthProfile | None
                  ) -> tuple[str, Any, Any, Any]:
    """``refresh`` on a Space with OAuth: a Hugging Face user among the editors signs in."""
    if profile is not None and not ctx.editor:
        ctx.sign_in_hf(getattr(profile, "username", None))
    return refresh(ctx)


@ui.guard(5)
def on_sign_in(ctx: StudioContext, user: str, password: str) -> tuple[Any, ...]:
    if not ctx.sign_in((user or "").strip(), password or ""):
        return (ui.error_md("wrong user or password"),) + (gr.skip(),) * 4
    return (*refresh(ctx), ctx.revision())


def on_sign_out(ctx: StudioContext) -> tuple[Any, ...]:
    ctx.sign_out()
    return (*refresh(ctx), ctx.revision())


def build(ctx: StudioContext, shared: Shared) -> None:
    access = ctx.access
    with gr.Row(elem_classes=["access-bar"], visible=False) as bar:
        status = gr.HTML(elem_id="access-status")
        with gr.Row(visible=False, elem_classes=["bottom-align"]) as form:
            user = gr.Textbox(label="User", scale=2, min_width=120, elem_id="sign-in-user")
            password = gr.Textbox(label="Password", type="password", scale=2, min_width=120,
                                  elem_id="sign-in-password")
            sign_in = gr.Button("Sign in", scale=1, min_width=90, elem_id="sign-in")
        with gr.Row(visible=False) as out:
            sign_out = gr.Button("Sign out", size="sm", scale=0, min_width=100, elem_id="sign-out")
        if access.oauth:
            gr.LoginButton(elem_id="hf-sign-in")
    outputs = [status, form, out, bar]

    sign_in.click(ui.bind(on_sign_in, ctx), [user, password], outputs + [shared.revision],
                  concurrency_id="access", api_name="sign_in")
    password.submit(ui.bind(on_sign_in, ctx), [user, password], outputs + [shared.revision],
                    concurrency_id="access", api_name=False)
    sign_out.click(ui.bind(on_sign_out, ctx), None, outputs + [shared.revision],
                   concurrency_id="access", api_name="sign_out")
    shared.on_refresh(ui.bind(refresh_oauth if access.oauth else refresh, ctx), [], outputs)
