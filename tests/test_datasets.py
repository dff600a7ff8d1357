import numpy as np
import pytest
from helpers import write_idx

from con2.datasets import load_digits_images, load_fashion_mnist, read_idx


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_read_idx_round_trips_gzipped_and_plain_files(tmp_path, name):
    array = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    write_idx(tmp_path / name, array)
    np.testing.assert_array_equal(read_idx(tmp_path / name), array)


def test_read_idx_reads_big_endian_floats(tmp_path):
    array = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)
    write_idx(tmp_path / "x.idx", array, code=0x0D)
    out = read_idx(tmp_path / "x.idx")
    assert out.dtype == np.float32 and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_read_idx_refuses_truncated_and_foreign_files(tmp_path):
    write_idx(tmp_path / "x.idx", np.zeros((4, 2), dtype=np.uint8))
    data = (tmp_path / "x.idx").read_bytes()
    (tmp_path / "short.idx").write_bytes(data[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short.idx")
    (tmp_path / "text.idx").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "text.idx")


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


def test_fashion_mnist_from_a_folder_of_idx_files(tmp_path):
    rng = np.random.default_rng(1)
    for prefix, n in (("train", 6), ("t10k", 4)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz",
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))  # fmt: skip
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
    X_train, y_train, X_test, y_test = load_fashion_mnist(tmp_path)
    assert X_train.shape == (6, 28, 28) and X_test.shape == (4, 28, 28)
    assert y_train.shape == (6,) and y_test.shape == (4,)


def test_digits_as_uint8_images():
    X, y = load_digits_images()
    assert X.shape == (1797, 8, 8) and X.dtype == np.uint8 and X.max() == 255
    assert set(np.unique(y)) == set(range(10))
