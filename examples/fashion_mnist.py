"""
=========================================
Fashion-MNIST: one class normal, pictures
=========================================

Train :class:`con2.Con2Detector` on one Fashion-MNIST class, report the AUROC on the
test set, and save three figures: the embeddings in both contexts (the paper's
Figure 3), the score histograms with the threshold, and the loss curve.

Needs the IDX files (``apt-get install -y dataset-fashion-mnist``). ``--fast`` trains a
tiny network on 1000 images for 2 epochs (seconds); the default trains base_width 8 for
8 epochs on all 6000 images (about 2 minutes on 2 CPU cores).
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_auc_score

from con2 import Con2Detector
from con2.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist
from con2.plotting import plot_embeddings, plot_loss_curve, plot_score_histogram

parser = argparse.ArgumentParser()
parser.add_argument("--normal", type=int, default=7, help="class index (7: sneaker)")
parser.add_argument("--fast", action="store_true")
parser.add_argument("--out", default=str(Path(__file__).parent / "figures"))
args = parser.parse_args()

X_train, y_train, X_test, y_test = load_fashion_mnist()
normal = X_train[y_train == args.normal]
settings = dict(base_width=8, n_epochs=8, n_test_augmentations=8)
if args.fast:
    normal, settings = normal[:1000], dict(base_width=4, n_epochs=2, n_test_augmentations=4)

det = Con2Detector(context="vflip", scorer="lh", random_state=0, verbose=1, **settings)
det.fit(normal)
is_normal = np.where(y_test == args.normal, 1, -1)
auroc = roc_auc_score(is_normal, det.score_samples(X_test))
print(f"{FASHION_MNIST_CLASSES[args.normal]} normal: AUROC {auroc:.3f}")

out = Path(args.out)
out.mkdir(exist_ok=True)
test_normal, test_anomalous = X_test[y_test == args.normal], X_test[y_test != args.normal]

axes = plot_embeddings(det, normal, test_normal, test_anomalous, max_points=120)
axes[0].figure.suptitle(f"Con2 (vflip) on Fashion-MNIST {FASHION_MNIST_CLASSES[args.normal]}")
axes[0].figure.savefig(out / "fashion_mnist_embeddings.png", dpi=70, bbox_inches="tight")

ax = plot_score_histogram(det, test_normal, test_anomalous)
ax.set_title(f"AUROC {auroc:.3f}")
ax.figure.savefig(out / "fashion_mnist_scores.png", dpi=70, bbox_inches="tight")

ax = plot_loss_curve(det)
ax.figure.savefig(out / "fashion_mnist_loss.png", dpi=70, bbox_inches="tight")
plt.close("all")
print(f"figures in {out}")
