"""Training speed of a recipe on this machine: crops per second (data + forward + backward + optimiser) and
the share of each stage, against a reference recipe measured in the same process.

    python bench/train_speed.py --data runs/pathseg-shared                       # shipped v4 vs v3 recipe
    python bench/train_speed.py --data runs/pathseg-shared --recipe configs/train/tiny-v3-cpu.yaml --steps 10
    python bench/train_speed.py --data runs/pathseg-shared --recipe configs/train/tiny-v5-cache-cpu.yaml  # cached

Each recipe is built exactly as ``pathsegmentor train`` builds it (its objective's ``setup``), from the shipped
weights where the recipe starts from earlier weights, then runs ``--warmup`` untimed steps and ``--steps`` timed
ones with the same batch size and crop. Stages: ``data`` (dataset items + collate), forward time of the model's
parts (``encoder``, ``text``, ``decoder`` (transformer, prompt tokens), ``dense`` (the pixel decoder or the
hires path and SAM's per-prompt upscaling), ``separation`` (the per-prompt separation head)), ``loss`` (the
objective's loss terms after the forward), ``backward`` and ``optim``. Prints a table and a last line of
figures: crops/s of each recipe and the ratio of the first to the reference. A recipe in embedding-cache mode
(``cache.enabled``) builds its cache during setup (not in the steps' time): its build time is printed with the
crops/s over a whole run of the recipe including it.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGES = ("data", "encoder", "text", "decoder", "dense", "separation", "loss", "backward", "optim")


class _Accel:  # what SegmentationObjective.setup needs of an Accelerator in one process
    is_main_process = True

    def wait_for_everyone(self) -> None:
        pass


def _stage_modules(model) -> dict[str, list]:
    dec = model.mask_decoder
    # the encoder runs through forward_features (no forward hook fires on the encoder itself): time its submodules
    parts = {"encoder": list(model.image_encoder.children()), "text": [model.text_encoder, model.prompt_adapter],
             "decoder": [dec.transformer], "dense": [], "separation": []}
    for name in ("pixel_decoder", "hires_features", "output_upscaling", "hires_fuse"):
        if getattr(dec, name, None) is not None:
            parts["dense"].append(getattr(dec, name))
    if getattr(dec, "separation_head", None) is not None:
        parts["separation"].append(dec.separation_head)
    return parts


def _hook(modules: dict[str, list], times: dict[str, float]) -> list:
    handles = []
    for stage, mods in modules.items():
        for m in mods:
            start: dict[int, float] = {}

            def pre(_m, _a, start=start):
                start[0] = time.perf_counter()

            def post(_m, _a, _o, start=start, stage=stage):
                times[stage] += time.perf_counter() - start.pop(0, time.perf_counter())

            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    return handles


def measure(recipe: str, overrides: list[str], steps: int, warmup: int) -> dict:
    """Crops/s and seconds per stage of ``steps`` training steps of ``recipe`` (after ``warmup`` steps)."""
    import numpy as np
    import torch

    from pathsegmentor.training.data import PositionSampler
    from pathsegmentor.training.recipe import lr_lambda
    from pathsegmentor.training.segmentation import SegmentationObjective, load_train_config

    cfg = load_train_config(recipe, overrides)
    torch.manual_seed(cfg.train.seed)
    objective = SegmentationObjective(cfg)
    t_setup = time.perf_counter()
    setup = objective.setup(_Accel())
    t_setup = time.perf_counter() - t_setup
    model = objective.model
    bs = cfg.train.batch_size
    keys = list(PositionSampler(np.asarray(setup.weights), (steps + warmup) * bs, cfg.train.seed))
    opt = torch.optim.AdamW(setup.param_groups, weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.optim, max(cfg.train.steps, 1)))
    times: dict[str, float] = defaultdict(float)
    handles = _hook(_stage_modules(model), times)
    forward_parts = ("encoder", "text", "decoder", "dense", "separation")
    t_total = 0.0
    for i in range(steps + warmup):
        if i == warmup:
            times.clear()
        t0 = time.perf_counter()
        batch = setup.collate([setup.dataset[k] for k in keys[i * bs:(i + 1) * bs]])
        t1 = time.perf_counter()
        before = sum(times[s] for s in forward_parts)
        losses = objective.loss(model, batch, torch.device("cpu"))
        t2 = time.perf_counter()
        losses["loss"].backward()
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.optim.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if i >= warmup:
            times["data"] += t1 - t0
            times["loss"] += (t2 - t1) - (sum(times[s] for s in forward_parts) - before)
            times["backward"] += t3 - t2
            times["optim"] += t4 - t3
            t_total += t4 - t0
    for h in handles:
        h.remove()
    return {"recipe": recipe, "crops_per_s": steps * bs / t_total, "total_s": t_total, "setup_s": t_setup,
            "cache_build_s": float(getattr(objective, "cache_build_s", 0.0)), "run_crops": cfg.train.steps * bs,
            "stages": {s: times.get(s, 0.0) for s in STAGES}, "batch": bs, "crop": cfg.data.crop,
            "prompts": cfg.data.prompts_per_image}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="a PathSeg corpus (pathseg-build --config configs/data/shared.yaml)")
    ap.add_argument("--recipe", default=str(REPO / "configs/train/tiny-v4-cpu.yaml"))
    ap.add_argument("--reference", default=str(REPO / "configs/train/tiny-v3-cpu.yaml"))
    ap.add_argument("--init", default=str(REPO / "pathsegmentor/weights/pathsegmentor-tiny"),
                    help="weights both recipes start from (the recipes' own init_from need earlier runs)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override for the first recipe only (as `pathsegmentor train`), e.g. data.prompts_per_image=3")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import torch

    torch.set_num_threads(args.threads)
    data = str(Path(args.data).resolve())
    rows = []
    for k, recipe in enumerate((args.recipe, args.reference)):
        init = [f"model.init_from={Path(args.init).resolve()}"] if args.init else []
        rows.append(measure(recipe, [f"data.corpus={data}", *init, *(args.set if k == 0 else [])], args.steps,
                            args.warmup))
    print(f"{'recipe':<28} {'crops/s':>8} {'setup s':>8}  " + " ".join(f"{s:>10}" for s in STAGES))
    for r in rows:
        tot = r["total_s"]
        print(f"{Path(r['recipe']).name:<28} {r['crops_per_s']:8.2f} {r['setup_s']:8.1f}  "
              + " ".join(f"{100 * r['stages'][s] / tot:9.1f}%" for s in STAGES))
    new, ref = rows
    print(f"crop {new['crop']}, batch {new['batch']}, prompts/crop {new['prompts']} vs {ref['prompts']}, "
          f"{args.steps} timed steps, {torch.get_num_threads()} threads"
          + (f"; first recipe with {args.set}" if args.set else ""))
    for r in rows:  # a whole run of the recipe: its steps x batch crops plus a one-off embedding-cache build
        if r["cache_build_s"] > 0:
            eff = r["run_crops"] / (r["run_crops"] / r["crops_per_s"] + r["cache_build_s"])
            print(f"{Path(r['recipe']).name}: embedding cache built in {r['cache_build_s']:.0f} s; over the recipe's "
                  f"{r['run_crops']} crops that is {eff:.2f} crops/s including the build "
                  f"({eff / ref['crops_per_s']:.2f}x the reference)")
    print(f"train_speed: {Path(new['recipe']).name} {new['crops_per_s']:.2f} crops/s, "
          f"{Path(ref['recipe']).name} {ref['crops_per_s']:.2f} crops/s, ratio {new['crops_per_s'] / ref['crops_per_s']:.2f}x")


if __name__ == "__main__":
    main()
