"""The training log on disk: one CSV row per logged step (``<name>_log.csv``) and the loss curve drawn
from it (``loss_curve.png``)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence


def write_loss_plot(csv_path: Path, png_path: Path, keys: Sequence[str]) -> None:
    """Plot the columns ``keys`` of the log ``csv_path`` against ``step`` (log scale) into ``png_path``;
    nothing is written for an empty log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(csv_path.open()))
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        if key in rows[0] and rows[0][key] != "":
            ax.plot(steps, [float(r[key]) for r in rows], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title(png_path.parent.name)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` to the CSV ``path``, writing the header (``row``'s keys) when the file is new."""
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
