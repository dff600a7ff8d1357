"""Data-parallel training on CPU with gloo and two processes, and fits on a Dask cluster."""

import json
import os
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from distributed_workers import (
    fit_worker,
    free_port,
    gradient_worker,
    step_gradients,
    tiny_batch,
    tiny_encoder,
)
from helpers import tiny_detector

from con2 import Con2Detector
from con2.datasets import load_digits_images

# every test here starts processes or a Dask cluster: minutes in all
pytestmark = [
    pytest.mark.skipif(not dist.is_available(), reason="needs torch.distributed"),
    pytest.mark.slow,
]


def spawn(function, *args, world=2):
    mp.spawn(function, args=(world, free_port(), *args), nprocs=world, join=True)


OBJECTIVES = ["con2", "csi", "firm", "con2-outliers"]


@pytest.fixture(scope="module")
def rank_gradients(tmp_path_factory):
    """The folder of every rank's gradients, of every objective, from one spawn."""
    folder = tmp_path_factory.mktemp("gradients")
    spawn(gradient_worker, str(folder), OBJECTIVES)
    return folder


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_each_rank_gets_the_single_process_gradient_of_the_global_batch(rank_gradients,
                                                                        objective):  # fmt: skip
    torch.manual_seed(0)
    single = step_gradients(tiny_encoder(objective), tiny_batch(), torch.arange(6),
                            objective=objective)  # fmt: skip
    for rank in (0, 1):  # different data on each rank, the same averaged gradient
        grads = torch.load(rank_gradients / f"grads{rank}-{objective}.pt")
        for name, expected in single.items():
            # float32 sums over ranks round differently from the whole batch's (CSI's
            # rotation head once differed by 1.7e-7 on a gradient of 4e-3); the negative
            # control below differs by more than 1e-2 of the largest gradient
            torch.testing.assert_close(grads[name], expected, rtol=1e-4, atol=1e-6)
    # Negative control: the same loss with a plain gather, no gradient to other ranks
    control = torch.load(rank_gradients / f"grads0-{objective}-control.pt")
    worst = max(float((control[k] - v).abs().max() / v.abs().max()) for k, v in single.items())
    assert worst > 1e-2


def fit_in_processes(tmp_path, X, world=2, nan_on_rank=None, **settings):
    np.save(tmp_path / "X.npy", X)
    spawn(fit_worker, str(tmp_path), json.dumps(settings), nan_on_rank, world=world)
    return [torch.load(tmp_path / f"fit{r}.pt", weights_only=False)
            if (tmp_path / f"fit{r}.pt").exists() else None for r in range(world)]  # fmt: skip


@pytest.fixture(scope="module")
def zeros():
    X, y = load_digits_images()
    return X[y == 0][:40]


def test_two_processes_reach_the_single_process_parameters(tmp_path, zeros):
    # float32: the sums of per-rank terms round differently from the whole batch's, and
    # bfloat16 would hide the mathematics under its own rounding
    settings = dict(context="invert", n_epochs=2, batch_size=16, n_test_augmentations=4,
                    random_state=0, device="cpu", scorer="lh", precision="float32")  # fmt: skip
    ranks = fit_in_processes(tmp_path, zeros, no_batchnorm=True, **settings)
    from distributed_workers import no_batchnorm

    single = Con2Detector(backbone=no_batchnorm, distributed=False, **settings).fit(zeros)
    assert ranks[0]["world"] == 2
    for name, value in single.encoder_.state_dict().items():
        torch.testing.assert_close(ranks[0]["state"][name], value, rtol=1e-4, atol=1e-5)
        assert torch.equal(ranks[0]["state"][name], ranks[1]["state"][name])
    np.testing.assert_array_equal(ranks[0]["scores"], ranks[1]["scores"])  # identical detectors
    assert ranks[0]["offset"] == ranks[1]["offset"] and ranks[0]["losses"] == ranks[1]["losses"]
    np.testing.assert_allclose(ranks[0]["scores"], single.score_samples(zeros[:10]), rtol=1e-4)
    np.testing.assert_allclose(ranks[0]["losses"], single.loss_curve_, rtol=1e-5)


def test_uneven_shards_checkpoints_and_progress_from_rank_zero(tmp_path, zeros):
    checkpoint = tmp_path / "run.ckpt"
    settings = dict(context="invert", base_width=2, n_epochs=2, batch_size=5,
                    n_test_augmentations=2, random_state=0, device="cpu", verbose=2,
                    checkpoint_path=str(checkpoint), checkpoint_every=1)  # fmt: skip
    ranks = fit_in_processes(tmp_path, zeros[:23], **settings)  # shards of 2 and 3 images
    assert ranks[0]["offset"] == ranks[1]["offset"]
    assert "epoch 2/2" in (tmp_path / "stderr0.txt").read_text()
    assert (tmp_path / "stderr1.txt").read_text() == ""  # progress from rank 0 only
    # the checkpoint resumes in one process: nothing is left to train
    resumed = Con2Detector(distributed=False, **{**settings, "verbose": 0}).fit(zeros[:23])
    assert resumed.loss_curve_ == ranks[0]["losses"]
    for name, value in resumed.encoder_.state_dict().items():
        assert torch.equal(value, ranks[0]["state"][name])


def test_a_non_finite_loss_on_one_rank_stops_every_rank_with_the_same_error(tmp_path, zeros):
    settings = dict(context="invert", base_width=2, n_epochs=1, batch_size=8,
                    n_test_augmentations=2, random_state=0, device="cpu")  # fmt: skip
    fit_in_processes(tmp_path, zeros, nan_on_rank=1, **settings)
    errors = [(tmp_path / f"error{r}.txt").read_text() for r in (0, 1)]
    assert errors[0] == errors[1] and errors[0].startswith("FloatingPointError: The training loss")


def test_sync_batchnorm_needs_nccl(tmp_path, zeros):
    with pytest.raises(ValueError, match=r"sync_batchnorm=True .* single process"):
        tiny_detector(sync_batchnorm=True).fit(zeros)
    fit_in_processes(tmp_path, zeros, sync_batchnorm=True, context="invert", base_width=2,
                     n_epochs=1, batch_size=8, device="cpu")  # fmt: skip
    for rank in (0, 1):
        assert "uses gloo on the CPU" in (tmp_path / f"error{rank}.txt").read_text()


def test_a_world_of_one_process_is_bit_identical_to_no_distribution(zeros, tmp_path):
    single = tiny_detector(distributed=False).fit(zeros)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0,
                            world_size=1)  # fmt: skip
    try:
        grouped = tiny_detector(distributed=True).fit(zeros)
    finally:
        dist.destroy_process_group()
    np.testing.assert_array_equal(grouped.score_samples(zeros), single.score_samples(zeros))
    assert grouped.loss_curve_ == single.loss_curve_


def test_distributed_true_outside_torchrun_says_how_to_launch(zeros, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="torchrun --nproc_per_node=N"):
        tiny_detector(distributed=True).fit(zeros)


def test_batches_smaller_than_the_number_of_processes_are_refused(tmp_path, zeros):
    # 3 images: a batch of 3 over 2 ranks is fine, over 4 it is not
    fit_in_processes(tmp_path, zeros[:3], context="invert", base_width=2, n_epochs=1,
                     batch_size=8, device="cpu")  # fmt: skip
    assert (tmp_path / "fit0.pt").exists()
    fit_in_processes(tmp_path, zeros[:3], world=4, context="invert", base_width=2, n_epochs=1,
                     batch_size=8, device="cpu")  # fmt: skip
    assert "smaller than the 4 processes" in (tmp_path / "error0.txt").read_text()


# -- Dask --------------------------------------------------------------------------------

dask_distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    environ = dict(os.environ)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:  # fmt: skip
        # the nanny left OMP_NUM_THREADS=1 (and more) in this process's environment,
        # which later subprocesses of the suite would inherit
        os.environ.clear()
        os.environ.update(environ)
        client.run(lambda: sys.path.insert(0, os.path.dirname(__file__)))
        yield client


def test_dask_workers_run_one_torch_thread_each(client):
    threads = client.run(torch.get_num_threads)
    assert set(threads.values()) == {1} and len(threads) == 2


def test_a_grid_search_on_dask_gives_the_serial_results(client, one_thread):
    import joblib
    from sklearn.model_selection import GridSearchCV

    X, y = load_digits_images()
    X = np.concatenate([X[y == 0][:60], X[y == 1][:20]])
    labels = np.r_[np.ones(60), -np.ones(20)]
    split = [(np.arange(40), np.arange(40, 80)), (np.arange(20, 60), np.r_[0:20, 60:80])]
    grid = {"context": ["invert", "vflip"], "scorer": ["nnd", "lh"]}

    def search():
        return GridSearchCV(tiny_detector(), grid, scoring="roc_auc", cv=split, n_jobs=-1)

    serial = search().fit(X, labels)
    with joblib.parallel_config(backend="dask"):
        on_cluster = search().fit(X, labels)
    np.testing.assert_array_equal(on_cluster.cv_results_["mean_test_score"],
                                  serial.cv_results_["mean_test_score"])  # fmt: skip


def test_arrays_and_files_are_scored_on_the_workers(client, one_thread, tmp_path, zeros):
    import dask.array as da
    import dask.bag as db
    from PIL import Image

    det = tiny_detector().fit(zeros)
    X, _ = load_digits_images()
    blocks = da.from_array(X[:100], chunks=(25, 8, 8))
    scores = blocks.map_blocks(det.score_samples, drop_axis=[1, 2], dtype=np.float64)
    # float64 products round differently at batch edges: equal to about 1e-16
    np.testing.assert_allclose(scores.compute(), det.score_samples(X[:100]), rtol=1e-13)
    paths = []
    for i in range(12):
        paths.append(str(tmp_path / f"{i:02d}.png"))
        Image.fromarray(X[i]).save(paths[-1])
    bag = db.from_sequence(paths, npartitions=3).map_partitions(
        lambda part: list(det.score_samples(list(part)))
    )
    np.testing.assert_allclose(bag.compute(), det.score_samples(paths), rtol=1e-13)
