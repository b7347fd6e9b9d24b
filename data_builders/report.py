"""The build report: ``counts.csv``, ``report.md``, ``counts.png`` and ``rejects.csv`` under ``OUT/report/``."""
from __future__ import annotations

import csv
from pathlib import Path

COUNT_COLUMNS = ["source", "category", "split", "tiles", "triples", "negatives", "pixel_fraction"]


def write_report(folder: Path, *, counts: dict, tiles: dict, rejects: list[dict], splits: dict, sources: dict) -> None:
    """``counts``: (source, category, split) -> {triples, pixels, negatives}; ``tiles``: (source, split) ->
    {tiles, pixels}. ``tiles`` in counts.csv is the number of tiles of that source/split, ``triples`` the tiles
    holding the category, ``negatives`` the tiles where it is a true negative, ``pixel_fraction`` its share of
    those tiles' pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for (src, cat, sp), c in sorted(counts.items()):
        t = tiles.get((src, sp), {"tiles": 0, "pixels": 0})
        rows.append({"source": src, "category": cat, "split": sp, "tiles": t["tiles"], "triples": c["triples"],
                     "negatives": c["negatives"],
                     "pixel_fraction": f"{c['pixels'] / t['pixels']:.6f}" if t["pixels"] else "0"})
    with open(folder / "counts.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COUNT_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    with open(folder / "rejects.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "source", "reason"])
        w.writeheader()
        w.writerows({k: r.get(k, "") for k in ("file", "source", "reason")} for r in rejects)
    per_cat: dict[str, dict[str, int]] = {}
    for r in rows:
        if r["triples"]:
            per_cat.setdefault(r["category"], {}).setdefault(r["split"], 0)
            per_cat[r["category"]][r["split"]] += r["triples"]
    _plot(per_cat, folder / "counts.png")
    lines = ["# PathSeg build report", "", "## Splits", "", "| split | images (tiles) | triples |", "|---|---|---|"]
    lines += [f"| {sp} | {c['images']} | {c['triples']} |" for sp, c in splits.items()]
    lines += ["", "## Sources", "", "| source | adapter | items | ok | rejected | grouped patients | seconds |",
              "|---|---|---|---|---|---|---|"]
    for name, s in sources.items():
        lines.append(f"| {name} | {s.get('adapter', '')} | {s.get('items', '')} | {s.get('items_ok', '')} | "
                     f"{s.get('items_rejected', '')} | {s.get('grouped_patients', '')} | {s.get('seconds', '')} |")
    lines += ["", f"## Categories ({len(per_cat)} with triples)", "", "| category | " +
              " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    for cat in sorted(per_cat, key=lambda k: -sum(per_cat[k].values())):
        lines.append(f"| {cat} | " + " | ".join(str(per_cat[cat].get(sp, 0)) for sp in splits) + " |")
    lines += ["", f"## Rejected files ({len(rejects)})", ""]
    lines += [f"- `{r['file']}` ({r['source']}): {r['reason']}" for r in rejects[:200]]
    if len(rejects) > 200:
        lines.append(f"- ... {len(rejects) - 200} more in rejects.csv")
    lines += ["", "Per source/category/split figures: `counts.csv`; bar plot: `counts.png`.", ""]
    (folder / "report.md").write_text("\n".join(lines))


def _plot(per_cat: dict[str, dict[str, int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = sorted(per_cat, key=lambda k: sum(per_cat[k].values()))[-60:]
    splits = sorted({sp for v in per_cat.values() for sp in v})
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.22 * len(cats) + 1)))
    left = [0] * len(cats)
    for sp in splits:
        vals = [per_cat[c].get(sp, 0) for c in cats]
        ax.barh(cats, vals, left=left, label=sp)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_xlabel("triples (tiles holding the category)")
    ax.set_title("PathSeg triples per category")
    if splits:
        ax.legend()
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
