"""The Curate tab's interactive 2-D map: up to 200,000 points drawn with WebGL in a ``gr.HTML``.

The points travel as binary: the layout's ``points.bin`` (``engine.stages.map_stage``) is
fetched once per layout from the project's assets (a file the studio already serves), and each
redraw sends only one colour key per point (a byte, base64) with its palette and legend, so a
band change recolours 200,000 points with about 270 kB. Pan (drag), zoom (wheel), lasso and
box selection, hover and click run in the browser; what they pick comes back as gr.HTML events
with a small payload (a bit per point for a selection, a row for a click or a hover), and the
handlers stay light: rows -> sample indices -> a gallery. Without WebGL the same points are
drawn on a 2-D canvas (slower, same interactions).
"""

from __future__ import annotations

import base64
import colorsys
from pathlib import Path
from typing import Any

import numpy as np

COLOUR_BY = [("class", "class"), ("kept / dropped (band + hand)", "kept"),
             ("distance to the class centroid", "centroid_distance"),
             ("within-class quantile", "class_quantile"),
             ("fidelity (source ↔ sample)", "fidelity"),
             ("distance to the nearest real image", "nearest_real"),
             ("uniqueness (nearest other sample)", "uniqueness"),
             ("classifier confidence in the label", "confidence")]
MISSING = 255  # the colour key of a point without a value (a real image in a score colouring)
RAMP_STEPS = 250
# categorical colours (a colour-blind-aware qualitative set, written out here)
CATEGORICAL = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
               "#ff9da7", "#9c755f", "#bab0ac", "#1f77b4", "#d62728", "#2ca02c", "#9467bd",
               "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79", "#637939"]
STATE_COLOURS = [("real image", "#9aa3b5"), ("kept by the band", "#2e9d5b"),
                 ("dropped by the band", "#e4572e"), ("kept by hand", "#0b5fff"),
                 ("dropped by hand", "#7a1f5c")]
RAMP_ANCHORS = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"]  # dark -> light


def _hex(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{int(round(255 * max(0.0, min(1.0, c)))):02x}" for c in rgb)


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.float64) / 255


def class_palette(n_classes: int) -> list[str]:
    """One colour per class: the categorical set up to 20 classes, else evenly spread hues
    (golden-ratio steps, so neighbouring labels differ)."""
    if n_classes <= len(CATEGORICAL):
        return CATEGORICAL[:max(n_classes, 1)]
    return [_hex(colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65 + 0.3 * (i % 2), 0.85))
            for i in range(min(n_classes, 250))]


def ramp(steps: int = RAMP_STEPS) -> list[str]:
    """A perceptually ordered ramp from dark to light (``RAMP_ANCHORS`` interpolated)."""
    anchors = np.stack([_rgb(c) for c in RAMP_ANCHORS])
    t = np.linspace(0, len(anchors) - 1, steps)
    lo = np.minimum(t.astype(int), len(anchors) - 2)
    f = (t - lo)[:, None]
    return [_hex(tuple(c)) for c in anchors[lo] * (1 - f) + anchors[lo + 1] * f]


def colour_keys(mode: str, kind: np.ndarray, label: np.ndarray, index: np.ndarray,
                class_names: list[str], *, state: np.ndarray | None = None,
                values: np.ndarray | None = None) -> dict[str, Any]:
    """The per-point colour keys, palette and legend of one colouring.

    Args:
        mode: "class", "kept" (``state``: (N_syn,) int8 0 dropped by the band, 1 kept by the
            band, 2 kept by hand, 3 dropped by hand) or a score (``values``: (N_syn,) float,
            NaN = none).
        kind, label, index: the layout's columns (P,).

    Returns:
        {"keys": (P,) uint8, "palette": [hex, ...] (256), "legend": [[hex, text], ...]}.
    """
    n = len(kind)
    syn = kind == 1
    keys = np.full(n, MISSING, dtype=np.uint8)
    palette = ["#9aa3b5"] * 256
    if mode == "class":
        colours = class_palette(len(class_names))
        keys = (np.asarray(label) % len(colours)).astype(np.uint8)
        palette[:len(colours)] = colours
        shown = class_names[:12]
        legend = [[colours[i % len(colours)], str(c)] for i, c in enumerate(shown)]
        if len(class_names) > len(shown):
            legend.append(["#ffffff", f"… {len(class_names) - len(shown)} more classes"])
        return {"keys": keys, "palette": palette, "legend": legend}
    if mode == "kept":
        keys[~syn] = 0
        st = np.asarray(state)[index[syn]]
        keys[syn] = np.select([st == 1, st == 0, st == 2, st == 3], [1, 2, 3, 4], 2)
        for i, (_, c) in enumerate(STATE_COLOURS):
            palette[i] = c
        return {"keys": keys, "palette": palette,
                "legend": [[c, t] for t, c in STATE_COLOURS]}
    v = np.asarray(values, dtype=np.float64)[index[syn]]
    ok = np.isfinite(v)
    colours = ramp()
    palette[:len(colours)] = colours
    if ok.any():
        lo, hi = float(v[ok].min()), float(v[ok].max())
        step = (v[ok] - lo) / max(hi - lo, 1e-12) * (len(colours) - 1)
        sub = np.full(len(v), MISSING, dtype=np.uint8)
        sub[ok] = np.round(step).astype(np.uint8)
        keys[syn] = sub
        legend = [[colours[0], f"{lo:.4g} (low)"], [colours[-1], f"{hi:.4g} (high)"],
                  ["#9aa3b5", "real image / no value"]]
    else:
        legend = [["#9aa3b5", "no value for these samples"]]
    return {"keys": keys, "palette": palette, "legend": legend}


def payload(url: str, layout_id: str, count: int, colours: dict[str, Any],
            class_names: list[str], title: str, token: str, select: str) -> dict[str, Any]:
    """The map component's value: where the points are, their colours, the legend, and where
    (``select``) and with which ``token`` the page asks for a selection's gallery."""
    return {"url": url, "map": layout_id, "n": int(count), "title": title,
            "token": token, "select": select,
            "colour": base64.b64encode(np.ascontiguousarray(colours["keys"]).tobytes()).decode(),
            "palette": colours["palette"], "legend": colours["legend"],
            "classes": [str(c) for c in class_names[:5000]]}


CSS = """
.wm-root { position: relative; font-size: 13px; }
.wm-bar { display: flex; gap: 6px; align-items: center; flex-wrap: wrap; margin-bottom: 6px; }
.wm-bar button { border: 1px solid #c7cbe0; background: #fff; border-radius: 6px;
  padding: 3px 10px; cursor: pointer; }
.wm-bar button.on { background: #4f46e5; color: #fff; border-color: #4f46e5; }
.wm-info { color: #555; margin-left: 8px; }
.wm-stage { position: relative; user-select: none; touch-action: none; width: 100%;
  height: 560px; border: 1px solid #e3e5ef;
  border-radius: 8px; background: #fcfcfe; overflow: hidden; }
.wm-stage canvas { position: absolute; left: 0; top: 0; width: 100%; height: 100%; }
.wm-tip { position: absolute; pointer-events: none; background: rgba(20,20,40,.85);
  color: #fff; padding: 2px 6px; border-radius: 4px; font-size: 12px; display: none; }
.wm-legend { display: flex; flex-wrap: wrap; gap: 4px 14px; margin-top: 6px; }
.wm-legend span.sw { display: inline-block; width: 10px; height: 10px; border-radius: 50%;
  margin-right: 4px; vertical-align: middle; border: 1px solid #8883; }
.wm-empty { color: #666; padding: 30px; text-align: center; }
.wm-sel { margin-top: 10px; }
.wm-sel-status { color: #333; margin-bottom: 6px; }
.wm-sel-status.wm-error { color: #b42318; }
.wm-sel-gallery { display: flex; flex-wrap: wrap; gap: 6px; max-height: 230px; overflow-y: auto; }
.wm-sel-gallery .thumbnail-item { display: flex; flex-direction: column; align-items: center;
  width: 84px; padding: 3px; border: 1px solid #e3e5ef; border-radius: 6px; background: #fff;
  cursor: pointer; font-size: 11px; color: #555; }
.wm-sel-gallery .thumbnail-item.on { border-color: #4f46e5; box-shadow: 0 0 0 2px #4f46e533; }
.wm-sel-gallery img { width: 76px; height: 76px; object-fit: contain; image-rendering: pixelated;
  background: #f4f5fa; }
.wm-sel-gallery span { max-width: 78px; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; }
"""

TEMPLATE = "<div class='wm-host'></div>"

# The browser side (gr.HTML's js_on_load: ``element``, ``props``, ``trigger``, ``watch``).
JS = (Path(__file__).resolve().parent.parent / "assets" / "webgl_map.js").read_text(encoding="utf-8")
