"""Gradio starts without rewriting its type stubs.

Every Gradio component class, as it is defined at ``import gradio``, goes through
``gradio.component_meta.create_or_modify_pyi``, which reads the component's source file,
parses it with ``ast`` and compares (or writes) the ``.pyi`` stub beside it: a developer aid
of Gradio's own repository. On the 2-core machine it was 5-6 s of the 9-10 s that
``import gradio`` took (measured side by side, loaded machine), and so about a quarter of the
studio's cold start. The stubs shipped in the wheel are already there; nothing at run time
reads them.

``skip_stub_generation`` installs an import hook that, when ``gradio.component_meta`` is
loaded, replaces that function by a no-op for this process. It does nothing once Gradio is
imported, and if a later Gradio renames the function the hook only adds an unused name.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Any

TARGET = "gradio.component_meta"


class _SkipStubs(importlib.abc.MetaPathFinder):
    """Finds ``gradio.component_meta`` through the other finders and wraps its loader."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != TARGET:
            return None
        sys.meta_path.remove(self)  # once: the real finders locate the module
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            module.create_or_modify_pyi = _no_stub

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _no_stub(*args: Any, **kwargs: Any) -> None:
    return None


def skip_stub_generation() -> None:
    """Install the hook (idempotent; nothing to do once Gradio is imported)."""
    if TARGET in sys.modules or any(isinstance(f, _SkipStubs) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _SkipStubs())
