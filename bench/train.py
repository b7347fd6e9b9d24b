"""Training throughput on this machine: full vs embedding-cache mode, 1 vs 2 processes, peak memory.

    python bench/train.py [--steps 20] [--model pathsegmentor-tiny] [--crop 256]

Builds a small generated corpus (data_builders.synthetic), then runs ``python -m pathsegmentor.training`` as
subprocesses: full mode (1 process), embedding-cache mode (1 process; cache build reported apart),
full mode with 2 processes (torchrun, gloo). Samples/s exclude start-up; ratios are against full mode
with 1 process measured in the same run. Prints a table and a last line of figures.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(out: Path, corpus: Path, args, extra: list[str], procs: int = 1) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable] if procs == 1 else ["torchrun", "--nproc_per_node", str(procs), "--master_addr",
                                                 "127.0.0.1", "--master_port", str(_port())]
    cmd += ["-m", "pathsegmentor.training", "--config", str(REPO / "configs/train/test.yaml"), f"output_dir={out}",
            f"data.corpus={corpus}", f"model.name={args.model}", f"train.steps={args.steps}",
            f"train.batch_size={args.batch}", f"data.crop={args.crop}", "train.save_every=100000",
            f"train.log_every={args.steps}", "data.prompts_per_image=4"] + extra
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"run failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return json.loads((out / "train_summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="pathsegmentor-tiny")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crop", type=int, default=256)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from data_builders import build
    from data_builders.synthetic import write_folder_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = write_folder_dataset(tmp / "src", n=16, size=512)
        corpus = tmp / "corpus"
        build({"folder": source}, corpus, val_fraction=0.25, seed=0)
        full = run(tmp / "full", corpus, args, [])
        cache = run(tmp / "cache", corpus, args, ["cache.enabled=true", "cache.views=2", "freeze.image_encoder=true"])
        ddp = run(tmp / "ddp", corpus, args, [], procs=2)
    base = full["samples_per_s"]
    rows = [("full, 1 process", full), ("embedding cache, 1 process", cache), ("full, 2 processes (gloo)", ddp)]
    print(f"model {args.model}, crop {args.crop}, batch {args.batch}/process, {args.steps} steps, 2 CPU cores")
    print(f"{'mode':32s} {'samples/s':>10s} {'ratio':>7s} {'peak RSS MB/rank':>18s}")
    for name, r in rows:
        print(f"{name:32s} {r['samples_per_s']:10.2f} {r['samples_per_s'] / base:7.2f} "
              f"{max(r['peak_rss_mb_per_rank']):18.0f}")
    print(f"embedding cache build: {cache['cache_build_s']:.1f} s for the training images x 2 views")
    print(f"FIGURES cache_speedup={cache['samples_per_s'] / base:.2f} two_process_ratio={ddp['samples_per_s'] / base:.2f} "
          f"peak_rss_mb_full={max(full['peak_rss_mb_per_rank']):.0f}")


if __name__ == "__main__":
    main()
