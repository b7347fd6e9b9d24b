"""Pooled pixel Dice of pathsegmentor-tiny on the corpus' TRAINING split at several mask thresholds.

    python bench/threshold_check.py   (expects runs/pathseg-shared from `make corpus`)

Used to check the shipped mask threshold without looking at the validation split.
"""
import torch
from data_builders import load_pathseg
from pathsegmentor import PathSegmentor
from pathsegmentor.evaluation.metrics import confusion, Counts, scores
torch.set_num_threads(2)
m = PathSegmentor.from_pretrained("pathsegmentor-tiny")
c = load_pathseg("runs/pathseg-shared")
thrs = [0.3, 0.35, 0.4, 0.45, 0.5]
acc = {}
t = c.images["train"]
for i in range(len(t)):
    s = c.sample("train", i)
    labels = sorted(s["targets"])
    r = m.segment(s["image"], labels, mpp=s["mpp"])
    for k, lb in enumerate(labels):
        for th in thrs:
            key = (s["source"], th)
            acc[key] = acc.get(key, Counts()) + confusion(r.probs[k] > th, s["targets"][lb])
for src in ("monuseg", "glas", "consep"):
    print(src, [(th, round(scores(acc[(src, th)])["dice"], 4)) for th in thrs])
allc = {th: sum((acc[(s, th)] for s in ("monuseg", "glas", "consep")), Counts()) for th in thrs}
print("all", [(th, round(scores(allc[th])["dice"], 4)) for th in thrs])
