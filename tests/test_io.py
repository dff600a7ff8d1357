"""Image files as input: listing, every format and mode, bit depth, channels, size, errors."""

import os
import warnings

import numpy as np
import pytest
import torch
from helpers import gradient, tiny_detector, write
from PIL import Image
from sklearn.model_selection import GridSearchCV

from con2 import check_context, io
from con2._input import TrainingIndex


def gray_folder(root, n=24, size=16):
    """``n`` grayscale PNGs in two subfolders; returns the folder and the images."""
    images = np.stack([gradient(size, seed=i) for i in range(n)])
    for i, image in enumerate(images):
        write(root / f"part{i % 2}" / f"img{i:03d}.png", image)
    return root, images


# -- listing -------------------------------------------------------------------------------


def test_list_images_walks_the_folder_in_sorted_relative_path_order(tmp_path):
    for name in ("b/2.png", "a/z.JPG", "a/b/1.tif", "c.webp", "d.bmp", "e.jpeg", "f.tiff"):
        write(tmp_path / name, gradient(8, colour=True))
    (tmp_path / "notes.txt").write_text("not an image")
    write(tmp_path / ".hidden.png", gradient(8))
    write(tmp_path / ".cache" / "x.png", gradient(8))
    found = [os.path.relpath(p, tmp_path) for p in io.list_images(tmp_path)]
    assert found == ["a/b/1.tif", "a/z.JPG", "b/2.png", "c.webp", "d.bmp", "e.jpeg", "f.tiff"]
    assert io.list_images(str(tmp_path)) == io.list_images(tmp_path)


def test_a_list_of_paths_keeps_its_order(tmp_path):
    paths = [write(tmp_path / f"{i}.png", gradient(8, seed=i)) for i in range(3)]
    assert io.list_images(paths[::-1]) == paths[::-1]
    assert io.is_file_input(np.array(paths)) and io.is_file_input(tmp_path)
    assert not io.is_file_input(np.zeros((3, 8, 8))) and not io.is_file_input([])


# -- formats and modes ---------------------------------------------------------------------

# (format suffix, how to make the Pillow image from a gradient, expected kind)
LOSSLESS = [
    (".png", "L"), (".png", "1"), (".png", "I;16"), (".png", "P"), (".png", "RGB"),
    (".png", "RGBA"), (".bmp", "L"), (".bmp", "RGB"), (".bmp", "1"), (".bmp", "P"),
    (".tif", "L"), (".tif", "I;16"), (".tif", "RGB"), (".tif", "RGBA"), (".tif", "CMYK"),
    (".tif", "1"), (".tif", "P"), (".webp", "RGB"), (".webp", "RGBA"),
]  # fmt: skip


def pillow_image(mode):
    rgb = gradient(16, colour=True)
    if mode == "I;16":
        return Image.fromarray(gradient(16).astype(np.uint16) * 257)
    if mode == "RGBA":
        return Image.fromarray(np.dstack([rgb, np.full((16, 16), 128, np.uint8)]))
    return Image.fromarray(rgb).convert(mode)


def expected_pixels(mode):
    """What con2.io documents that a mode becomes, computed with Pillow directly."""
    image = pillow_image(mode)
    if mode in ("1", "L"):
        return np.asarray(image.convert("L"))[None], "gray8"
    if mode == "I;16":
        values = np.asarray(image).astype(np.float64) / 65535
        return values.astype(np.float32)[None], "gray16"
    return np.asarray(image.convert("RGB")).transpose(2, 0, 1), "colour"


@pytest.mark.parametrize(("suffix", "mode"), LOSSLESS)
def test_each_lossless_format_and_mode_decodes_as_documented(tmp_path, suffix, mode):
    path = tmp_path / f"image{suffix}"
    save = {"lossless": True} if suffix == ".webp" else {}
    pillow_image(mode).save(path, **save)
    expected, kind = expected_pixels(mode)
    [info] = io.inspect_files([str(path)])
    assert info.kind == kind and info.size == (16, 16)
    dtype = io.cache_dtype([info], None)
    decoded = io.decode(path, expected.shape, dtype)
    assert decoded.dtype == (np.float32 if kind == "gray16" else np.uint8)
    np.testing.assert_array_equal(decoded, expected)


def test_jpeg_decodes_close_to_its_source_in_gray_rgb_and_cmyk(tmp_path):
    rgb = gradient(16, colour=True)
    for mode in ("L", "RGB", "CMYK"):
        path = tmp_path / f"{mode}.jpg"
        Image.fromarray(rgb).convert(mode).save(path, quality=95)
        expected = np.asarray(Image.open(path).convert("L" if mode == "L" else "RGB"))
        channels = 1 if mode == "L" else 3
        decoded = io.decode(path, (channels, 16, 16), np.uint8)
        np.testing.assert_array_equal(decoded, expected.reshape(16, 16, -1).transpose(2, 0, 1))


def test_a_32_bit_integer_file_outside_16_bits_and_float_files_are_refused(tmp_path):
    big = tmp_path / "big.tif"
    Image.fromarray(np.full((8, 8), 70000, np.int32)).save(big)
    with pytest.raises(io.ImageFileError, match=r"big\.tif.*exceed 16 bits"):
        io.decode(big, (1, 8, 8), np.float32)
    floats = tmp_path / "float.tif"
    Image.fromarray(np.zeros((8, 8), np.float32)).save(floats)
    with pytest.raises(io.ImageFileError, match=r"float\.tif.*mode 'F' is not supported"):
        io.inspect_files([str(floats)])


def test_exif_orientation_is_applied(tmp_path):
    image = Image.fromarray(gradient(16)[:, :8])  # 8 wide, 16 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=100)
    [info] = io.inspect_files([str(path)])
    assert info.size == (16, 8)  # as displayed: 16 wide, 8 high
    assert io.decode(path, (1, 8, 16), np.uint8).shape == (1, 8, 16)


# -- bit depth, channels, size: parity with arrays -----------------------------------------


def test_fitting_on_8_bit_files_equals_fitting_on_the_array(tmp_path):
    folder, images = gray_folder(tmp_path)
    paths = io.list_images(folder)
    order = [int(os.path.basename(p)[3:6]) for p in paths]
    from_files = tiny_detector().fit(folder)
    from_array = tiny_detector().fit(images[order])
    np.testing.assert_array_equal(
        from_files.score_samples(paths), from_array.score_samples(images[order])
    )
    assert from_files.image_shape_ == (1, 16, 16) and from_files.n_samples_fit_ == 24


def test_fitting_on_16_bit_files_equals_the_array_with_value_range(tmp_path):
    rng = np.random.default_rng(0)
    images = (np.stack([gradient(16, seed=i) for i in range(20)]).astype(np.uint16) * 250
              + rng.integers(0, 250, (20, 16, 16)).astype(np.uint16))  # fmt: skip
    paths = [write(tmp_path / f"{i:02d}.tif", image) for i, image in enumerate(images)]
    assert Image.open(paths[0]).mode == "I;16"
    from_files = tiny_detector(scorer="lh").fit(tmp_path)
    from_array = tiny_detector(scorer="lh", value_range=(0, 65535)).fit(images)
    new = images[:5] // 2 + 1000
    new_paths = [write(tmp_path / "new" / f"{i}.tif", x) for i, x in enumerate(new)]
    np.testing.assert_array_equal(from_files.score_samples(new_paths),
                                  from_array.score_samples(new))  # fmt: skip
    # value_range applies to the files' values as it does to arrays'
    ranged = tiny_detector(scorer="lh", value_range=(0, 64000)).fit(paths)
    np.testing.assert_array_equal(
        ranged.score_samples(new_paths),
        tiny_detector(scorer="lh", value_range=(0, 64000)).fit(images).score_samples(new),
    )


def test_channels_follow_the_training_files(tmp_path):
    gray = [write(tmp_path / "gray" / f"{i}.png", gradient(16, seed=i)) for i in range(12)]
    colour = [write(tmp_path / "colour" / f"{i}.png", gradient(16, True, i)) for i in range(12)]
    assert tiny_detector().fit(gray).image_shape_ == (1, 16, 16)
    mixed = tiny_detector().fit(gray[:6] + colour[:6])  # any colour file: 3 channels
    assert mixed.image_shape_ == (3, 16, 16)
    scores = mixed.score_samples(gray[6:])  # grayscale files are expanded
    expanded = np.repeat(np.stack([gradient(16, seed=i) for i in range(6, 12)])[:, None], 3, 1)
    np.testing.assert_array_equal(scores, mixed.score_samples(expanded))
    gray_model = tiny_detector().fit(gray)
    with pytest.raises(io.ImageFileError, match=r"colour/0\.png: a colour file.*grayscale"):
        gray_model.score_samples(colour[:2])
    equal = write(tmp_path / "equal.png", np.repeat(gradient(16)[..., None], 3, axis=2))
    assert Image.open(equal).mode == "RGB"
    np.testing.assert_array_equal(gray_model.score_samples([equal]),
                                  gray_model.score_samples(gradient(16)[None]))  # fmt: skip
    with pytest.raises(io.ImageFileError, match="colour file"):
        tiny_detector(image_shape=(1, 16, 16)).fit(colour)  # never dropped silently


def test_image_shape_resizes_whole_files_and_scoring_resizes_the_same_way(tmp_path):
    sizes = [(16, 16), (20, 12), (32, 24)]
    paths = [write(tmp_path / f"{i:02d}.png", np.asarray(Image.fromarray(gradient(32, seed=i))
                   .resize(sizes[i % 3]))) for i in range(15)]  # fmt: skip
    with pytest.raises(ValueError, match=r"differ in size: .*00\.png is 16x16 and .*01\.png "
                       r"is 20x12.*image_shape"):  # fmt: skip
        tiny_detector().fit(tmp_path)
    det = tiny_detector(image_shape=(1, 12, 10)).fit(tmp_path)
    assert det.image_shape_ == (1, 12, 10)
    resized = np.stack([np.asarray(Image.open(p).resize((10, 12), Image.Resampling.BILINEAR))
                        for p in paths])  # the whole image, no crop  # fmt: skip
    np.testing.assert_array_equal(det.score_samples(paths), det.score_samples(resized))
    big = write(tmp_path / "new" / "big.png", gradient(64))
    assert det.score_samples([big]).shape == (1,)  # any size is brought to (12, 10)
    assert tiny_detector(image_shape=(12, 10)).fit(tmp_path).image_shape_ == (1, 12, 10)


def test_a_list_of_paths_splits_like_any_x_in_a_grid_search(tmp_path):
    folder, _ = gray_folder(tmp_path / "normal", n=20)
    anomalies = [write(tmp_path / "odd" / f"{i}.png", gradient(16, seed=i)[::-1])
                 for i in range(6)]  # fmt: skip
    paths = np.array(io.list_images(folder) + anomalies)
    y = np.r_[np.ones(20), -np.ones(6)]
    split = [(np.arange(14), np.arange(14, 26))]
    search = GridSearchCV(tiny_detector(), {"scorer": ["nnd", "lh"]}, scoring="roc_auc",
                          cv=split, error_score="raise").fit(paths, y)  # fmt: skip
    scores = search.cv_results_["mean_test_score"]
    assert scores.shape == (2,) and (scores > 0.9).all()  # flipped gradients stand out (1.0)


def test_check_context_reads_a_folder(tmp_path):
    folder, images = gray_folder(tmp_path)
    from_files = check_context(folder, "vflip", max_samples=10)
    order = [int(os.path.basename(p)[3:6]) for p in io.list_images(folder)]
    from_array = check_context(images[order], "vflip", max_samples=10)
    assert from_files.distinctiveness == from_array.distinctiveness
    assert from_files.alignment == from_array.alignment and from_files.n_samples == 10


# -- bad files ----------------------------------------------------------------------------


def bad_inputs(tmp_path):
    """Each bad input and the error it must get, naming the path."""
    good = [write(tmp_path / "good" / f"{i}.png", gradient(16, seed=i)) for i in range(8)]
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    data = open(good[0], "rb").read()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    fake = tmp_path / "fake.jpg"
    fake.write_text("not a jpeg")
    return [
        (str(tmp_path / "missing"), FileNotFoundError, r"missing: no such file or folder"),
        (str(tmp_path / "empty"), ValueError, r"empty: the folder is empty"),
        (str(tmp_path / "texts"), ValueError, r"texts: the folder holds no image files"),
        ([*good, str(truncated)], ValueError, r"truncated\.png: unreadable \(image file is trunc"),
        ([*good, str(fake)], ValueError, r"fake\.jpg: not an image file Pillow can read"),
    ]


def test_bad_files_get_one_sentence_errors_naming_them_before_training(tmp_path, monkeypatch):
    import con2._engine

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(con2._engine, "fit_encoder", no_training)
    for X, error, message in bad_inputs(tmp_path):
        with pytest.raises(error, match=message) as caught:
            tiny_detector().fit(X)
        assert "\n" not in str(caught.value)


def test_bad_files_at_scoring_are_named_too(tmp_path):
    det = tiny_detector().fit(gray_folder(tmp_path / "train")[0])
    for X, error, message in bad_inputs(tmp_path):
        with pytest.raises(error, match=message):
            det.score_samples(X)


# -- decoding in parallel, the cache, data on disk -----------------------------------------


def test_parallel_decoding_equals_decoding_here(tmp_path, monkeypatch):
    paths = [write(tmp_path / f"{i:03d}.png", gradient(16, True, i)) for i in range(80)]
    here = io.decode_files(paths, (3, 16, 16), np.uint8, n_jobs=1)
    parallel = io.decode_files(paths, (3, 16, 16), np.uint8, n_jobs=2)
    np.testing.assert_array_equal(here, parallel)
    with io.decode_cache(paths, (3, 16, 16), np.uint8, None, tmp_path, n_jobs=2) as cache:
        assert isinstance(cache, np.memmap) and not cache.flags.writeable
        np.testing.assert_array_equal(np.asarray(cache), here)
        folder = os.path.dirname(cache.filename)
    assert not os.path.exists(folder)  # removed on leaving the block


def test_a_parallel_worker_names_the_bad_file(tmp_path):
    paths = [write(tmp_path / f"{i:03d}.png", gradient(16, seed=i)) for i in range(70)]
    open(paths[66], "wb").write(b"broken")
    with pytest.raises(io.ImageFileError, match=r"066\.png: not an image file"):
        io.decode_files(paths, (1, 16, 16), np.uint8, n_jobs=2)


def test_the_decode_cache_goes_to_cache_dir_and_is_removed_after_fit(tmp_path, monkeypatch):
    folder, _ = gray_folder(tmp_path / "images")
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    seen = []
    real = io.decode_cache

    def spy(*args, **kwargs):
        with real(*args, **kwargs) as cache:
            seen.append(cache.filename)
            yield cache

    import contextlib

    monkeypatch.setattr(io, "decode_cache", contextlib.contextmanager(spy))
    tiny_detector(cache_dir=str(cache_dir)).fit(folder)
    assert seen and str(seen[0]).startswith(str(cache_dir)) and os.listdir(cache_dir) == []


def test_a_memmap_is_trained_on_in_place(tmp_path, monkeypatch):
    images = np.stack([gradient(16, seed=i) for i in range(40)])[:, None]
    np.save(tmp_path / "x.npy", images)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    import con2._engine

    planned = []
    real = con2._engine.fit_encoder

    def spy(encoder, plan, *args):
        planned.append(plan.images)
        return real(encoder, plan, *args)

    monkeypatch.setattr(con2._engine, "fit_encoder", spy)
    det = tiny_detector(scorer="lh").fit(mapped)
    start = mapped.ctypes.data
    pointer = planned[0].data_ptr()
    assert start <= pointer < start + mapped.nbytes  # the training loop reads the file
    in_memory = tiny_detector(scorer="lh").fit(images)
    np.testing.assert_array_equal(det.score_samples(mapped), in_memory.score_samples(images))
    # channels-last memmaps are read through strides, not copied either
    np.save(tmp_path / "hwc.npy", np.ascontiguousarray(images.transpose(0, 2, 3, 1)))
    hwc = np.load(tmp_path / "hwc.npy", mmap_mode="r")
    planned.clear()
    tiny_detector(scorer="lh", image_shape=(1, 16, 16)).fit(hwc)
    assert hwc.ctypes.data <= planned[0].data_ptr() < hwc.ctypes.data + hwc.nbytes


@pytest.mark.parametrize(("dtype", "value_range", "copied"), [
    (np.float64, None, True), (np.uint16, (0, 255), True), (np.float32, None, False),
    (np.uint8, (0, 255), False),
])  # fmt: skip
def test_a_memmap_converted_in_memory_says_so(tmp_path, monkeypatch, dtype, value_range, copied):
    images = np.stack([gradient(16, seed=i) for i in range(40)])[:, None]
    scale = 255 if np.dtype(dtype).kind == "f" else 1
    np.save(tmp_path / "x.npy", (images / scale).astype(dtype))
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    import con2._engine

    flags, real = [], con2._engine._fit_images
    monkeypatch.setattr(con2._engine, "_fit_images",
                        lambda *args: flags.append(args[3]) or real(*args))  # fmt: skip
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        tiny_detector(value_range=value_range).fit(mapped)
    said = [w for w in record if "memory-mapped file" in str(w.message)]
    assert len(said) == copied and flags == [not copied]  # embeddings spill only for files


def test_training_index_and_scores_agree_for_files_and_arrays(tmp_path):
    folder, _ = gray_folder(tmp_path)
    det = tiny_detector().fit(folder)
    paths = io.list_images(folder)
    # training files are recognised (and scored leave-one-out) by their decoded pixels
    decoded = torch.from_numpy(io.decode_files(paths, (1, 16, 16), np.uint8))
    index = det._train_index.lookup(decoded)
    assert index.tolist() == list(range(24))
    assert isinstance(det._train_index, TrainingIndex)
    np.testing.assert_array_equal(det.fit_predict(folder), det.predict(folder))
