"""The similarity threshold of prompt resolution's nearest step, calibrated on the ontology alone
(its own synonyms against phrases from outside pathology); never on evaluation images."""
from __future__ import annotations

from typing import Sequence

import numpy as np

# Phrases from outside pathology: the negatives of the threshold calibration (never evaluation data).
OUT_OF_DOMAIN = (
    "a photo of a dog", "the weather tomorrow", "stock market prices", "a bowl of fruit", "mountain landscape",
    "football match", "traffic light", "a cup of coffee", "piano keys", "sailing boat", "city skyline at night",
    "birthday cake", "wooden chair", "a pair of shoes", "laptop keyboard", "sunflower field", "airplane wing",
    "chess board", "bicycle wheel", "grocery list", "quantum computing", "a tall lighthouse", "lorem ipsum dolor",
    "asdf jkl", "xyz 123", "the quick brown fox", "tax return form", "guitar strings", "snow on the roof",
    "a glass of water", "pizza slice", "telephone number", "running shoes", "rain forest", "electric guitar",
    "dinner plate", "road map", "movie ticket", "bus station", "garden hose",
)


def calibrate_threshold(emb: np.ndarray, owners: Sequence[str], negatives: np.ndarray) -> float:
    """Similarity threshold of the nearest step, from the ontology alone.

    Positives: each name or synonym, left out of the index, against the rest (a paraphrase of a concept
    should land on that concept); they count only when the nearest remaining string is the same
    concept's. Negatives: the best similarity of each out-of-domain phrase. The threshold maximises
    balanced accuracy (ties: the midpoint of the best interval).
    """
    owners_arr = np.asarray(owners)
    sims = emb @ emb.T
    np.fill_diagonal(sims, -2.0)
    pos = []
    for i in range(len(owners)):
        same = owners_arr == owners_arr[i]
        same[i] = False
        if not same.any():
            continue  # a concept named only once has no paraphrase to test
        j = int(np.argmax(sims[i]))
        pos.append(sims[i, j] if owners_arr[j] == owners_arr[i] else -2.0)
    pos_arr = np.asarray(pos, np.float32)
    neg = (negatives @ emb.T).max(1)
    candidates = np.unique(np.concatenate([pos_arr[pos_arr > -2], neg]))
    best, best_ts = -1.0, [0.5]
    for t in candidates:
        score = 0.5 * ((pos_arr >= t).mean() + (neg < t).mean())
        if score > best + 1e-9:
            best, best_ts = score, [float(t)]
        elif abs(score - best) <= 1e-9:
            best_ts.append(float(t))
    lo = min(best_ts)
    below = neg[neg < lo]
    return float((lo + below.max()) / 2) if below.size else lo
