"""``pathsegmentor vocabulary [MODEL]``: what a model can be asked for, grouped by region, structure and
object type, with the sources it was trained on and its validation Dice."""
from __future__ import annotations

import argparse
import json

from .loading import DEFAULT_MODEL, load_model


def cmd_vocabulary(args: argparse.Namespace) -> int:
    model, _ = load_model(args.model or DEFAULT_MODEL)
    rows = model.vocabulary()
    if args.json:
        print(json.dumps({"model": model.name, "concepts": rows}, indent=2))
        return 0
    recorded = bool(rows) and rows[0]["recorded"]
    print(f"{model.name}: {len(rows)} concept(s) answered"
          + ("" if recorded else " (no training record: every ontology concept is answered)"))
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["region"], r["structure"], r["object_type"]), []).append(r)
    for (region, structure, object_type), members in sorted(groups.items()):
        print(f"\n[{region} / {structure} / {object_type}]")
        for r in members:
            dice = ", ".join(f"{s} {d:.3f}" for s, d in r["validation_dice"].items()) or "not measured"
            syn = f"  (also: {', '.join(r['synonyms'][:4])})" if r["synonyms"] else ""
            print(f"  {r['concept']:<34} validation Dice: {dice}{syn}")
    print("\nOther phrases are resolved to these (synonyms, spelling, plurals, nearest in the text tower's space) "
          "or refused with suggestions; see README 'What you can ask for'.")
    return 0
