"""One exported graph: ONNX Runtime and torch.export agree with score_samples and predict."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_detector
from sklearn.exceptions import NotFittedError

from con2 import Con2Detector, Con2Objective, NearestNeighborScorer
from con2.export import metadata, read_metadata, scoring_module

ort = pytest.importorskip("onnxruntime")


def onnx_outputs(path, images):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})


@pytest.mark.filterwarnings("ignore:Context check failed")  # vflip on zeros, equalize at 8x8
@pytest.mark.parametrize("scorer", ["nnd", "lh"])
@pytest.mark.parametrize("context", ["vflip", "invert", "equalize"])
def test_onnx_runtime_matches_score_samples_and_predict(digits, tmp_path, context, scorer):
    train, new = digits[0], np.concatenate([digits[1][:5], digits[1][-4:]])  # 0s and 1s
    det = tiny_detector(context=context, scorer=scorer).fit(train)
    det.set_threshold(0.3)  # so that both labels occur; the graph takes the moved threshold
    path = tmp_path / "model.onnx"
    det.export(path)  # exported with a batch of 2
    images = new[:, None]  # (n, 1, 8, 8) uint8
    for batch in (1, 5):
        score, decision, label = onnx_outputs(path, images[:batch])
        np.testing.assert_allclose(score, det.score_samples(new[:batch]), rtol=1e-4)
        np.testing.assert_allclose(decision, det.decision_function(new[:batch]), rtol=1e-4,
                                   atol=1e-4 * np.abs(det.offset_))  # fmt: skip
        np.testing.assert_array_equal(label, det.predict(new[:batch]))
    assert set(det.predict(new)) == {-1, 1}


@pytest.mark.filterwarnings("ignore:Context check failed")  # rotations of 8x8 zeros
@pytest.mark.parametrize(
    ("objective", "scorer"),
    [
        ("csi", "csi"),
        ("firm", NearestNeighborScorer(n_neighbors=5)),
        ("simclr", "lh"),
        (Con2Objective(outliers=["rot90", "rot270"]), "nnd"),
    ],
    ids=["csi", "firm", "simclr", "con2-outliers"],
)
def test_every_objective_exports_with_its_rotations_and_its_score(digits, tmp_path, objective,
                                                                  scorer):  # fmt: skip
    train, new = digits[0], np.concatenate([digits[1][:5], digits[1][-4:]])
    det = tiny_detector(objective=objective, context=None, scorer=scorer,
                        n_test_augmentations=8).fit(train)  # fmt: skip
    path = tmp_path / "model.onnx"
    det.export(path)
    score, _, label = onnx_outputs(path, new[:, None])
    np.testing.assert_allclose(score, det.score_samples(new), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(label, det.predict(new))


def test_the_scoring_module_is_the_eager_scoring_path(digits):
    train, new = digits[0], np.concatenate([digits[1][:5], digits[1][-4:]])  # 0s and 1s
    for scorer in ("nnd", "lh"):
        det = tiny_detector(scorer=scorer).fit(train)
        with torch.no_grad():
            score, _, label = scoring_module(det)(torch.from_numpy(new[:, None]))
        np.testing.assert_allclose(score.numpy(), det.score_samples(new), rtol=1e-9)
        np.testing.assert_array_equal(label.numpy(), det.predict(new))


def test_torch_export_program_scores_like_the_detector(digits, tmp_path):
    train, new = digits[0], np.concatenate([digits[1][:5], digits[1][-4:]])  # 0s and 1s
    det = tiny_detector(scorer="lh").fit(train)
    det.export(tmp_path / "model.pt2", format="pt2")
    program = torch.export.load(tmp_path / "model.pt2")
    with torch.no_grad():
        score, _, label = program.module()(torch.from_numpy(new[:3, None]))
    np.testing.assert_allclose(score.numpy(), det.score_samples(new[:3]), rtol=1e-6)
    np.testing.assert_array_equal(label.numpy(), det.predict(new[:3]))
    meta = read_metadata(tmp_path / "model.pt2")
    assert meta["scorer"] == "lh" and json.loads(meta["image_shape"]) == [1, 8, 8]


def test_onnx_file_carries_its_metadata(digits, tmp_path):
    det = tiny_detector(scorer="nnd").fit(digits[0])
    det.export(tmp_path / "m.onnx")
    meta = read_metadata(tmp_path / "m.onnx")
    import con2

    assert meta["con2_version"] == con2.__version__
    assert json.loads(meta["parameters"])["base_width"] == 4
    assert json.loads(meta["contexts"]) == ["invert"] and meta["scorer"] == "nnd"
    assert float(meta["threshold"]) == det.offset_ and meta["input_dtype"] == "uint8"
    assert json.loads(meta["value_range"]) is None and meta["n_samples_fit"] == "100"
    assert meta["date"].startswith("20")


def test_models_with_a_value_range_take_raw_float_values(tmp_path):
    rng = np.random.default_rng(0)
    X = (np.linspace(0, 4000, 12)[None, :, None] + rng.integers(0, 95, (60, 12, 12))).astype(
        np.uint16
    )
    det = tiny_detector(value_range=(0, 4095)).fit(X)
    det.export(tmp_path / "m.onnx")
    assert read_metadata(tmp_path / "m.onnx")["input_dtype"] == "float32"
    new = X[:4] // 2  # not training images: those would be scored leave-one-out
    score, _, _ = onnx_outputs(tmp_path / "m.onnx", new[:, None].astype(np.float32))
    np.testing.assert_allclose(score, det.score_samples(new), rtol=1e-4)


def test_metadata_names_the_dtype_the_graph_takes(digits):
    det = tiny_detector(value_range=[0, 255]).fit(digits[0])  # a list: 8-bit all the same
    assert scoring_module(det).input_dtype == torch.uint8
    assert metadata(det)["input_dtype"] == "uint8"


def test_export_refuses_what_it_cannot_write(digits, tmp_path):
    with pytest.raises(NotFittedError):
        Con2Detector().export(tmp_path / "m.onnx")
    det = tiny_detector().fit(digits[0])
    with pytest.raises(ValueError, match="format must be one of"):
        det.export(tmp_path / "m.tflite", format="tflite")


ONNX_ONLY = r"""
import sys
class Refuse:  # this process has onnxruntime and numpy only: torch and con2 cannot load
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "con2", "sklearn"):
            raise ImportError(f"{name} is not installed here")
sys.meta_path.insert(0, Refuse())
import numpy as np
import onnxruntime as ort
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit("torch imported")
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
images = np.load(sys.argv[2])
score, decision, label = session.run(["score", "decision", "label"], {"images": images})
np.save(sys.argv[3], score)
print(session.get_modelmeta().custom_metadata_map["con2.threshold"], label.tolist())
"""


def test_an_exported_model_scores_with_onnx_runtime_alone(digits, tmp_path):
    train, new = digits[0], np.concatenate([digits[1][:5], digits[1][-4:]])  # 0s and 1s
    det = tiny_detector(scorer="lh").fit(train)
    det.export(tmp_path / "m.onnx")
    np.save(tmp_path / "images.npy", new[:, None])
    done = subprocess.run(
        [sys.executable, "-c", ONNX_ONLY, str(tmp_path / "m.onnx"), str(tmp_path / "images.npy"),
         str(tmp_path / "scores.npy")], capture_output=True, text=True, check=True,
    )  # fmt: skip
    threshold, labels = done.stdout.split(" ", 1)
    assert float(threshold) == det.offset_
    assert json.loads(labels) == det.predict(new).tolist()
    np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), det.score_samples(new), rtol=1e-4)


def readme_deploy_snippet():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("<!-- deploy-snippet -->")[1]
    return block.split("```python\n")[1].split("```")[0]


def test_the_readme_deployment_snippet_runs_without_torch(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    train = (np.linspace(0, 180, 12)[:, None] + rng.integers(0, 70, (40, 12, 12))).astype(np.uint8)
    det = tiny_detector(context="vflip", scorer="lh").fit(train)
    det.export(tmp_path / "model.onnx")
    paths = []
    for i in range(4):  # files of another size: the snippet resizes them, as con2.io does
        image = (np.linspace(0, 180, 20)[:, None] + rng.integers(0, 70, (20, 20))).astype(np.uint8)
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image if i % 2 else image[::-1]).save(paths[-1])
    script = ONNX_ONLY.split("import numpy as np")[0] + (
        "import os, sys\n"
        f"os.chdir({str(tmp_path)!r})\n"
        f"paths = {paths!r}\n" + readme_deploy_snippet()
        + "\nnp.save('scores.npy', score)\nprint(label.tolist())\n"
    )  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)  # fmt: skip
    np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), det.score_samples(paths),
                               rtol=1e-4)  # fmt: skip
    assert json.loads(done.stdout) == det.predict(paths).tolist()


def test_the_exportable_rewrites_compute_what_they_replace():
    from con2._embedding import _per_image

    t = torch.arange(12.0).view(3, 4)
    for batch in (1, 5):  # (b): expand + flatten instead of repeat_interleave
        torch.testing.assert_close(_per_image(t, batch), t.repeat_interleave(batch, dim=0))
    from con2.scorers import GaussianScorer

    gen = torch.Generator().manual_seed(0)
    train = torch.nn.functional.normalize(torch.randn(2, 80, 6, generator=gen), dim=2)
    test = torch.nn.functional.normalize(torch.randn(2, 9, 6, generator=gen), dim=2)
    scorer = GaussianScorer().fit(train)
    head = scorer.head()  # (a): a stored inverse factor instead of a triangular solve
    solved = torch.zeros(9, dtype=torch.float64)
    for view in range(2):
        diff = (test[view].double() - scorer.mean_[view]).T
        y = torch.linalg.solve_triangular(scorer.cholesky_[view], diff, upper=False)
        logdet = 2 * torch.log(torch.diagonal(scorer.cholesky_[view])).sum()
        solved += -0.5 * ((y**2).sum(0) + logdet + 6 * np.log(2 * np.pi)) / 2
    torch.testing.assert_close(head(test), solved, rtol=1e-13, atol=0)
