"""``pathseg-build``: build a PathSeg corpus, or print the statistics of one.

    pathseg-build --source monuseg=/data/MoNuSegTrainingData --source glas=/data/GlaS --out corpus/
    pathseg-build --config configs/data/shared.yaml --out corpus/ [--num-proc 2]
    pathseg-build stats corpus/
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pathseg-build", description="Build a PathSeg corpus from public pathology "
                                "datasets (see docs/PATHSEG.md). `pathseg-build stats DIR` summarises a corpus.")
    p.add_argument("--source", action="append", default=[], metavar="NAME=PATH",
                   help="a source adapter and its download folder (repeatable); adapters: "
                        "see `--list-sources`")
    p.add_argument("--config", help="dataset recipe YAML (sources + options); CLI options override its options")
    p.add_argument("--out", help="corpus folder (new, empty or a previous corpus)")
    p.add_argument("--tile", type=int, help="tile size in pixels (default 1024)")
    p.add_argument("--overlap", type=int, help="tile overlap in pixels (default 0)")
    p.add_argument("--mpp", type=float, help="resample every image to this many microns per pixel (default: keep)")
    p.add_argument("--num-proc", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--val-fraction", type=float, help="patient groups held out for validation (default 0.2)")
    p.add_argument("--test-fraction", type=float, help="patient groups held out for test (default 0)")
    p.add_argument("--seed", type=int, help="split seed (default 0)")
    p.add_argument("--limit", type=int, help="only the first N items of each source (quick trial builds)")
    p.add_argument("--no-ancestors", action="store_true", help="do not emit ancestor categories")
    p.add_argument("--keep-empty", action="store_true", help="keep tiles without labels or negatives")
    p.add_argument("--force", action="store_true", help="rebuild even if the corpus is up to date")
    p.add_argument("--list-sources", action="store_true", help="print the registered source adapters and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def _stats(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pathseg-build stats", description="Summarise a PathSeg corpus")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    a = p.parse_args(argv)
    from .corpus import load_pathseg

    try:
        corpus = load_pathseg(a.dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = corpus.manifest
    if a.json:
        print(json.dumps(m, indent=2))
        return 0
    print(f"PathSeg corpus {Path(a.dir).resolve()} (format {m['format_version']}, built {m.get('created', '?')})")
    print(f"{'split':<12}{'images':>10}{'triples':>10}")
    for sp in corpus.splits:
        print(f"{sp:<12}{len(corpus.images[sp]):>10}{len(corpus.triples[sp]):>10}")
    print(f"\n{'source':<14}{'adapter':<10}{'items':>7}{'ok':>6}{'rejected':>10}")
    for name, s in m["sources"].items():
        print(f"{name:<14}{s.get('adapter', ''):<10}{s.get('items', 0):>7}{s.get('items_ok', 0):>6}"
              f"{s.get('items_rejected', 0):>10}")
    counts: dict[str, int] = {}
    for sp in corpus.splits:
        for lb in corpus.triples[sp].data.column("label").to_pylist():
            counts[lb] = counts.get(lb, 0) + 1
    print(f"\n{len(counts)} categories with triples (of {len(corpus.ontology)} in the ontology):")
    for lb, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"  {n:>8}  {lb}")
    print(f"\nreport: {Path(a.dir) / 'report' / 'report.md'}; rejected files: {m.get('rejects', 0)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "stats":
        return _stats(argv[1:])
    if argv and argv[0] == "build":
        argv = argv[1:]
    args = _build_parser().parse_args(argv)
    from .base import list_sources
    from .builder import build
    from .recipe import BuildError, load_recipe

    if args.list_sources:
        print("\n".join(list_sources()))
        return 0
    if not args.out:
        print("error: --out DIR is required", file=sys.stderr)
        return 2
    sources: dict = {}
    options: dict = {}
    base = None
    try:
        if args.config:
            sources, options, base = load_recipe(args.config)
        for s in args.source:
            if "=" not in s:
                print(f"error: --source expects NAME=PATH, got '{s}'", file=sys.stderr)
                return 2
            name, path = s.split("=", 1)
            sources[name.strip()] = str(Path(path).expanduser().resolve())
        if not sources:
            print("error: give --source NAME=PATH (repeatable) or --config RECIPE.yaml", file=sys.stderr)
            return 2
        for key, val in (("tile", args.tile), ("overlap", args.overlap), ("mpp", args.mpp),
                         ("val_fraction", args.val_fraction), ("test_fraction", args.test_fraction),
                         ("seed", args.seed), ("limit", args.limit)):
            if val is not None:
                options[key] = val
        if args.no_ancestors:
            options["emit_ancestors"] = False
        if args.keep_empty:
            options["drop_empty"] = False
        build(sources, args.out, num_proc=max(1, args.num_proc), progress=not args.quiet, force=args.force,
              base_dir=base, **options)
    except (BuildError, FileNotFoundError, KeyError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume (finished items are kept)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
