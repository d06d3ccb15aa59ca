"""Pictures of a generation for the README: an edit's λ strips (one row per source, the source
first) or an outside image's variations (the file first), tiles upscaled without smoothing.

Usage: .venv/bin/python scripts/generation_pictures.py PROJECT GENERATION OUT.png [--tile 64]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from engine.project import Generation, Project
from engine.project import Image as ImageRow


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("project")
    ap.add_argument("generation")
    ap.add_argument("out")
    ap.add_argument("--tile", type=int, default=64)
    args = ap.parse_args()
    t = args.tile
    with Project(args.project, create=False, read_only=True) as project:
        gen = project.get(Generation, args.generation)
        samples = project.samples(gen.id).sort_values("idx")
        conditions = gen.config.get("conditions") or {}
        external = {r["id"]: r for r in conditions.get("external") or []}
        rows: list[tuple[Path, list[Path], str]] = []
        for source, group in samples.groupby("source_image_id", sort=False):
            if source in external:
                src, what = project.abs(external[source]["file"]), external[source]["name"]
            else:
                img = project.get(ImageRow, source)
                src, what = project.abs(img.path), f"{img.class_name}"
            rows.append((src, [project.abs(p) for p in group["path"]], what))
        edit = conditions.get("edit")
        if edit:
            heads = ["source", *[f"λ {v:g}" for v in edit["strengths"]]]
        elif conditions.get("mode") == "interpolate":  # the other end closes the row
            heads = ["image A", *[f"t {w:.2f}" for w in conditions["weights"]], "image B"]
            other = project.get(ImageRow, conditions["pair"][1])
            rows[0][1].append(project.abs(other.path))
        else:
            heads = ["source", *[f"seed {i}" for i in range(len(rows[0][1]))]]
    width = max(len(r[1]) for r in rows) + 1
    sheet = Image.new("RGB", (width * (t + 4) + 4, len(rows) * (t + 4) + 22), "white")
    draw = ImageDraw.Draw(sheet)
    try:  # a font with λ (Debian's fonts-dejavu); PIL's own bitmap font lacks it
        font = ImageFont.truetype("DejaVuSans.ttf", 12)
    except OSError:
        font = ImageFont.load_default()
        heads = [h.replace("λ", "lambda") for h in heads]
    for col, head in enumerate(heads[:width]):
        draw.text((4 + col * (t + 4), 3), head, fill="black", font=font)
    for r, (src, files, _) in enumerate(rows):
        for col, path in enumerate([src, *files]):
            with Image.open(path) as im:
                tile = im.convert("RGB").resize((t, t), Image.NEAREST)
            sheet.paste(tile, (4 + col * (t + 4), 20 + r * (t + 4)))
    sheet.save(args.out)
    print(f"{args.out}: {len(rows)} row(s) x {width} tiles")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
