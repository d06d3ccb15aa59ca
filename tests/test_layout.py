"""The code's layout rules that no linter checks for us (ruff and import-linter check the rest:
see pyproject.toml): every module name is unique, and our own modules are imported under their
own names, never under an alias."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "studio")
# conventional aliases of third-party modules
ALLOWED_ALIASES = {("numpy", "np"), ("pandas", "pd"), ("sqlalchemy", "sa"),
                   ("torch.nn.functional", "F"), ("torch.distributed", "dist"),
                   ("PIL.Image", "PILImage"), ("gradio", "gr"), ("plotly.graph_objects", "go"),
                   ("plotly.express", "px")}


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
                  if "__pycache__" not in p.parts)


def test_no_two_modules_share_a_name():
    seen: dict[str, list[str]] = defaultdict(list)
    for path in _modules():
        if path.name not in ("__init__.py", "__main__.py"):
            seen[path.stem].append(str(path.relative_to(ROOT)))
    assert len(seen) > 40, "found too few modules: is the layout test looking in the right place?"
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, f"modules sharing a name: {clashes}"


def test_project_modules_are_imported_without_aliases():
    aliased = []
    for path in [*_modules(), *sorted((ROOT / "tests").rglob("*.py"))]:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [(f"{node.module}.{a.name}", a.name, a.asname) for a in node.names]
            elif isinstance(node, ast.Import):
                names = [(a.name, a.name, a.asname) for a in node.names]
            else:
                continue
            for full, name, alias in names:
                if not alias or alias == name:
                    continue
                if full.split(".")[0] in PACKAGES:
                    aliased.append(f"{path.relative_to(ROOT)}:{node.lineno} {full} as {alias}")
                elif (full, alias) not in ALLOWED_ALIASES and \
                        (getattr(node, "module", None), alias) not in ALLOWED_ALIASES:
                    aliased.append(f"{path.relative_to(ROOT)}:{node.lineno} {full} as {alias}")
    assert not aliased, "imports under another name:\n" + "\n".join(aliased)


def test_the_engine_never_imports_the_studio_or_gradio():
    """import-linter says the same in CI; this keeps it true for a plain ``pytest`` run too."""
    bad = []
    for path in (ROOT / "engine").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.relative_to(ROOT)}:{node.lineno} {m}" for m in mods
                    if m.split(".")[0] in ("studio", "gradio", "plotly")]
    assert not bad, "the engine imports the app layer:\n" + "\n".join(bad)
