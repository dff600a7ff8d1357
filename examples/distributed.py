"""
=============================================
One model trained by several processes at once
=============================================

Launch with ``torchrun --nproc_per_node=2 examples/distributed.py --fast``: each process
(rank) takes its shard of every batch (one GPU each, or CPU processes with gloo), the
contrastive negatives come from every rank, and every rank ends with the same detector,
so each prints the same AUROC. Without torchrun the same script trains in one process.
"""

import argparse
import os

import numpy as np
from sklearn.metrics import roc_auc_score

from con2 import Con2Detector
from con2.datasets import load_digits_images

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
parser.add_argument("--fast", action="store_true", help="tiny network, 3 epochs")
args = parser.parse_args()

X, y = load_digits_images()
normal = np.random.default_rng(0).permutation(np.flatnonzero(y == 0))
train = normal[:120]
test = np.setdiff1d(np.arange(len(X)), train)
is_normal = np.where(y[test] == 0, 1, -1)

settings = dict(base_width=4, n_epochs=3) if args.fast else dict(base_width=16, n_epochs=100)
# distributed="auto" (the default) trains with every process torchrun started;
# batch_size is the global batch, split between them.
det = Con2Detector(context="invert", batch_size=64, random_state=0, verbose=1, **settings)
det.fit(X[train])

rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
auroc = roc_auc_score(is_normal, det.score_samples(X[test]))
print(f"rank {rank} of {world}: AUROC {auroc:.6f}, threshold {det.offset_:.6f}", flush=True)
