"""Do two-process (torchrun, gloo) training runs exit, with the CPU under load?

    python bench/ddp_exit.py [--runs 20] [--timeout 90] [--no-load]

Builds a small generated corpus, starts a background process that keeps one core busy with matmuls
(the contention under which gloo's teardown deadlock showed up; see ``pathsegmentor.training.collectives``),
then runs ``torchrun --nproc_per_node 2 -m pathsegmentor.training`` (the test recipe, 20 steps) ``--runs``
times. A run that has not exited after ``--timeout`` seconds is counted as hung and killed. Prints one
line per run and a last line of figures. A reliability check, not a speed figure.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from train import REPO, _port

LOAD = "import torch\na = torch.randn(2000, 2000)\nwhile True:\n    a @ a\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=90.0, help="seconds after which a run counts as hung")
    ap.add_argument("--no-load", action="store_true", help="no background load")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from data_builders import build
    from data_builders.synthetic import write_folder_dataset

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    load = None if args.no_load else subprocess.Popen([sys.executable, "-c", LOAD], env=env)
    exited = hung = failed = 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            corpus = tmp / "corpus"
            build({"folder": write_folder_dataset(tmp / "src", n=8, size=96)}, corpus, val_fraction=0.25, seed=0)
            for i in range(args.runs):
                cmd = ["torchrun", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                       str(_port()), "-m", "pathsegmentor.training", "--config", str(REPO / "configs/train/test.yaml"),
                       f"data.corpus={corpus}", f"output_dir={tmp / f'run{i}'}", "train.steps=20",
                       "train.log_every=10", "train.save_every=20"]
                t = time.perf_counter()
                proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
                try:
                    rc = proc.wait(timeout=args.timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
                    proc.wait()
                    hung += 1
                    print(f"run {i + 1}: HUNG (killed after {args.timeout:.0f} s)", flush=True)
                    continue
                exited += rc == 0
                failed += rc != 0
                print(f"run {i + 1}: exit code {rc} after {time.perf_counter() - t:.1f} s", flush=True)
    finally:
        if load is not None:
            load.kill()
    print(f"FIGURES runs={args.runs} exited_ok={exited} hung={hung} failed={failed} "
          f"load={'none' if args.no_load else 'one busy core'}")


if __name__ == "__main__":
    main()
