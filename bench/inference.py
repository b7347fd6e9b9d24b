"""Inference speed, measured against upstream segment_anything in the same run.

Prints a table and a last line of figures:

1. SAM ViT-B image encoder at 1024x1024: upstream ``ImageEncoderViT`` vs ours
   (``pathsegmentor-vit-b`` with the fused attention), both holding the same random weights (seeded,
   loaded into ours from a temporary official-layout ``.pth`` with ``load_sam_checkpoint``): time ratio
   and max abs difference of the embeddings; then the encoder's useful FLOP rate as a fraction of the
   machine's fp32 matmul rate measured in the same run, and the speed-up that running at that peak
   would give (the bound no identical-output implementation can pass on this machine).
2. One image, 1 vs 16 text prompts through ``segment()`` (image encoding inside both; text embeddings
   warm in the cache, as they are after first use): time ratio.
3. ``pathsegmentor-tiny`` end to end on a 1000x1000 tile, one prompt, without and with ``mpp=0.25``,
   vs upstream ``SamPredictor.set_image + predict`` (one box) on the same tile.

Each timed function runs once untimed first (warm-up); the two encoders are timed alternately, each
timed call right after an untimed call of the same encoder (steady state, as over many tiles); times
are wall-clock minima (or medians where said) on whatever the machine gives; never asserted.

    python bench/inference.py [--quick] [--skip-upstream] [--threads N]
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pathsegmentor._compat import ensure_torchvision

ensure_torchvision()

REPO = Path(__file__).resolve().parent.parent
PROMPTS16 = ["nuclei", "tumor nuclei", "inflammatory nuclei", "gland", "stroma", "necrosis", "fibroblast nuclei",
             "lymphocytes", "epithelium", "blood vessel", "fat", "muscle", "mitotic figure", "mucus",
             "red blood cells", "background"]


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def timed_interleaved(fa, fb, repeats: int, steady: bool = False) -> tuple[list[float], list[float]]:
    """Alternate ``fa`` and ``fb`` so that drifting load on a shared machine hits both alike.

    ``steady``: each timed call follows an untimed call of the same function, so each is timed in its
    own steady state (as when processing many tiles) rather than in the memory state the other left:
    after upstream's many large temporaries are freed, the next forward of either pays to fault its
    memory in again.
    """
    ta, tb = [], []
    for _ in range(repeats):
        for f, t in ((fa, ta), (fb, tb)):
            if steady:
                f()
            t += timed(f, 1)
    return ta, tb


def matmul_peak_gflops(repeats: int = 10) -> float:
    """This machine's fp32 matmul rate now: the best of ``repeats`` ``[4096, 768] x [768, 3072]`` products
    (the shape of the ViT-B MLP), in GFLOP/s."""
    a, b = torch.randn(4096, 768), torch.randn(768, 3072)
    out = torch.empty(4096, 3072)
    torch.mm(a, b, out=out)
    best = min(timed(lambda: torch.mm(a, b, out=out), repeats))
    return 2 * 4096 * 768 * 3072 / best / 1e9


def vit_encoder_gflop(encoder, img_size: int) -> float:
    """Useful fp32 GFLOP of one SAM ``ImageEncoderViT`` forward at ``img_size``: patch embedding, every
    block's linears on the real tokens and its (windowed or global) attention, the neck. Work that
    upstream spends on window padding is not counted, so both implementations are held to the same
    figure."""
    patch = encoder.patch_embed.proj
    h = img_size // patch.stride[0]
    n = h * h
    dim = patch.out_channels
    flop = 2 * n * dim * patch.in_channels * patch.kernel_size[0] * patch.kernel_size[1]
    for blk in encoder.blocks:
        hidden = blk.mlp.lin1.out_features
        flop += 2 * n * (dim * 3 * dim + dim * dim + 2 * dim * hidden)
        ws = blk.window_size
        if ws:
            windows = math.ceil(h / ws) ** 2
            flop += 4 * windows * (ws * ws) ** 2 * dim  # q k^T and attn v over padded windows, as upstream
        else:
            flop += 4 * n * n * dim
    for m in encoder.neck:
        if isinstance(m, torch.nn.Conv2d):
            flop += 2 * n * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1]
    return flop / 1e9


def real_tile(size: int = 1000) -> tuple[np.ndarray, str]:
    from PIL import Image

    for p in (REPO.parent / "shared" / "data" / "consep" / "images" / "train_1.png",
              REPO.parent / "shared" / "data" / "monuseg" / "MoNuSegTrainingData" / "Tissue_Images"
              / "TCGA-18-5592-01Z-00-DX1.tif"):
        if p.is_file():
            img = np.asarray(Image.open(p).convert("RGB"))[:size, :size]
            if img.shape[:2] == (size, size):
                return np.ascontiguousarray(img), str(p.relative_to(REPO.parent))
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "random uint8"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--skip-upstream", action="store_true", help="do not run upstream segment_anything")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    reps_enc = 1 if args.quick else 3
    reps_tiny = 3 if args.quick else 5

    from segment_anything import SamPredictor, sam_model_registry

    from pathsegmentor import create_model, load_sam_checkpoint
    from pathsegmentor import Predictor, from_pretrained
    from pathsegmentor.modeling.weights import WeightsNotFoundError

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {'quick' if args.quick else 'full'} run")
    rows: list[tuple[str, str, str]] = []
    figures: dict[str, str] = {}

    # ---------------------------------------------------------------- same random SAM ViT-B weights
    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]().eval()
    with torch.no_grad():  # zero at init upstream; random here so the relative-position path is exercised
        for name, p in sam.named_parameters():
            if "rel_pos" in name or name.endswith("pos_embed"):
                p.normal_(0.0, 0.05)
    ours = create_model("pathsegmentor-vit-b").eval()
    with tempfile.TemporaryDirectory() as d:
        ckpt = Path(d) / "sam_vit_b_01ec64.pth"
        torch.save(sam.state_dict(), ckpt)
        load_sam_checkpoint(ours, ckpt)

    img1024 = np.random.default_rng(1).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    x = ours.normalize(torch.from_numpy(img1024).permute(2, 0, 1)[None])

    # ---------------------------------------------------------------- 1. encoder, upstream vs ours
    with torch.no_grad():
        emb_ours = ours.image_encoder(x)  # untimed warm-up of each (one-time kernel and allocator set-up)
        if args.skip_upstream:
            t_ours = timed(lambda: ours.encode_image(x), reps_enc)
        else:
            emb_up = sam.image_encoder(x)
            t_ours, t_up = timed_interleaved(lambda: ours.encode_image(x), lambda: sam.image_encoder(x), reps_enc,
                                             steady=True)
        rows.append(("SAM ViT-B encoder 1024², ours (fused attention)", f"{min(t_ours):.2f} s", ""))
        if not args.skip_upstream:
            diff = (emb_ours - emb_up).abs().max().item()
            ratio = min(t_up) / min(t_ours)
            rows.append(("SAM ViT-B encoder 1024², upstream segment_anything", f"{min(t_up):.2f} s", ""))
            rows.append(("  encoder speed-up (upstream / ours)", f"{ratio:.2f}x", f"max abs diff {diff:.2e}"))
            figures["encoder_speedup"] = f"{ratio:.2f}x"
            figures["encoder_max_abs_diff"] = f"{diff:.1e}"
            # how far from this machine's own limit: useful FLOP rate vs the matmul rate measured now
            peak = matmul_peak_gflops()
            gflop = vit_encoder_gflop(sam.image_encoder, 1024)
            frac_ours, frac_up = gflop / min(t_ours) / peak, gflop / min(t_up) / peak
            bound = min(t_up) / (gflop / peak)
            rows.append(("  fp32 matmul peak now ([4096,768]x[768,3072])", f"{peak:.0f}", "GFLOP/s"))
            rows.append((f"  encoder useful work {gflop:.0f} GFLOP: ours / upstream", f"{frac_ours:.0%}",
                         f"upstream {frac_up:.0%} of that peak"))
            rows.append(("  speed-up bound (upstream / ours at 100% of peak)", f"{bound:.2f}x", ""))
            figures["encoder_frac_of_peak"] = f"{frac_ours:.2f}"
            figures["encoder_speedup_bound"] = f"{bound:.2f}x"
        else:
            figures["encoder_ours_s"] = f"{min(t_ours):.2f}"
    del emb_ours

    # ---------------------------------------------------------------- 2. 1 vs 16 prompts on one image
    ours.encode_text(PROMPTS16)  # warm the text-embedding cache (what every later call sees)
    fresh = Predictor(ours, cache_bytes=0)  # no image-encoding cache: every call encodes the image, as timed
    t1, t16 = timed_interleaved(lambda: fresh.segment(img1024, PROMPTS16[:1]), lambda: fresh.segment(img1024, PROMPTS16),
                                reps_enc)
    r16 = min(t16) / min(t1)
    rows.append(("vit-b segment(), 1 prompt, 1024²", f"{min(t1):.2f} s", "image encoded inside"))
    rows.append(("vit-b segment(), 16 prompts, 1024²", f"{min(t16):.2f} s", "image encoded once"))
    rows.append(("  16 prompts / 1 prompt", f"{r16:.2f}x", ""))
    figures["prompts16_over_1"] = f"{r16:.2f}x"
    del ours

    # ---------------------------------------------------------------- 3. tiny end to end vs upstream predictor
    try:
        tiny = from_pretrained("pathsegmentor-tiny").eval()
        tiny_src = "trained weights"
    except WeightsNotFoundError:
        torch.manual_seed(0)
        tiny = create_model("pathsegmentor-tiny").eval()
        tiny_src = "RANDOM weights (trained weights not found; speed is the same)"
    tile, tile_src = real_tile(1000)
    rows.append((f"pathsegmentor-tiny: {tiny_src}", "", f"tile: {tile_src}"))
    tiny = Predictor(tiny, cache_bytes=0)  # every timed call encodes its windows (no encoding cache)
    tiny.segment(tile[:256, :256], "nuclei")  # warm-up (allocator, text cache)
    t_tiny = timed(lambda: tiny.segment(tile, "nuclei"), reps_tiny)
    t_tiny_mpp = timed(lambda: tiny.segment(tile, "nuclei", mpp=0.25), reps_tiny)
    med, med_mpp = statistics.median(t_tiny), statistics.median(t_tiny_mpp)
    rows.append(("tiny segment() 1000² tile, 1 prompt (median)", f"{med:.3f} s", f"{len(t_tiny)} runs"))
    rows.append(("tiny segment() 1000² tile, mpp=0.25, nuclei at their working µm/px with instances (median)", f"{med_mpp:.3f} s", f"{len(t_tiny_mpp)} runs"))
    figures["tiny_s"] = f"{med:.3f}"
    figures["tiny_mpp0.25_s"] = f"{med_mpp:.3f}"
    if not args.skip_upstream:
        predictor = SamPredictor(sam)
        box = np.array([300.0, 300.0, 600.0, 650.0])

        def upstream():
            with torch.no_grad():
                predictor.set_image(tile)
                predictor.predict(box=box, multimask_output=False)

        t_up_e2e = timed(upstream, max(1, reps_enc))
        med_up = statistics.median(t_up_e2e)
        rows.append(("upstream SamPredictor ViT-B set_image + predict(box)", f"{med_up:.2f} s", f"{len(t_up_e2e)} runs"))
        rows.append(("  tiny / upstream", f"1/{med_up / med:.0f}", f"with mpp=0.25: 1/{med_up / med_mpp:.0f}"))
        figures["tiny_vs_upstream"] = f"1/{med_up / med:.0f}"
        figures["tiny_mpp_vs_upstream"] = f"1/{med_up / med_mpp:.0f}"

    w = max(len(r[0]) for r in rows)
    print()
    print(f"{'measurement':<{w}}  {'value':>9}  note")
    print("-" * (w + 30))
    for name, value, note in rows:
        print(f"{name:<{w}}  {value:>9}  {note}")
    print()
    print("FIGURES " + " ".join(f"{k}={v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
