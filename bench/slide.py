"""Benchmark of whole-slide inference: throughput against the single-tile rate of ``segment`` and
peak memory for a 4k² and a 32k² generated slide.

Slides are generated with tifffile (tiled, deflate, 0.5 µm/px so the working grid is level 0, a
pyramid for the thumbnail), mostly glass with the same tissue patch in both, so the predicted tiles
are alike and the 32k² run shows what the slide *size* costs. Each run is a subprocess reporting
``ru_maxrss`` after loading the model (base) and at the end (peak). Reported:

- tiles/s of slide inference (predicted tiles / inference seconds) vs the single-tile rate of
  ``model.segment`` on one window in the same process; overhead = single / slide - 1 (target <= 50%),
- megapixels/s of the whole run (working-grid pixels / wall seconds, tissue skipping included),
- peak RSS, and the 32k/4k peak ratio (target <= 1.2).

    python bench/slide.py                     # pathsegmentor-test, 4k² and 32k²
    python bench/slide.py --sizes 4096 8192   # quicker
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

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {repo!r})
import numpy as np, torch
torch.set_num_threads({threads})
from pathsegmentor._compat import ensure_torchvision
ensure_torchvision()
from pathsegmentor import create_model, segment_slide
torch.manual_seed(0)
model = create_model({model!r}).eval()
prompts = {prompts!r}
size = model.config.preprocess.input_size
rng = np.random.default_rng(0)
tile = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
model.segment(tile, prompts)  # warm-up
n, t = 0, time.perf_counter()
while time.perf_counter() - t < {single_seconds} or n < 5:
    model.segment(tile, prompts); n += 1
single_rate = n / (time.perf_counter() - t)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
res = segment_slide(model, {slide!r}, prompts, out={out!r}, progress=False, geojson=True)
wall = time.perf_counter() - t
s = res.summary
print(json.dumps({{"single_tiles_per_s": single_rate, "wall_s": wall, "infer_s": res.extra["infer_seconds"],
                  "tiles_predicted": s["tiles"]["predicted"], "tiles_total": s["tiles"]["total"],
                  "work_pixels": s["work_shape"][0] * s["work_shape"][1],
                  "objects": sum(p.get("objects", 0) for p in s["prompts"]),
                  "base_rss_kb": base, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


def _make(path: Path, size: int) -> Path:
    """A ``size`` x ``size`` slide at 0.5 µm/px: glass, one 1536² tissue patch with a grid of nuclei."""
    sys.path.insert(0, str(REPO))
    from pathsegmentor.slide.synthetic import SlideSpec, write_slide

    x0 = y0 = size // 2 - 768
    disks = [(x0 + 40.0 + 48 * i, y0 + 40.0 + 48 * j, 9.0) for i in range(31) for j in range(31)]
    levels = 1
    while max(size, size) / 2 ** (levels - 1) > 2048:
        levels += 1
    spec = SlideSpec(size, size, 0.5, levels, tissue=[(x0, y0, x0 + 1536, y0 + 1536)], disks=disks)
    return write_slide(path, spec, tile=512)


def run_child(slide: Path, out: Path, args) -> dict:
    code = CHILD.format(repo=str(REPO), threads=args.threads, model=args.model, prompts=args.prompts,
                        single_seconds=args.single_seconds, slide=str(slide), out=str(out))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"child failed for {slide.name}:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 32768])
    ap.add_argument("--model", default="pathsegmentor-test")
    ap.add_argument("--prompts", nargs="+", default=["tumor nuclei", "stroma"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on shared CPUs)")
    ap.add_argument("--single-seconds", type=float, default=3.0)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        rows = []
        for size in args.sizes:
            slide = _make(tmp / f"slide{size}.tif", size)
            mb = slide.stat().st_size / 1e6
            r = run_child(slide, tmp / f"out{size}", args)
            r.update(size=size, file_mb=mb)
            r["slide_tiles_per_s"] = r["tiles_predicted"] / r["infer_s"]
            r["overhead"] = r["single_tiles_per_s"] / r["slide_tiles_per_s"] - 1.0
            r["mpix_per_s"] = r["work_pixels"] / 1e6 / r["wall_s"]
            rows.append(r)
            slide.unlink()
    hdr = (f"{'slide':>8} {'file MB':>8} {'tiles':>13} {'single t/s':>10} {'slide t/s':>9} {'overhead':>8} "
           f"{'wall s':>7} {'MPix/s':>7} {'objects':>7} {'base MB':>8} {'peak MB':>8}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['size']:>7}² {r['file_mb']:>8.1f} {r['tiles_predicted']:>6}/{r['tiles_total']:<6} "
              f"{r['single_tiles_per_s']:>10.1f} {r['slide_tiles_per_s']:>9.1f} {r['overhead']:>7.0%} "
              f"{r['wall_s']:>7.1f} {r['mpix_per_s']:>7.1f} {r['objects']:>7} {r['base_rss_kb'] / 1024:>8.0f} "
              f"{r['peak_rss_kb'] / 1024:>8.0f}")
    big, small = rows[-1], rows[0]
    ratio = big["peak_rss_kb"] / small["peak_rss_kb"]
    over = ", ".join(f"{r['size']}²={r['overhead']:.0%}" for r in rows)
    thr = ", ".join(f"{r['size']}²={r['mpix_per_s']:.1f} MPix/s" for r in rows)
    print(f"figures: tiling overhead {over} (target <= 50%); peak RSS {small['size']}²="
          f"{small['peak_rss_kb'] / 1024:.0f} MB, {big['size']}²={big['peak_rss_kb'] / 1024:.0f} MB, "
          f"ratio {ratio:.2f}x (target <= 1.2x); throughput {thr}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
