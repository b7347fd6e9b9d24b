"""A candidate against the shipped model by a shipping rule written down before training: per-image paired lines.

    python bench/shipping_rule.py configs/rules/paired-v10.yaml --reference REF_DIR --candidate CAND_DIR

``REF_DIR`` and ``CAND_DIR`` each hold the ``rows.csv`` of ``pathsegmentor evaluate`` on the validation split and,
for presence lines, ``prompt_targets.json`` (``bench/prompt_targets.py``'s output), as the model's
``evaluation/`` folders do. The rule is a YAML list of lines (``lines:``), each one of:

* ``{source, prompt, metric: dice|aji, kind: gain}``: the candidate's mean per-image change must be above 0 *and*
  above ``min_t`` standard errors (default 0: a plain rise; 2: a rise another seed would not give);
* ``{source, prompt, metric: dice|aji, kind: non_inferior, max_loss_se: 2}``: the mean change must not fall below
  ``-max_loss_se`` standard errors, nor below ``-max_loss`` when given (an absolute floor as well);
* ``{metric: presence_mcc, kind: at_least, value: 0.88}``: the candidate's presence MCC must reach the value.

A mean of six tiles moves by a few hundredths between seeds, and a rule that asks a candidate to beat the shipped
model's own figure line by line also asks it to beat that figure's luck; lines on paired per-image changes and their
standard error ask instead whether the change is larger than the tiles' noise. Prints every line with its figure and
verdict, then whether the rule holds; exit status 0 either way (2 for a malformed rule or missing file).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired_rows import describe, paired, summary  # noqa: E402

KINDS = ("gain", "non_inferior", "at_least")
METRICS = ("dice", "aji", "presence_mcc")


def check_line(line: dict, k: int) -> None:
    """ValueError naming line ``k`` and the fix when it is not a rule line this script reads."""
    kind, metric = line.get("kind"), line.get("metric")
    if kind not in KINDS or metric not in METRICS:
        raise ValueError(f"line {k} {line}: kind must be one of {list(KINDS)} and metric one of {list(METRICS)}")
    if (metric == "presence_mcc") != (kind == "at_least"):
        raise ValueError(f"line {k} {line}: 'at_least' goes with metric 'presence_mcc' (and only it), 'gain' and "
                         "'non_inferior' with 'dice' or 'aji'")
    if kind == "at_least" and not isinstance(line.get("value"), (int, float)):
        raise ValueError(f"line {k} {line}: an 'at_least' line needs a number 'value', e.g. value: 0.88")
    if kind != "at_least" and not (line.get("source") and line.get("prompt")):
        raise ValueError(f"line {k} {line}: a paired line needs 'source' and 'prompt', e.g. source: monuseg, "
                         "prompt: nuclei")


def judge(line: dict, reference, candidate, presence: dict | None = None) -> tuple[bool, str]:
    """(holds, one sentence with the figure) for one rule line; ``reference`` / ``candidate``: rows.csv frames;
    ``presence``: the candidate's ``prompt_targets.json`` presence block (for ``at_least``)."""
    kind, metric = line["kind"], line["metric"]
    if kind == "at_least":
        mcc = float((presence or {}).get("mcc", float("nan")))
        return mcc >= line["value"], f"presence MCC {mcc:.4f} (needs >= {line['value']})"
    s = summary(paired(reference, candidate, line["source"], line["prompt"]), metric)
    where = f"{line['source']} {line['prompt']!r} {metric}"
    if s is None:
        return False, f"{where}: no image both evaluations answered"
    figure = f"{where}: {describe(s)} images"
    if kind == "gain":
        min_t = float(line.get("min_t", 0.0))
        return s["mean"] > 0 and s["t"] >= min_t, f"{figure} (needs > 0 and t >= {min_t:g})"
    floor = -float(line.get("max_loss_se", 2.0)) * s["se"]
    if "max_loss" in line:
        floor = max(floor, -float(line["max_loss"]))
    return s["mean"] >= floor, f"{figure} (needs >= {floor:+.4f})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rule", help="the rule's YAML file (lines: [...])")
    ap.add_argument("--reference", required=True, help="folder with the shipped model's rows.csv")
    ap.add_argument("--candidate", required=True, help="folder with the candidate's rows.csv (and prompt_targets.json)")
    args = ap.parse_args(argv)
    import pandas as pd
    import yaml

    try:
        lines = (yaml.safe_load(Path(args.rule).read_text()) or {}).get("lines")
        if not isinstance(lines, list) or not lines:
            raise ValueError("it has no 'lines:' list")
        for k, line in enumerate(lines):
            check_line(line, k)
    except (OSError, ValueError, AttributeError, yaml.YAMLError) as e:
        print(f"{args.rule}: not a shipping rule this script reads ({e}). See configs/rules/paired-v10.yaml",
              file=sys.stderr)
        return 2
    frames = []
    for folder in (args.reference, args.candidate):
        path = Path(folder) / "rows.csv"
        if not path.is_file():
            print(f"{path}: no such file. Give the --out folder of `pathsegmentor evaluate --split validation`",
                  file=sys.stderr)
            return 2
        frames.append(pd.read_csv(path))
    presence = None
    if any(line["kind"] == "at_least" for line in lines):
        path = Path(args.candidate) / "prompt_targets.json"
        if not path.is_file():
            print(f"{path}: no such file. Save `python bench/prompt_targets.py --model M --limit 40` there",
                  file=sys.stderr)
            return 2
        presence = json.loads(path.read_text()).get("presence")
    verdicts = []
    print(f"rule {args.rule}: {args.candidate} against {args.reference}")
    for line in lines:
        holds, text = judge(line, *frames, presence)
        verdicts.append(holds)
        print(f"  {'holds' if holds else 'FAILS'}: {text}")
    print("RULE HOLDS" if all(verdicts) else f"RULE FAILS on {verdicts.count(False)} of {len(verdicts)} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
