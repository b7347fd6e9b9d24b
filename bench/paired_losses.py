"""Two training legs' logged losses paired by step: did a change move the training fit beyond the batches' noise?

    python bench/paired_losses.py REFERENCE/train_log.csv CANDIDATE/train_log.csv [--column dice --column separation] \
        [--windows 3]

Both files are the ``train_log.csv`` a ``pathsegmentor train`` run writes (one row every ``train.log_every`` steps).
Legs of the same seed and data recipe draw the same crops in the same order, so the losses logged at one step are a
pair; for each column and each of ``--windows`` equal spans of steps it prints the mean change (candidate minus
reference), its standard error over the logged steps, t and how many steps rose. Losses are the training-mode forward
(BatchNorm on batch statistics where a module trains), so they say how the leg fitted its own crops, not how the saved
model scores. Reads the two files only; nothing is asserted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired_rows import describe, summary  # noqa: E402


def paired_steps(reference, candidate, column: str, lo: int = 0, hi: int | None = None):
    """``(step, {column: reference}, {column: candidate})`` for every step in ``(lo, hi]`` both logs hold."""
    a = dict(zip(reference["step"], reference[column]))
    b = dict(zip(candidate["step"], candidate[column]))
    return [(s, {column: float(a[s])}, {column: float(b[s])}) for s in sorted(set(a) & set(b))
            if s > lo and (hi is None or s <= hi)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("reference")
    ap.add_argument("candidate")
    ap.add_argument("--column", action="append", default=[], help="logged loss (default: dice, bce, separation, "
                    "presence)")
    ap.add_argument("--windows", type=int, default=3, help="equal spans of steps reported apart")
    args = ap.parse_args(argv)
    import pandas as pd

    logs = []
    for path in (args.reference, args.candidate):
        if not Path(path).is_file():
            raise SystemExit(f"{path}: no such file. Give the train_log.csv that `pathsegmentor train` writes in its "
                             "output_dir")
        logs.append(pd.read_csv(path))
    columns = args.column or ["dice", "bce", "separation", "presence"]
    for path, df in zip((args.reference, args.candidate), logs):
        missing = {"step", *columns} - set(df.columns)
        if missing:
            raise SystemExit(f"{path} lacks the columns {sorted(missing)}; it has {sorted(df.columns)}")
    if args.windows < 1:
        raise SystemExit(f"--windows {args.windows}: give 1 or more")
    last = int(min(logs[0]["step"].max(), logs[1]["step"].max()))
    edges = [round(last * k / args.windows) for k in range(args.windows + 1)]
    print(f"{args.candidate} minus {args.reference}, steps both logged up to {last}")
    for column in columns:
        for lo, hi in zip(edges[:-1], edges[1:]):
            s = summary(paired_steps(*logs, column, lo, hi), column)
            if s:
                print(f"  {column:<11} steps {lo + 1:>5}-{hi:<5}: {describe(s)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
