"""The real parsers on small files the tests write, the generated set, splits, binarization."""

import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import write_mnist_like
from vae_train.build import load_image_data
from vae_train.data import DataModule
from vae_train.data.cifar import write_cifar_batch
from vae_train.data.idx import read_idx, write_idx
from vae_train.data.synthetic import make_synthetic
from vae_train.errors import UserError


TARGETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST",
           "cifar10": "CIFAR10"}


def ds_cfg(**kw):
    base = dict(name="mnist", root="/nonexistent", download=False, train_size=None,
                test_size=None)
    name = kw.get("name", base["name"])
    return OmegaConf.create({"_target_": f"vae_train.data.torchvision_sets.{TARGETS[name]}",
                             **base, **kw})


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST"),
                                         ("kmnist", "KMNIST")])
def test_mnist_like_sets_are_read_from_torchvision_layout(tmp_path, name, folder, gz):
    written = write_mnist_like(tmp_path / folder / "raw", 300, 100, gz=gz)
    data = load_image_data(ds_cfg(name=name, root=str(tmp_path)))
    assert data.train_x.shape == (300, 1, 28, 28) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (100, 1, 28, 28)
    assert np.array_equal(data.train_x[:, 0].numpy(), written["train"][0])
    assert np.array_equal(data.test_y.numpy(), written["t10k"][1].astype(np.int64))
    assert data.num_classes == 10


def test_train_and_test_size_take_the_first_examples(tmp_path):
    written = write_mnist_like(tmp_path / "MNIST" / "raw", 300, 100)
    data = load_image_data(ds_cfg(root=str(tmp_path), train_size=50, test_size=20))
    assert len(data.train_x) == 50 and len(data.test_x) == 20
    assert np.array_equal(data.train_y.numpy(), written["train"][1][:50])
    with pytest.raises(UserError, match="train_size=500"):
        load_image_data(ds_cfg(root=str(tmp_path), train_size=500))


def test_missing_data_names_every_place_tried(tmp_path, monkeypatch):
    from vae_train.data.torchvision_sets import FashionMNIST

    debian = tmp_path / "usr-share-datasets-fashion-mnist"   # stands in for the Debian folder
    monkeypatch.setattr(FashionMNIST, "extra_dirs", (debian,))
    with pytest.raises(UserError) as e:
        load_image_data(ds_cfg(name="fashion_mnist", root=str(tmp_path / "data")))
    msg = str(e.value)
    assert str(tmp_path / "data" / "FashionMNIST" / "raw") in msg and str(debian) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "dataset.root" in msg
    # found there once the files exist
    write_mnist_like(debian, 30, 10)
    assert len(load_image_data(ds_cfg(name="fashion_mnist", root=str(tmp_path / "data"))).train_x) == 30


def test_data_root_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        load_image_data(ds_cfg(root=str(f)))


def test_idx_round_trip_and_corrupt_files(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a-idx3-ubyte", arr)
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte").numpy(), arr)
    raw = (tmp_path / "a-idx3-ubyte").read_bytes()
    (tmp_path / "short").write_bytes(raw[:-5])
    with pytest.raises(UserError, match="short.*truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "magic").write_bytes(b"\x00\x00\x0d\x03" + raw[4:])
    with pytest.raises(UserError, match="magic number"):
        read_idx(tmp_path / "magic")
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="bad.gz"):
        read_idx(tmp_path / "bad.gz")
    with pytest.raises(UserError, match="3 dimensions, expected 1"):
        read_idx(tmp_path / "a-idx3-ubyte", expect_dims=1)


def test_cifar10_pickles_are_read(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    first = None
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        imgs = rng.integers(0, 256, (7, 3, 32, 32), dtype=np.uint8)
        first = imgs if first is None else first
        write_cifar_batch(folder / name, imgs, rng.integers(0, 10, 7))
    data = load_image_data(ds_cfg(name="cifar10", root=str(tmp_path)))
    assert data.train_x.shape == (35, 3, 32, 32) and data.test_x.shape == (7, 3, 32, 32)
    assert np.array_equal(data.train_x[:7].numpy(), first)
    assert data.classes[0] == "airplane"


def test_cifar_pickle_with_foreign_objects_is_refused(tmp_path):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    with pytest.raises(UserError, match="refusing"):
        load_image_data(ds_cfg(name="cifar10", root=str(tmp_path)))
    assert not marker.exists()


def test_synthetic_is_seeded_labelled_and_structured():
    x1, y1 = make_synthetic(200, seed=3)
    x2, y2 = make_synthetic(200, seed=3)
    x3, _ = make_synthetic(200, seed=4)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert x1.shape == (200, 1, 28, 28) and x1.dtype == torch.uint8
    assert set(y1.tolist()) == set(range(10))
    # Every image has a shape on a dark background, with anti-aliased grey edges.
    ink = (x1 > 0).float().mean((1, 2, 3))
    assert (ink > 0.01).all() and (ink < 0.7).all()
    assert ((x1 > 0) & (x1 < 100)).any()
    # Classes differ: the mean image of disks and bars are far apart.
    d = (x1[y1 == 0].float().mean(0) - x1[y1 == 7].float().mean(0)).abs().mean()
    assert d > 5
    colour, _ = make_synthetic(10, seed=0, size=32, channels=3)
    assert colour.shape == (10, 3, 32, 32)


def test_val_split_and_binarization():
    x, y = make_synthetic(500, seed=0)
    from vae_train.data import ImageData

    data = ImageData("synthetic", x, y, x[:100], y[:100], classes=list("abcdefghij"))
    dm = DataModule(data, torch.device("cpu"), "none", 0.2)
    assert len(dm.train) == 400 and len(dm.val) == 100 and len(dm.test) == 100
    # train and val are disjoint parts of the training split
    rows = {r.numpy().tobytes() for r in dm.train.x}
    assert not any(v.numpy().tobytes() in rows for v in dm.val.x)
    assert len(DataModule(data, torch.device("cpu"), "none", 50).val) == 50
    xb, yb = dm.train_batch(torch.arange(10))
    assert xb.dtype == torch.float32 and 0 <= xb.min() and xb.max() <= 1 and yb.shape == (10,)
    assert ((xb > 0) & (xb < 1)).any()            # grey levels kept

    dyn = DataModule(data, torch.device("cpu"), "dynamic", 0.2)
    a, _ = dyn.train_batch(torch.arange(50))
    b, _ = dyn.train_batch(torch.arange(50))
    assert set(a.unique().tolist()) <= {0.0, 1.0} and not torch.equal(a, b)
    v1 = next(dyn.eval_batches(dyn.val, 50))[0]
    assert set(v1.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(v1, next(dyn.eval_batches(dyn.val, 50))[0])   # fixed for evaluation

    tr = dyn.eval_split("train").x                          # for evaluation: binarized once
    assert set(tr.unique().tolist()) <= {0, 255} and torch.equal(tr, dyn.eval_split("train").x)
    assert dm.eval_split("train") is dm.train and dyn.eval_split("test") is dyn.test

    st = DataModule(data, torch.device("cpu"), "static", 0.2)
    s1, _ = st.train_batch(torch.arange(50))
    assert set(s1.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(s1, st.train_batch(torch.arange(50))[0])
    with pytest.raises(UserError, match="val_size"):
        DataModule(data, torch.device("cpu"), "none", 500)


def test_more_images_than_labels_is_refused_naming_both_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_mnist_like(raw, 50, 20)
    write_idx(raw / "train-labels-idx1-ubyte.gz", np.zeros(40, dtype=np.uint8))
    with pytest.raises(UserError, match=re.escape(
            f"the train split of MNIST has 50 images in {raw}/train-images-idx3-ubyte.gz but "
            f"40 labels in {raw}/train-labels-idx1-ubyte.gz")):
        load_image_data(ds_cfg(root=str(tmp_path)))
