"""Benchmark of the PathSeg builder: throughput and peak memory on the shared data and on a 10x larger set.

The 10x set repeats the shared files under new names (new patients) in the same on-disk formats (symlinks,
no pixel copies). Each build runs in its own subprocess, which reports its wall time and peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``); the baseline RSS after imports is printed too, so the
growth attributable to the build is visible. Memory must stay flat (peak 10x / peak 1x <= 1.2).

    python bench/build.py                # full shared data (142 images) and 10x (1420 images): slow on 2 cores
    python bench/build.py --limit 5      # 5 items per source (15 images) and 10x (150 images)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {repo!r})
from data_builders import build, load_pathseg
from data_builders.recipe import load_recipe
base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sources, options, base = load_recipe({recipe!r})
t = time.perf_counter()
build(sources, {out!r}, base_dir=base, progress=False, num_proc={num_proc}, **options)
dt = time.perf_counter() - t
c = load_pathseg({out!r})
print(json.dumps({{"seconds": dt, "images": sum(len(c.images[s]) for s in c.splits),
                  "triples": sum(len(c.triples[s]) for s in c.splits),
                  "base_rss_kb": base_rss, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


def _link(src: Path, dst: Path) -> int:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)
    return src.stat().st_size


def make_set(dest: Path, limit: int | None, copies: int) -> int:
    """The shared layout under ``dest`` with ``copies`` renamed copies of (the first ``limit`` items of) each
    source; returns the input bytes."""
    nbytes = 0
    mon = SHARED / "monuseg" / "MoNuSegTrainingData"
    tifs = sorted((mon / "Tissue_Images").glob("*.tif"))[:limit]
    for k in range(copies):
        for t in tifs:
            stem = t.stem if copies == 1 else f"{t.stem[:8]}{k}{t.stem[9:]}"  # new TCGA patient per copy
            nbytes += _link(t, dest / "monuseg" / "Tissue_Images" / f"{stem}.tif")
            xml = mon / "Annotations" / f"{t.stem}.xml"
            if xml.is_file():
                nbytes += _link(xml, dest / "monuseg" / "Annotations" / f"{stem}.xml")
            nbytes += _link(mon / "Color_masks" / f"{t.stem}.png", dest / "monuseg" / "Color_masks" / f"{stem}.png")
        for src, masks in (("glas", "masks"), ("consep", "type_maps")):
            for p in sorted((SHARED / src / "images").glob("*.png"))[:limit]:
                stem = p.stem if copies == 1 else f"c{k}_{p.stem}"
                nbytes += _link(p, dest / src / "images" / f"{stem}.png")
                nbytes += _link(SHARED / src / masks / p.name, dest / src / masks / f"{stem}.png")
    import yaml

    recipe = yaml.safe_load((REPO / "configs" / "data" / "shared.yaml").read_text())
    recipe["sources"]["monuseg"]["root"] = str(dest / "monuseg")
    recipe["sources"]["glas"]["root"] = str(dest / "glas")
    recipe["sources"]["consep"]["root"] = str(dest / "consep")
    (dest / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return nbytes


def run(dest: Path, num_proc: int) -> dict:
    out = dest / "corpus"
    code = CHILD.format(repo=str(REPO), recipe=str(dest / "recipe.yaml"), out=str(out), num_proc=num_proc)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"build failed:\n{res.stderr[-3000:]}")
    r = json.loads(res.stdout.strip().splitlines()[-1])
    r["out_bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="items per source in the 1x set (default: all)")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--num-proc", type=int, default=1)
    a = ap.parse_args(argv)
    if not SHARED.is_dir():
        print(f"shared data not found at {SHARED}", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="pathseg-bench-") as tmp:
        for label, copies in (("shared 1x", 1), (f"generated {a.scale}x", a.scale)):
            d = Path(tmp) / label.replace(" ", "_")
            nbytes = make_set(d, a.limit, copies)
            r = run(d, a.num_proc)
            r.update(label=label, in_bytes=nbytes)
            rows.append(r)
            print(f"{label}: {r['images']} images in {r['seconds']:.1f} s", file=sys.stderr, flush=True)
    print(f"{'set':<16}{'images':>8}{'triples':>9}{'in MB':>9}{'out MB':>9}{'s':>8}{'img/s':>8}{'MB/s':>8}"
          f"{'base RSS MB':>13}{'peak RSS MB':>13}")
    for r in rows:
        print(f"{r['label']:<16}{r['images']:>8}{r['triples']:>9}{r['in_bytes'] / 1e6:>9.1f}"
              f"{r['out_bytes'] / 1e6:>9.1f}{r['seconds']:>8.1f}{r['images'] / r['seconds']:>8.2f}"
              f"{r['in_bytes'] / 1e6 / r['seconds']:>8.2f}{r['base_rss_kb'] / 1024:>13.0f}{r['peak_rss_kb'] / 1024:>13.0f}")
    ratio = rows[1]["peak_rss_kb"] / rows[0]["peak_rss_kb"]
    speed = (rows[1]["images"] / rows[1]["seconds"]) / (rows[0]["images"] / rows[0]["seconds"])
    print(f"peak memory {a.scale}x/1x = {ratio:.3f} (target <= 1.2); throughput {a.scale}x/1x = {speed:.2f}; "
          f"1x {rows[0]['images'] / rows[0]['seconds']:.2f} img/s {rows[0]['in_bytes'] / 1e6 / rows[0]['seconds']:.2f} "
          f"MB/s peak {rows[0]['peak_rss_kb'] / 1024:.0f} MB; {a.scale}x peak {rows[1]['peak_rss_kb'] / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
