"""A plain text-free U-Net trained on the same split, crops and time as the model, scored beside it.

    python bench/baseline_unet.py --data runs/pathseg-shared --minutes 30 [--model pathsegmentor-tiny] [--out DIR]

The baseline is the one the issue measured: a 2-million-parameter U-Net (four levels, 32-256 channels) trained
from scratch with three classes per task (background, object interior, a 3-px object border: the thick-border
targets of :func:`pathsegmentor.inference.separation.separation_targets`), one head for nuclei and one for
glands. Its crops are the model's own training crops (``PromptedCrops.view`` of the same recipe: same split,
working µm/px per structure, scale jitter, flips, stain jitter, source balance), 8 per step, for ``--minutes``
of training (or ``--steps``). Cross-entropy + soft Dice on the object class; Adam, cosine decay.

Scored on the validation split, per source, with the metrics of ``bench/instances.py`` (pooled Dice, per-image
mean ± sd, AJI, PQ, DQ = object F1 at IoU 0.5): images at the working µm/px, flips averaged, instances by the
same ``border`` decoder the model uses (markers off the predicted border, grown back over it). With ``--model``
the model's ``segment()`` runs on the same images beside it. Every ``--curve-every`` steps the baseline is scored
on MoNuSeg and GlaS validation (learning curve: Dice and AJI against crops seen; ``--out``/baseline_curve.json,
written as it grows).
Nothing is asserted; the last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from objects import TASKS, model_counts, print_table, score_rows, validation_items  # noqa: E402

HEADS = ("nuclei", "gland")  # output channels 3*k .. 3*k+2: background, interior, border


def build_unet(widths=(32, 64, 128, 256), classes: int = 3 * len(HEADS)):
    import torch
    from torch import nn

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                             nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = nn.ModuleList([block(3 if i == 0 else widths[i - 1], w) for i, w in enumerate(widths)])
            self.up = nn.ModuleList([block(widths[i + 1] + widths[i], widths[i]) for i in range(len(widths) - 1)])
            self.head = nn.Conv2d(widths[0], classes, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            skips = []
            for i, b in enumerate(self.down):
                x = b(x if i == 0 else nn.functional.max_pool2d(x, 2))
                skips.append(x)
            for i in reversed(range(len(self.up))):
                x = nn.functional.interpolate(x, size=skips[i].shape[-2:], mode="bilinear", align_corners=False)
                x = self.up[i](torch.cat([x, skips[i]], 1))
            return self.head(x)

    return UNet()


def three_class(mask: np.ndarray, inst: np.ndarray | None) -> np.ndarray:
    """``uint8 [H, W]``: 0 background, 1 interior, 2 thick border (from instances, else connected components)."""
    from scipy import ndimage as ndi

    from pathsegmentor.inference.separation import separation_targets

    if inst is None or not np.asarray(inst).any():
        inst = ndi.label(mask > 0)[0]
    border = separation_targets(np.asarray(inst, np.int32), channels=4)[3] > 0
    out = (mask > 0).astype(np.uint8)
    out[border & (mask > 0)] = 2
    return out


class Crops:
    """The model recipe's augmented crops (``PromptedCrops.view``) as U-Net batches: pixels, class map, head."""

    def __init__(self, corpus, recipe: str, seed: int, sources: tuple[str, ...] = ()) -> None:
        from pathsegmentor.modeling.registry import get_model_config
        from pathsegmentor.training.data import PromptedCrops, sampling_weights
        from pathsegmentor.training.segmentation import load_train_config

        cfg = load_train_config(recipe, [])
        pp = get_model_config(cfg.model.name).preprocess
        self.ds = PromptedCrops(corpus, "train", cfg.data, model_mpp=pp.mpp, seed=seed,
                                structure_mpp=pp.structure_mpp, separation_channels=4)
        self.ds.cfg.separation = True  # instance maps in the views
        src = np.asarray(corpus.images["train"]["source"])
        w = sampling_weights(corpus, "train", "source", sorted(set(src) & set(TASKS)))
        if sources:  # a specialist: only these sources' crops (the issue's U-Net: MoNuSeg's training tiles alone)
            w = np.where(np.isin(src, list(sources)), w, 0.0)
            w = w / w.sum()
        self.weights = w
        self.crop = cfg.data.crop
        self.rng = np.random.default_rng([seed, 11])
        self.position = 0

    def batch(self, n: int):
        import torch

        imgs, targets, heads = [], [], []
        while len(imgs) < n:
            idx = int(self.rng.choice(len(self.weights), p=self.weights))
            v = self.ds.view(self.position, idx)
            self.position += 1
            head = next((h for h in HEADS if h in v["targets"]), None)
            if head is None:  # e.g. an EBHI-Seg adenocarcinoma crop: 'tumor' only, no text-free equivalent
                continue
            imgs.append(v["image"])
            targets.append(three_class(v["targets"][head], (v.get("instances") or {}).get(head)))
            heads.append(HEADS.index(head))
        x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float()
        return x, torch.from_numpy(np.stack(targets)).long(), torch.tensor(heads)


def normalise(x):
    import torch

    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    return (x - mean) / std


def loss_fn(logits, target, heads):
    import torch
    import torch.nn.functional as F

    sel = torch.stack([logits[i, 3 * h:3 * h + 3] for i, h in enumerate(heads.tolist())])
    ce = F.cross_entropy(sel, target)
    fg = sel.softmax(1)[:, 1:].sum(1)
    t = (target > 0).float()
    dice = 1 - (2 * (fg * t).sum() + 1) / (fg.sum() + t.sum() + 1)
    return ce + dice


def predict(net, rgb: np.ndarray, head: int, tta: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``uint8 [H, W, 3]`` at the working µm/px -> (object probability, border probability) ``float32 [H, W]``."""
    import torch
    import torch.nn.functional as F

    h, w = rgb.shape[:2]
    m = max(16, 2 ** (len(net.down) - 1))  # every pooling level divides the padded size
    ph, pw = math.ceil(h / m) * m, math.ceil(w / m) * m
    x = normalise(torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1)[None].float())
    x = F.pad(x, (0, pw - w, 0, ph - h), mode="reflect" if min(h, w) > 16 else "constant")
    flips = [(), (-1,), (-2,)] if tta else [()]
    acc = 0
    with torch.no_grad():
        for f in flips:
            y = net(torch.flip(x, f) if f else x)[:, 3 * head:3 * head + 3].softmax(1)
            acc = acc + (torch.flip(y, f) if f else y)
    p = (acc / len(flips))[0, :, :h, :w].numpy()
    return (p[1] + p[2]).astype(np.float32), p[2].astype(np.float32)


def _resize(a: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    from PIL import Image

    if a.shape[:2] == size:
        return a
    mode = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    if a.dtype == np.float32:
        return np.asarray(Image.fromarray(a, mode="F").resize(size[::-1], mode))
    return np.asarray(Image.fromarray(a).resize(size[::-1], mode))


def decode(prob: np.ndarray, border: np.ndarray, decoder: str = "argmax") -> np.ndarray:
    """The U-Net's instances ``int32 [H, W]`` from its object and border probabilities ``float32 [H, W]``.

    ``argmax`` (the usual three-class reading): markers are the connected pixels whose most likely class is the
    interior, grown by a watershed on the interior probability over the object mask (``prob > 0.5``). ``border``: the
    model's own thick-border decoder (markers where the border probability is under 0.5); on a softmax border it
    splits objects into many fragments (the U-Net's first runs, whose learning curve used it)."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    from pathsegmentor.inference.instances import drop_small
    from pathsegmentor.inference.separation import instances_from_border

    mask = prob > 0.5
    if decoder == "border":
        return instances_from_border(mask, border)
    if decoder != "argmax":
        raise ValueError(f"unknown U-Net decoder {decoder!r}; choose 'argmax' or 'border'")
    interior = prob - border
    markers = ndi.label(mask & (interior > border) & (interior > 1.0 - prob))[0]
    labels = watershed(-interior, markers, mask=mask).astype(np.int32)
    return drop_small(labels, 4)


def sample_instances(net, sample: dict, label: str, working_mpp: dict, decoder: str = "argmax",
                     tta: bool = True) -> np.ndarray:
    """The U-Net's objects ``int32 [H, W]`` on a corpus ``sample``, read at the ``label``'s working µm/px and
    returned at the sample's own size."""
    from pathsegmentor.inference.separation import resize_labels

    H, W = sample["image"].shape[:2]
    scale = float(sample["mpp"]) / working_mpp[label]
    size = (max(16, round(H * scale)), max(16, round(W * scale)))
    prob, border = predict(net, _resize(sample["image"], size), HEADS.index(label), tta=tta)
    return resize_labels(decode(prob, border, decoder), (H, W))


def evaluate(net, corpus, working_mpp, sources=(), tta=True, model=None, limit=0, decoder="argmax"):
    """Per (source, method) rows on the validation split (``limit`` images per source, 0: all); ``model`` adds its
    ``segment()`` beside the U-Net on the same images; ``decoder``: :func:`decode`'s."""
    from pathsegmentor.evaluation.metrics import confusion

    net.eval()
    counts: dict[tuple[str, str], list] = defaultdict(list)
    items = list(validation_items(corpus, sources, limit))
    for src, label, s, gt, gt_inst in items:
        inst = sample_instances(net, s, label, working_mpp, decoder, tta)
        counts[(src, "unet")].append((confusion(inst > 0, gt), gt_inst, inst))
    if model is not None:
        model_counts(model, items, tta=tta, counts=counts)
    net.train()
    return score_rows(counts)


def write_overlay(net, corpus, working_mpp, sources, path: Path, decoder: str = "argmax", side: int = 400) -> None:
    """A picture of the first validation image of ``sources`` (its top-left ``side``² px): the true objects'
    outlines in green, the U-Net's (flips, ``decoder``) in red; written to ``path`` (PNG)."""
    from PIL import Image
    from skimage.segmentation import find_boundaries

    net.eval()
    src, label, s, gt, gt_inst = next(iter(validation_items(corpus, sources, 1)))
    inst = sample_instances(net, s, label, working_mpp, decoder)
    img = np.array(s["image"][:side, :side], copy=True)
    truth = gt_inst if gt_inst is not None else gt
    img[find_boundaries(np.asarray(truth)[:side, :side])] = (0, 255, 0)
    img[find_boundaries(inst[:side, :side])] = (255, 0, 0)
    Image.fromarray(img).save(path)
    print(f"overlay ({src} {s.get('image_id', '')}: truth green, U-Net red) -> {path}")


def train(net, crops, corpus, working_mpp, args, out: Path) -> tuple[int, float, list[dict]]:
    """Adam with a cosine rate over ``args.steps`` steps or ``args.minutes``; a learning-curve point (validation,
    no flips) every ``args.curve_every`` steps, written to ``out/baseline_curve.json`` as it goes.
    Returns (steps, training seconds, curve)."""
    import torch

    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    budget = args.minutes * 60.0
    curve, step, trained_s = [], 0, 0.0
    n_params = sum(p.numel() for p in net.parameters())
    print(f"U-Net: {n_params / 1e6:.2f} M parameters; crops {crops.crop}, batch {args.batch}; "
          f"{'%d steps' % args.steps if args.steps else '%.0f min' % args.minutes}", flush=True)
    while (step < args.steps) if args.steps else (trained_s < budget):
        t0 = time.perf_counter()
        frac = step / args.steps if args.steps else trained_s / budget
        for g in opt.param_groups:
            g["lr"] = args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        x, t, heads = crops.batch(args.batch)
        loss = loss_fn(net(normalise(x)), t, heads)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        trained_s += time.perf_counter() - t0
        if step % 50 == 0:
            print(f"step {step}  loss {float(loss.detach()):.4f}  {step * args.batch / trained_s:.2f} crops/s", flush=True)
        if args.curve_every and step % args.curve_every == 0:
            rows = evaluate(net, corpus, working_mpp, sources=args.sources or ("monuseg", "glas"), tta=False,
                            decoder=args.decoder)
            curve.append({"step": step, "crops": step * args.batch, "train_s": round(trained_s, 1),
                          **{f"{r['source']}_{k}": r.get(k) for r in rows for k in ("dice", "aji")}})
            print(json.dumps(curve[-1]), flush=True)
            (out / "baseline_curve.json").write_text(json.dumps({"curve": curve}, indent=1))  # kept if stopped later
    return step, trained_s, curve


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(REPO / "runs" / "pathseg-shared"))
    ap.add_argument("--recipe", default=str(REPO / "configs/train/tiny-v4-cpu.yaml"),
                    help="the model recipe whose crops the baseline trains on")
    ap.add_argument("--minutes", type=float, default=30.0, help="training time budget (evaluation not counted)")
    ap.add_argument("--steps", type=int, default=0, help="stop after this many steps instead (0: by time)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--curve-every", type=int, default=500, help="steps between learning-curve points (0: none)")
    ap.add_argument("--model", default="", help="also score this model's segment() on the same images")
    ap.add_argument("--no-tta", action="store_true")
    ap.add_argument("--limit", type=int, default=0, help="validation images per source in the final scoring (0: all)")
    ap.add_argument("--decoder", default="argmax", choices=["argmax", "border"],
                    help="how the U-Net's three classes become instances (see decode())")
    ap.add_argument("--weights", default="",
                    help="score this trained U-Net (a run's unet.pt) instead of training; its run's steps, time and "
                         "learning curve are kept from the baseline_unet.json beside it")
    ap.add_argument("--sources", nargs="+", default=[], choices=sorted(TASKS),
                    help="train (and score) a specialist on these sources only, e.g. 'monuseg' (default: every "
                         "scored source, in the recipe's balance)")
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128, 256],
                    help="channels per U-Net level, stride 1 first (e.g. 16 32 64 128 256: five levels)")
    ap.add_argument("--overlay", default="", help="also write a picture (PNG) of the U-Net's objects against the "
                                                   "truth on the first validation image of the scored sources")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "runs" / "baseline-unet"))
    args = ap.parse_args(argv)
    if len(args.widths) < 2:
        ap.error(f"--widths {args.widths}: give at least two levels (e.g. 32 64 128 256)")
    run = Path(args.weights).parent if args.weights else None
    if run is not None and not (Path(args.weights).is_file() and (run / "baseline_unet.json").is_file()):
        ap.error(f"--weights {args.weights}: expected a run's unet.pt with its baseline_unet.json beside it "
                 "(written by a training run of this script: --out DIR)")

    import torch

    from data_builders import load_pathseg

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = load_pathseg(args.data)
    crops = Crops(corpus, args.recipe, args.seed, tuple(args.sources))
    working_mpp = {"nuclei": crops.ds.structure_mpp.get("cell", crops.ds.model_mpp), "gland": crops.ds.model_mpp}
    record = json.loads((run / "baseline_unet.json").read_text()) if run is not None else {}
    widths = list(record.get("widths", args.widths))  # a trained run is rebuilt at its own widths
    net = build_unet(tuple(widths))
    n_params = sum(p.numel() for p in net.parameters())
    if args.weights:  # score a trained U-Net: its run's record (steps, time, curve) is carried over
        net.load_state_dict(torch.load(args.weights, map_location="cpu"))
        step, trained_s, curve = record["steps"], record["train_s"], record["curve"]
        curve_decoder = record.get("curve_decoder", record.get("decoder", "border"))  # first runs: 'border'
    else:
        curve_decoder = args.decoder
        step, trained_s, curve = train(net, crops, corpus, working_mpp, args, out)
        torch.save(net.state_dict(), out / "unet.pt")
    model = None
    if args.model:
        from pathsegmentor import PathSegmentor

        model = PathSegmentor.from_pretrained(args.model).eval()
    rows = evaluate(net, corpus, working_mpp, sources=tuple(args.sources), tta=not args.no_tta, model=model,
                    limit=args.limit, decoder=args.decoder)
    print_table(rows)
    if args.overlay:
        write_overlay(net, corpus, working_mpp, tuple(args.sources) or tuple(TASKS), Path(args.overlay), args.decoder)
    summary = {"params_m": round(n_params / 1e6, 3), "steps": step, "crops": step * args.batch,
               "train_s": round(trained_s, 1), "crops_per_s": round(step * args.batch / trained_s, 3),
               "sources": args.sources or sorted(TASKS), "widths": widths, "tta": not args.no_tta,
               "decoder": args.decoder, "curve_decoder": curve_decoder,
               "rows": rows, "curve": curve}
    (out / "baseline_unet.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
