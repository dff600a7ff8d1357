"""
============================================
From a folder of images to a table of scores
============================================

Write Fashion-MNIST sneakers as PNG files (8-bit) and the same pictures as 16-bit TIFF
files, as an x-ray archive would hold them; train from the folders in Python, score a
folder of new images with the ``con2`` command line, and read its CSV. Run with
``--fast`` for a few-second smoke run.
"""

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from con2 import Con2Detector
from con2.datasets import load_fashion_mnist

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
parser.add_argument("--fast", action="store_true", help="few images, tiny network")
parser.add_argument("--out", default=None, help="folder to write into (default: a temporary one)")
args = parser.parse_args()

X_train, y_train, X_test, y_test = load_fashion_mnist()
n_train, n_test = (64, 40) if args.fast else (2000, 1000)
root = Path(args.out or tempfile.mkdtemp(prefix="con2-folders-"))
root.mkdir(parents=True, exist_ok=True)

# Folders as users hold them: training images of one class, new images of all classes.
for folder in ("train_png", "train_tif16", "new"):
    (root / folder).mkdir(exist_ok=True)
sneakers = X_train[y_train == 7][:n_train]
for i, image in enumerate(sneakers):
    Image.fromarray(image).save(root / "train_png" / f"{i:04d}.png")
    # 16-bit: the same pictures, values 0..65535
    Image.fromarray(image.astype(np.uint16) * 257).save(root / "train_tif16" / f"{i:04d}.tif")
new = np.random.default_rng(0).choice(len(X_test), n_test, replace=False)
for i in new:
    kind = "normal" if y_test[i] == 7 else "anomaly"
    Image.fromarray(X_test[i]).save(root / "new" / f"{kind}_{i:05d}.png")
print(f"wrote {n_train} PNG and {n_train} 16-bit TIFF training files, {n_test} new files")

# Train from the folder in Python; save in the weights-only format the CLI reads.
settings = dict(base_width=4, n_epochs=2) if args.fast else dict(base_width=8, n_epochs=10)
det = Con2Detector(context="vflip", scorer="lh", batch_size=128, random_state=0, **settings)
det.fit(root / "train_png")
det.save(root / "sneakers.con2")

# Score the new folder from the command line (as on a server): one CSV row per file.
csv_path = root / "scores.csv"
subprocess.run([sys.executable, "-m", "con2", "score", str(root / "sneakers.con2"),
                str(root / "new"), "--out", str(csv_path)], check=True)  # fmt: skip
rows = list(csv.DictReader(csv_path.open()))
print(f"\n{csv_path}:\n" + "".join(csv_path.read_text().splitlines(True)[:4]) + "...")
is_normal = [1 if Path(r["path"]).name.startswith("normal") else -1 for r in rows]
scores = [float(r["score"]) for r in rows]
flagged = sum(r["label"] == "anomaly" for r in rows)
print(f"AUROC {roc_auc_score(is_normal, scores):.3f}; {flagged} of {len(rows)} files flagged")

# The 16-bit files hold the same pictures (v * 257 / 65535 = v / 255), and the model
# trained on them gives the same scores: bit depth is read, never truncated to 8 bits.
det16 = Con2Detector(context="vflip", scorer="lh", batch_size=128, random_state=0, **settings)
det16.fit(root / "train_tif16")
same = np.array_equal(det16.score_samples(root / "new"), np.array(scores))
print(f"16-bit TIFF model scores equal the 8-bit PNG model's: {same}")
