"""
=======================================
A grid search and batch scoring on Dask
=======================================

Many independent fits (contexts x scorers) spread over a Dask cluster through joblib's
Dask backend, with no new code: the same ``GridSearchCV`` as on one machine. Then a large
set is scored block by block on the workers with ``dask.array.map_blocks``. Here a local
cluster of one single-threaded worker process per CPU; pass ``--scheduler ADDRESS`` to use
a running cluster. Needs ``pip install "con2[dask]"``.
"""

import argparse
import os
import sys
from pathlib import Path

# This folder holds examples/distributed.py, which would shadow the `distributed` package.
HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import dask
import dask.array as da
import joblib
import numpy as np
from distributed import Client, LocalCluster
from sklearn.model_selection import GridSearchCV

from con2 import Con2Detector
from con2.datasets import load_digits_images


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--fast", action="store_true", help="tiny network, 2 epochs")
    parser.add_argument("--scheduler", default=None, help="address of a running scheduler")
    args = parser.parse_args()

    X, y = load_digits_images()
    normal, other = np.flatnonzero(y == 0), np.flatnonzero(y != 0)[:150]
    X = np.concatenate([X[normal], X[other]])
    labels = np.r_[np.ones(len(normal)), -np.ones(len(other))]  # +1 normal, -1 anomaly
    split = [(np.arange(120), np.arange(120, len(X)))]  # train on normal images only

    settings = dict(base_width=4, n_epochs=2) if args.fast else dict(base_width=16, n_epochs=60)
    search = GridSearchCV(
        Con2Detector(batch_size=64, random_state=0, **settings),
        {"context": ["vflip", "invert"], "scorer": ["nnd", "lh"]},
        scoring="roc_auc", cv=split, n_jobs=-1, refit=True,
    )  # fmt: skip

    # One worker process per CPU with one thread each: workers x threads = cores. Dask's
    # nanny starts workers with OMP_NUM_THREADS=1, so torch runs one thread per worker;
    # its MALLOC_TRIM_THRESHOLD_=65536 would pin glibc's mmap threshold and slow
    # training (every large tensor mapped afresh), so the workers start without it.
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        cluster = None if args.scheduler else LocalCluster(
            n_workers=os.cpu_count(), threads_per_worker=1, dashboard_address=None)  # fmt: skip
    with Client(args.scheduler or cluster) as client:
        with joblib.parallel_config(backend="dask"):
            search.fit(X, labels)
        for params, auc in zip(search.cv_results_["params"],
                               search.cv_results_["mean_test_score"], strict=True):  # fmt: skip
            print(f"{params['context']:>6} {params['scorer']:>3}  AUROC {auc:.3f}")
        print("best:", search.best_params_)
        detector = search.best_estimator_
        blocks = da.from_array(X, chunks=(100, 8, 8))  # scored where the blocks are
        scores = blocks.map_blocks(detector.score_samples, drop_axis=[1, 2], dtype=np.float64)
        print(f"scored {len(scores.compute())} images on {len(client.nthreads())} workers")
    if cluster is not None:
        cluster.close()


if __name__ == "__main__":  # worker processes import this file: keep the work in main()
    main()
