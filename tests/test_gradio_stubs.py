"""The studio imports Gradio without regenerating its type stubs (``studio.gradio_stubs``):
the hook is in place in a fresh process, components still build, and it is idempotent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_fresh_studio_process_skips_stub_generation_and_still_builds_components():
    code = (
        "import sys, studio, gradio as gr, gradio.component_meta as m\n"
        "from studio.gradio_stubs import skip_stub_generation, _SkipStubs\n"
        "assert m.create_or_modify_pyi.__name__ == '_no_stub'\n"
        "assert not any(isinstance(f, _SkipStubs) for f in sys.meta_path)  # used once\n"
        "skip_stub_generation()  # gradio is imported: nothing to install\n"
        "assert not any(isinstance(f, _SkipStubs) for f in sys.meta_path)\n"
        "with gr.Blocks() as demo:\n"
        "    t = gr.Textbox(label='x'); b = gr.Button('go'); b.click(lambda v: v, t, t)\n"
        "assert demo.get_config_file()['components']\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={"PYTHONPATH": str(ROOT),
                                                      "PATH": "/usr/bin:/bin",
                                                      "GRADIO_ANALYTICS_ENABLED": "False"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
