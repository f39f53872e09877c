"""Data that parses but does not fit (issue 14, class 4): hostile files written here, each
refused when the data are read, before a model is built, with one line naming the file (or
the data set) and the problem; a damaged dSprites cache is rendered again, never raised."""

import gzip
import logging
import os
import pickle
import re
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY, write_mnist_like
from vae_train.build import load_image_data
from vae_train.data import DataSet, ImageData, dsprites
from vae_train.data.cifar import TEST_BATCHES, TRAIN_BATCHES, write_cifar100, write_cifar_batch
from vae_train.data.idx import read_idx, write_idx
from vae_train.errors import UserError


def mnist_cfg(root):
    return OmegaConf.create({"_target_": "vae_train.data.torchvision_sets.MNIST", "name": "mnist",
                             "root": str(root), "download": False})


def cifar_cfg(root, target="CIFAR10", **kw):
    return OmegaConf.create({"_target_": f"vae_train.data.torchvision_sets.{target}",
                             "name": target.lower(), "root": str(root), "download": False,
                             **kw})


def refused(cfg, *needles):
    """The one-line message loading ``cfg`` is refused with; it contains every needle."""
    with pytest.raises(UserError) as e:
        load_image_data(cfg)
    text = str(e.value)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"
    return text


# -- IDX (MNIST, Fashion-MNIST, KMNIST) ---------------------------------------------------------
@pytest.fixture
def raw(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    write_mnist_like(folder, 30, 10)
    return folder


@pytest.mark.parametrize("label", [10, 255])
def test_an_idx_label_outside_the_ten_classes_is_refused_naming_the_label_file(raw, label):
    labels = np.zeros(10, np.uint8)
    labels[7] = label
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", labels)
    refused(mnist_cfg(raw.parent.parent), f"IDX file {raw}/t10k-labels-idx1-ubyte.gz",
            "1 labels outside 0..9", f"the first: {label}, at position 7")


def test_idx_test_images_of_another_size_are_refused_naming_both_files(raw):
    write_idx(raw / "t10k-images-idx3-ubyte.gz", np.zeros((10, 32, 32), np.uint8))
    refused(mnist_cfg(raw.parent.parent), f"{raw}/t10k-images-idx3-ubyte.gz are 32x32",
            f"{raw}/train-images-idx3-ubyte.gz are 28x28")


@pytest.mark.parametrize("shape", [(30, 0, 28), (30, 28, 0), (0, 28, 28)])
def test_idx_images_of_zero_size_or_an_empty_split_are_refused(raw, shape):
    write_idx(raw / "train-images-idx3-ubyte.gz", np.zeros(shape, np.uint8))
    write_idx(raw / "train-labels-idx1-ubyte.gz", np.zeros(shape[0], np.uint8))
    refused(mnist_cfg(raw.parent.parent), f"IDX file {raw}/train-images-idx3-ubyte.gz holds "
            f"{shape[0]} images of {shape[1]}x{shape[2]} pixels")


def test_idx_images_and_labels_of_different_counts_name_both_files(raw):
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.zeros(11, np.uint8))
    refused(mnist_cfg(raw.parent.parent), f"10 images in {raw}/t10k-images-idx3-ubyte.gz",
            f"11 labels in {raw}/t10k-labels-idx1-ubyte.gz")


def _header(*dims):
    return bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


@pytest.mark.parametrize("dims", [(2**31, 2**31, 4), (10**9, 10**9, 28), (2**32 - 1,) * 3])
def test_an_idx_header_claiming_a_huge_array_is_refused_without_allocating(tmp_path, dims):
    # 2^31 * 2^31 * 4 = 2^64 wraps to 0 in int64: the old byte count then matched an empty file
    plain, packed = tmp_path / "images-idx3-ubyte", tmp_path / "images-idx3-ubyte.gz"
    plain.write_bytes(_header(*dims) + bytes(100))
    packed.write_bytes(gzip.compress(_header(*dims) + bytes(100)))
    shape, count = "x".join(map(str, dims)), dims[0] * dims[1] * dims[2]
    with pytest.raises(UserError, match=re.escape(f"IDX file {plain} holds 100 data bytes but "
                                                  f"its header {shape} needs {count:,}")):
        read_idx(plain, expect_dims=3)
    with pytest.raises(UserError, match=re.escape(f"IDX file {packed}: its header claims "
                                                  f"{shape}") + ".* more than the .* GB of memory"):
        read_idx(packed, expect_dims=3)


def test_a_damaged_idx_stream_or_trailing_bytes_are_one_line(tmp_path):
    good = gzip.compress(_header(4, 3) + bytes(range(12)))
    damaged = tmp_path / "d-idx2-ubyte.gz"
    damaged.write_bytes(good[:20] + bytes(b ^ 0xFF for b in good[20:-8]) + good[-8:])
    with pytest.raises(UserError, match=f"cannot read IDX file {damaged}"):
        read_idx(damaged)
    longer = tmp_path / "l-idx2-ubyte.gz"
    longer.write_bytes(gzip.compress(_header(4, 3) + bytes(13)))
    with pytest.raises(UserError, match="holds more than 12 data bytes but its header 4x3"):
        read_idx(longer)
    short = tmp_path / "s-idx2-ubyte.gz"
    short.write_bytes(gzip.compress(_header(4, 3) + bytes(11)))
    with pytest.raises(UserError, match="holds 11 data bytes but its header 4x3 needs 12"):
        read_idx(short)
    intact = tmp_path / "ok-idx2-ubyte.gz"
    intact.write_bytes(good)
    assert read_idx(intact).tolist() == np.arange(12).reshape(4, 3).tolist()


# -- CIFAR pickles ------------------------------------------------------------------------------
def _cifar10(tmp_path, name, content):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for batch in TRAIN_BATCHES + TEST_BATCHES:
        write_cifar_batch(folder / batch, np.zeros((4, 3, 32, 32), np.uint8), [0, 1, 2, 3])
    if isinstance(content, bytes):
        (folder / name).write_bytes(content)
    else:
        with open(folder / name, "wb") as f:
            pickle.dump(content, f)
    return folder / name


ROWS = np.zeros((4, 3072), np.uint8)
# A pickle that calls one of the allowed functions with arguments it refuses (LookupError).
BAD_CODEC = (b"\x80\x02c_codecs\nencode\nq\x00X\x01\x00\x00\x00xX\x0b\x00\x00\x00nonexistent"
             b"q\x01\x86R.")
CIFAR_CASES = {
    "pixels 300": ({b"data": np.full((4, 3072), 300, np.int64), b"labels": [0] * 4},
                   "has pixel values from 300 to 300 (int64), outside 0..255"),
    "pixels -1": ({b"data": np.full((4, 3072), -1, np.int64), b"labels": [0] * 4},
                  "has pixel values from -1 to -1 (int64), outside 0..255"),
    "float pixels": ({b"data": np.full((4, 3072), 0.5), b"labels": [0] * 4},
                     "has pixels of type float64; expected bytes"),
    "short rows": ({b"data": np.zeros((4, 3000), np.uint8), b"labels": [0] * 4},
                   "has data of shape (4, 3000)"),
    "label 10": ({b"data": ROWS, b"labels": [0, 10, 2, 3]},
                 "1 labels outside 0..9 (the first: 10 at index 1)"),
    "label -1": ({b"data": ROWS, b"labels": [0, -1, 2, 3]},
                 "1 labels outside 0..9 (the first: -1 at index 1)"),
    "string labels": ({b"data": ROWS, b"labels": ["a", "b", "c", "d"]},
                      "has labels of type <U1; expected integers"),
    "ragged labels": ({b"data": ROWS, b"labels": [1, [2, 3], 2, 3]},
                      "its 'labels' entry is not a regular array"),
    "ragged data": ({b"data": [[1, 2], [3]], b"labels": [1, 2]},
                    "its 'data' entry is not a regular array"),
    "fewer labels": ({b"data": ROWS, b"labels": [0, 1, 2]}, "and labels of shape (3,)"),
    "no images": ({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, "holds no images"),
    "not a dict": ([1, 2, 3], "it holds a list, not a dict"),
    "no data key": ({b"labels": [0] * 4}, "has no 'data' entry"),
    "bad codec call": (BAD_CODEC, "LookupError"),
    "garbage": (os.urandom(64), "cannot read CIFAR-10 file"),
}


@pytest.mark.parametrize("case", list(CIFAR_CASES))
@pytest.mark.parametrize("batch", ["data_batch_3", "test_batch"])
def test_a_cifar_batch_that_does_not_fit_is_refused_naming_the_file(tmp_path, case, batch):
    content, needle = CIFAR_CASES[case]
    path = _cifar10(tmp_path, batch, content)
    refused(cifar_cfg(tmp_path), str(path), needle)


def test_a_cifar100_fine_label_of_100_is_refused_naming_the_file(tmp_path):
    images = np.zeros((3, 3, 32, 32), np.uint8)
    write_cifar100(tmp_path / "cifar-100-python", (images, [0, 100, 5], [0, 1, 2]),
                   (images, [1, 2, 3], [0, 1, 2]))
    refused(cifar_cfg(tmp_path, "CIFAR100"), str(tmp_path / "cifar-100-python" / "train"),
            "1 fine_labels outside 0..99 (the first: 100 at index 1)")
    data = load_image_data(cifar_cfg(tmp_path, "CIFAR100", labels="coarse"))
    assert data.train_y.tolist() == [0, 1, 2] and data.num_classes == 20


# -- any data set: the check every ImageData passes in DataSet.load ----------------------------
def _images(n, side=6, dtype=torch.uint8):
    return torch.zeros(n, 1, side, side, dtype=dtype)


def good_parts():
    return dict(name="mine", train_x=_images(8), train_y=torch.tensor([0, 1] * 4),
                test_x=_images(4), test_y=torch.tensor([1, 0] * 2), classes=["a", "b"])


class Mine(DataSet):
    """A user's own data set returning whatever a test hands it."""

    def __init__(self, parts=None, **common):
        super().__init__(**common)
        self.parts = parts

    def read(self):
        return self.parts if not isinstance(self.parts, dict) else ImageData(**self.parts)


def load_mine(**changes):
    parts = {**good_parts(), **changes}
    return Mine(parts, name="mine").load()


BAD_DATA = {
    "label 2 of 2 classes": (dict(train_y=torch.tensor([0, 1, 2, 1, 0, 1, 0, 1])),
                             "1 train labels are outside 0..1 for its 2 classes (the first: 2, "
                             "example 2)"),
    "negative label": (dict(test_y=torch.tensor([0, -3, 1, 0])),
                       "1 test labels are outside 0..1 for its 2 classes (the first: -3, "
                       "example 1)"),
    "float labels": (dict(train_y=torch.zeros(8)), "the train labels are torch.float32; labels "
                                                   "must be integers"),
    "fewer labels": (dict(train_y=torch.zeros(7, dtype=torch.long)),
                     "(7,) train labels for 8 examples"),
    "more test labels": (dict(test_y=torch.zeros(5, dtype=torch.long)),
                         "(5,) test labels for 4 examples"),
    "test of another size": (dict(test_x=_images(4, 7)),
                             "the test examples are 1x7x7 but the training examples 1x6x6"),
    "test of another type": (dict(test_x=_images(4, dtype=torch.float32)),
                             "the test examples are torch.float32 but the training examples "
                             "torch.uint8"),
    "empty training split": (dict(train_x=_images(0), train_y=torch.zeros(0, dtype=torch.long)),
                             "the train split has no examples"),
    "empty test split": (dict(test_x=_images(0), test_y=torch.zeros(0, dtype=torch.long)),
                         "the test split has no examples"),
    "zero-size images": (dict(train_x=torch.zeros(8, 1, 0, 6, dtype=torch.uint8),
                              test_x=torch.zeros(4, 1, 0, 6, dtype=torch.uint8)),
                         "the train examples are of zero size, 1x0x6"),
    "three dimensions": (dict(train_x=torch.zeros(8, 6, 6, dtype=torch.uint8)),
                         "the train examples have shape (8, 6, 6)"),
    "integer examples": (dict(train_x=_images(8, dtype=torch.int64),
                              test_x=_images(4, dtype=torch.int64)),
                         "the train examples are torch.int64; expected uint8"),
    "multi-hot not 0/1": (dict(train_y=torch.tensor([[0, 1]] * 7 + [[2, 0]]),
                               test_y=torch.tensor([[1, 0]] * 4)),
                          "the train labels hold 1 values that are not 0 or 1 (the first in "
                          "example 7)"),
    "multi-hot columns": (dict(train_y=torch.zeros(8, 3, dtype=torch.long),
                               test_y=torch.zeros(4, 3, dtype=torch.long)),
                          "have 3 attribute columns but the set names 2 classes"),
    "labels without classes": (dict(classes=[]),
                               "the train labels run from 0 to 1 but the set names no classes"),
    "floats outside [0, 1]": (dict(train_x=torch.full((8, 1, 6, 6), 3.0), test_x=_images(
        4, dtype=torch.float32)), "float examples without values= (unit), but the train "
                                  "examples run from 3 to 3, outside [0, 1]"),
    "NaN": (dict(train_x=torch.full((8, 1, 6, 6), float("nan")), test_x=_images(
        4, dtype=torch.float32), values="real"), "the train examples hold 288 NaN or infinite"),
    "binary not 0/255": (dict(test_x=torch.full((4, 1, 6, 6), 7, dtype=torch.uint8),
                              values="binary"),
                         "values=binary but the test examples hold values other than 0 and 255"),
    "8bit floats": (dict(train_x=_images(8, dtype=torch.float32),
                         test_x=_images(4, dtype=torch.float32), values="8bit"),
                    "values=8bit but the examples are torch.float32"),
    "unknown values": (dict(values="decibel"), "values='decibel' is not known"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_a_data_set_of_ones_own_that_does_not_fit_is_refused_at_load(case):
    changes, needle = BAD_DATA[case]
    with pytest.raises(UserError) as e:
        load_mine(**changes)
    text = str(e.value)
    assert text.startswith("dataset mine (test_data_validation.Mine): "), text
    assert needle in text and "\n" not in text, text


def test_read_returning_something_else_is_one_line():
    with pytest.raises(UserError, match=r"read\(\) returned a tuple, not an ImageData"):
        Mine((1, 2), name="mine").load()


def test_data_that_fit_pass_and_labels_of_another_integer_type_become_int64():
    data = load_mine(train_y=torch.tensor([0, 1] * 4, dtype=torch.uint8))
    assert data.train_y.dtype == torch.int64 and data.train_y.tolist() == [0, 1] * 4
    # unlabelled (no classes, every label 0), multi-hot attributes, unit and real floats
    assert load_mine(classes=[], train_y=torch.zeros(8, dtype=torch.long),
                     test_y=torch.zeros(4, dtype=torch.long)).num_classes == 0
    hot = load_mine(train_y=torch.tensor([[0, 1], [1, 1]] * 4),
                    test_y=torch.eye(2).long().repeat(2, 1))
    assert hot.train_y.shape == (8, 2)
    floats = dict(train_x=torch.rand(8, 1, 6, 6), test_x=torch.rand(4, 1, 6, 6))
    assert load_mine(**floats).value_kind == "unit"
    real = {k: v * 9 - 3 for k, v in floats.items()}
    assert load_mine(**real, values="real").value_kind == "real"
    # train_size still takes the first examples, after the whole set is checked
    assert len(Mine(good_parts(), name="mine", train_size=3).load().train_x) == 3


# -- through the command line: refused before a model is built ----------------------------------
def test_training_on_idx_labels_out_of_range_stops_before_the_model_is_built(
        tmp_path, monkeypatch, capfd, restore_logging):
    from vae_train import build
    from vae_train.train import main

    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    write_mnist_like(raw, 30, 10)
    write_idx(raw / "train-labels-idx1-ubyte.gz", np.full(30, 12, np.uint8))

    built = []
    real = build.instantiate_node
    monkeypatch.setattr(build, "instantiate_node",
                        lambda node, group, *a, **k: built.append(group) or real(node, group,
                                                                                *a, **k))
    monkeypatch.chdir(tmp_path)
    base = [a for a in TINY if not a.startswith("dataset")]
    monkeypatch.setattr(sys, "argv", ["vae_train", *base, "dataset=fashion_mnist",
                                      f"dataset.root={tmp_path / 'data'}", "trainer.epochs=1",
                                      f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as exit_:
        main()
    out, err = capfd.readouterr()
    assert exit_.value.code not in (0, None)
    assert "Traceback" not in out + err, out + err
    line = [ln for ln in (out + err).splitlines() if "labels outside 0..9" in ln]
    assert line and f"{raw}/train-labels-idx1-ubyte.gz" in line[0], out + err
    assert built == ["dataset"]                  # refused before the model was built
    assert not list(tmp_path.glob("run/checkpoints/*.pt"))


# -- the dSprites cache --------------------------------------------------------------------------
N = 16


@pytest.fixture
def small_grid(monkeypatch):
    """A 16-image "grid" and a renderer that returns it at once (the real one takes seconds)."""
    packed = np.random.default_rng(0).integers(0, 256, (N, 64, 8)).astype(np.uint8)
    calls = []
    monkeypatch.setattr(dsprites, "NUM_IMAGES", N)
    monkeypatch.setattr(dsprites, "render_grid", lambda *a, **k: calls.append(1) or packed)
    return packed, calls


def _npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _huge_header(path):
    import io
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        head = io.BytesIO()
        np.lib.format.write_array_header_1_0(head, {"descr": "|u1", "fortran_order": False,
                                                    "shape": (10**12, 64, 8)})
        z.writestr("images.npy", head.getvalue() + bytes(100))
        for name, value in (("version", np.int64(1)), ("factor_sizes",
                                                        np.asarray(dsprites.FACTOR_SIZES))):
            b = io.BytesIO()
            np.save(b, value)
            z.writestr(f"{name}.npy", b.getvalue())


SIZES = np.asarray(dsprites.FACTOR_SIZES)
DAMAGED = {
    "empty": (lambda p, g: p.write_bytes(b""), "unreadable"),
    "garbage": (lambda p, g: p.write_bytes(os.urandom(4000)), "unreadable"),
    "truncated": (lambda p, g: (dsprites._write_cache(p, g),
                                p.write_bytes(p.read_bytes()[:3000])), "unreadable"),
    "flipped bytes": (lambda p, g: (dsprites._write_cache(p, g), p.write_bytes(
        (lambda b: b[:300] + bytes(x ^ 0xFF for x in b[300:400]) + b[400:])(p.read_bytes()))),
        "unreadable"),
    "an npy, not an npz": (lambda p, g: np.save(open(p, "wb"), g), "unreadable"),
    "int16 images": (lambda p, g: _npz(p, images=g.astype(np.int16), version=np.int64(1),
                                       factor_sizes=SIZES), "of another size"),
    "too few images": (lambda p, g: _npz(p, images=g[:5], version=np.int64(1),
                                         factor_sizes=SIZES), "of another size"),
    "version an array": (lambda p, g: _npz(p, images=g, version=np.arange(3),
                                           factor_sizes=SIZES), "of another layout"),
    "sizes a scalar": (lambda p, g: _npz(p, images=g, version=np.int64(1),
                                         factor_sizes=np.int64(3)), "of another layout"),
    "older version": (lambda p, g: _npz(p, images=g, version=np.int64(0),
                                        factor_sizes=SIZES), "another version"),
    "pickled objects": (lambda p, g: _npz(p, images=np.array([None], dtype=object),
                                          version=np.int64(1), factor_sizes=SIZES),
                        "of another layout"),
    "a huge header": (lambda p, g: _huge_header(p), "of another size"),
    "an empty folder": (lambda p, g: p.mkdir(), "was an empty folder"),
    "a dangling link": (lambda p, g: p.symlink_to(p.parent / "gone"), "was not a file"),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_a_damaged_dsprites_cache_is_rendered_again_and_replaced(tmp_path, small_grid, caplog,
                                                                 case):
    packed, calls = small_grid
    damage, needle = DAMAGED[case]
    path = dsprites.cache_path(tmp_path)
    path.parent.mkdir(parents=True)
    damage(path, packed)
    with caplog.at_level(logging.WARNING, logger="vae_train.data.dsprites"):
        grid = dsprites.load_grid(tmp_path, progress=False)
    assert np.array_equal(grid, packed) and calls == [1]
    assert str(path) in caplog.text and needle in caplog.text, caplog.text
    assert path.is_file() and not path.is_symlink()
    assert np.array_equal(dsprites._read_cache(path), packed)        # replaced: reads back
    assert [p.name for p in path.parent.iterdir()] == [path.name]    # no temporary left
    caplog.clear()
    dsprites.load_grid(tmp_path, progress=False)                     # and is used next time
    assert calls == [1] and not caplog.text


def test_a_folder_with_files_in_the_caches_place_is_kept_and_the_grid_rendered_in_memory(
        tmp_path, small_grid, caplog):
    packed, calls = small_grid
    path = dsprites.cache_path(tmp_path)
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("mine")
    with caplog.at_level(logging.WARNING, logger="vae_train.data.dsprites"):
        assert np.array_equal(dsprites.load_grid(tmp_path, progress=False), packed)
    assert "is a folder with files in it" in caplog.text and str(path) in caplog.text
    assert (path / "notes.txt").read_text() == "mine" and calls == [1]


def test_the_dsprites_data_set_reads_through_a_damaged_cache(tmp_path, small_grid, caplog):
    packed, _ = small_grid                       # the 16-image grid: 12 train, 4 test
    path = dsprites.cache_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04" + os.urandom(100))
    cfg = OmegaConf.create({"_target_": "vae_train.data.dsprites.DSprites", "name": "dsprites",
                            "root": str(tmp_path), "num_train": 12, "num_test": 4})
    with caplog.at_level(logging.WARNING, logger="vae_train.data.dsprites"):
        data = load_image_data(cfg)
    assert "rendering it again" in caplog.text
    assert data.train_x.shape == (12, 1, 64, 64) and data.test_x.shape == (4, 1, 64, 64)
    expected = dsprites.unpack(packed)
    train_idx, test_idx = dsprites.split_indices(12, 4, 0)
    assert torch.equal(data.train_x, expected[train_idx])
    assert torch.equal(data.test_x, expected[test_idx])


# -- image folders: empty files and images of zero size ------------------------------------------
def test_a_zero_byte_or_zero_size_image_file_is_skipped_or_refused_by_name(tmp_path, caplog):
    import struct
    import zlib

    from PIL import Image

    for c in "ab":
        (tmp_path / c).mkdir()
        for i in range(5):
            Image.fromarray(np.full((8, 8), 30 * i, np.uint8)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "a" / "empty.png").write_bytes(b"")

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    (tmp_path / "b" / "zero.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 0, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    node = {"_target_": "vae_train.data.folder.Folder", "name": "mine", "path": str(tmp_path),
            "cache": False}
    with caplog.at_level(logging.WARNING, logger="vae_train.data.decode_cache"):
        data = load_image_data(OmegaConf.create(node))
    assert len(data.train_x) + len(data.test_x) == 10
    assert "a/empty.png" in caplog.text and "b/zero.png" in caplog.text
    with pytest.raises(UserError, match=f"cannot decode {tmp_path}/a/empty.png"):
        load_image_data(OmegaConf.create({**node, "bad_files": "error"}))


# -- the decode cache of image folders -----------------------------------------------------------
@pytest.fixture
def folder_cache(tmp_path, monkeypatch):
    """A folder of 10 small images decoded once into a private cache: (node, .npy, manifest,
    the training images as first read)."""
    from PIL import Image

    from vae_train.data.decode_cache import cache_root

    monkeypatch.setenv("VAE_CACHE_DIR", str(tmp_path / "cache"))
    for c in "ab":
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((8, 8), 30 * i, np.uint8)).save(tmp_path / "imgs" / c /
                                                                     f"{i}.png")
    node = OmegaConf.create({"_target_": "vae_train.data.folder.Folder", "name": "mine",
                             "path": str(tmp_path / "imgs")})
    first = load_image_data(node).train_x.materialize()       # read now: the file is damaged next
    npy = next((cache_root() / "images").glob("*.npy"))
    return node, npy, npy.with_suffix(".json"), first


def _manifest_with(manifest, old, new):
    manifest.write_text(manifest.read_text().replace(old, new, 1))


CACHE_DAMAGE = {
    "an infinite byte count": (lambda npy, man: _manifest_with(man, '"bytes": ',
                                                               '"bytes": 1e400, "was": '),
                               "its manifest lacks a field (OverflowError"),
    "an infinite skipped row": (lambda npy, man: _manifest_with(
        man, '"skipped": []', '"skipped": [{"row": 1e400, "file": "x", "reason": "y"}]'),
        "its manifest lacks a field (OverflowError"),
    "a folder for the array": (lambda npy, man: (npy.unlink(), npy.mkdir()),
                               "was an empty folder; removed"),
    "a folder for the manifest": (lambda npy, man: (man.unlink(), man.mkdir()),
                                  "was an empty folder; removed"),
}


@pytest.mark.parametrize("case", list(CACHE_DAMAGE))
def test_a_damaged_decode_cache_entry_is_decoded_again_and_replaced(folder_cache, caplog, case):
    node, npy, manifest, first = folder_cache
    damage, needle = CACHE_DAMAGE[case]
    damage(npy, manifest)
    with caplog.at_level(logging.WARNING, logger="vae_train.data.decode_cache"):
        data = load_image_data(node)
    assert needle in caplog.text and str(npy.with_suffix("")) in caplog.text, caplog.text
    assert torch.equal(data.train_x.materialize(), first)
    assert npy.is_file() and manifest.is_file()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vae_train.data.decode_cache"):
        load_image_data(node)
    assert "decode cache hit" in caplog.text                      # the rebuilt entry is used


def test_a_folder_with_files_in_a_cache_entrys_place_is_kept_and_the_images_decoded_in_memory(
        folder_cache, caplog):
    node, npy, manifest, first = folder_cache
    npy.unlink()
    npy.mkdir()
    (npy / "notes.txt").write_text("mine")
    with caplog.at_level(logging.WARNING, logger="vae_train.data.decode_cache"):
        data = load_image_data(node)
    assert "is a folder with files in it" in caplog.text
    assert isinstance(data.train_x, torch.Tensor) and torch.equal(data.train_x, first)
    assert (npy / "notes.txt").read_text() == "mine"


# -- CelebA's attribute list ---------------------------------------------------------------------
def test_a_celeba_attribute_that_parses_but_is_not_plus_or_minus_one_names_the_line(tmp_path):
    from vae_train.data.celeba import read_attributes

    path = tmp_path / "list_attr_celeba.txt"
    path.write_text("2\nSmiling Male\n000001.jpg 1 -1\n000002.jpg -1 7\n")
    with pytest.raises(UserError, match=re.escape(f"{path}:4: Male is 7, not -1 or 1")):
        read_attributes(path)
    path.write_text("2\nSmiling Male\n000001.jpg 1 -1\n000002.jpg -1 1\n")
    names, rows, values = read_attributes(path)
    assert names == ["Smiling", "Male"] and values.tolist() == [[1, -1], [-1, 1]]
