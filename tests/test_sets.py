"""CIFAR-100 and SVHN, read from small files in their real on-disk layouts (torchvision's):
labels, shapes, the refusals, and the messages when the files are missing or wrong."""

import pickle
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg
from vae_train.build import load_image_data
from vae_train.data.cifar import write_cifar100, write_cifar_batch
from vae_train.errors import UserError

scipy_io = pytest.importorskip("scipy.io")


def node(target, root, **kw):
    return OmegaConf.create({"_target_": f"vae_train.data.torchvision_sets.{target}",
                             "name": target.lower(), "root": str(root), "download": False,
                             **kw})


# -- CIFAR-100 ---------------------------------------------------------------------------------
def write_small_cifar100(root, n_train=12, n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    split = {}
    for name, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        fine = rng.integers(0, 100, n)
        split[name] = (images, fine, fine // 5)          # 5 fine classes per superclass
    fine_names = [f"thing{i}" for i in range(100)]
    coarse_names = [f"group{i}" for i in range(20)]
    write_cifar100(root / "cifar-100-python", split["train"], split["test"], fine_names,
                   coarse_names)
    return split


@pytest.mark.parametrize("labels,k", [("fine", 100), ("coarse", 20)])
def test_cifar100_fine_and_coarse_labels(tmp_path, labels, k):
    written = write_small_cifar100(tmp_path)
    data = load_image_data(node("CIFAR100", tmp_path, labels=labels))
    assert data.train_x.shape == (12, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (5, 3, 32, 32)
    assert np.array_equal(data.train_x.numpy(), written["train"][0])
    assert np.array_equal(data.test_x.numpy(), written["test"][0])
    column = 1 if labels == "fine" else 2
    assert np.array_equal(data.train_y.numpy(), written["train"][column])
    assert np.array_equal(data.test_y.numpy(), written["test"][column])
    assert data.train_y.dtype == torch.int64
    assert data.num_classes == k
    assert data.classes[3] == ("thing3" if labels == "fine" else "group3")
    assert data.value_kind == "8bit"


def test_cifar100_label_out_of_range_names_the_file(tmp_path):
    folder = tmp_path / "cifar-100-python"
    images = np.zeros((4, 3, 32, 32), np.uint8)
    write_cifar100(folder, (images, [0, 1, 2, 3], [0, 1, 2, 3]),
                   (images, [0, 1, 100, 3], [0, 1, 2, 3]))    # test: fine label 100
    with pytest.raises(UserError) as e:
        load_image_data(node("CIFAR100", tmp_path))
    msg = str(e.value)
    assert str(folder / "test") in msg and "outside 0..99" in msg and "100" in msg
    assert "\n" not in msg
    # the coarse labels of the same files are fine; a coarse label of 20 is not
    assert load_image_data(node("CIFAR100", tmp_path, labels="coarse")).num_classes == 20
    write_cifar100(folder, (images, [0, 1, 2, 3], [0, 1, 20, 3]), (images, [0] * 4, [0] * 4))
    with pytest.raises(UserError, match=r"cifar-100-python/train: 1 coarse_labels outside 0\.\.19"):
        load_image_data(node("CIFAR100", tmp_path, labels="coarse"))


def test_cifar100_wrong_data_shape_is_refused(tmp_path):
    folder = tmp_path / "cifar-100-python"
    write_small_cifar100(tmp_path)
    with open(folder / "train", "wb") as f:
        pickle.dump({b"data": np.zeros((3, 1024), np.uint8), b"fine_labels": [0, 1, 2],
                     b"coarse_labels": [0, 0, 0]}, f)
    with pytest.raises(UserError, match=r"train has data of shape \(3, 1024\).*\(N, 3072\)"):
        load_image_data(node("CIFAR100", tmp_path))


def test_cifar100_meta_must_name_every_class(tmp_path):
    folder = tmp_path / "cifar-100-python"
    images = np.zeros((2, 3, 32, 32), np.uint8)
    write_cifar100(folder, (images, [0, 1], [0, 1]), (images, [0, 1], [0, 1]),
                   fine_names=["a", "b"])
    with pytest.raises(UserError, match="meta names 2 fine classes; expected 100"):
        load_image_data(node("CIFAR100", tmp_path))


def test_cifar100_missing_names_the_folder_and_files(tmp_path):
    with pytest.raises(UserError) as e:
        load_image_data(node("CIFAR100", tmp_path / "data"))
    msg = str(e.value)
    assert msg.startswith("CIFAR-100 not found")
    assert str(tmp_path / "data" / "cifar-100-python") in msg and "train, test, meta" in msg
    assert "dataset.download=false" in msg and "dataset.root" in msg
    assert "cifar-100-python.tar.gz" in msg


def test_cifar100_download_goes_through_torchvision(tmp_path, monkeypatch):
    """download=true asks torchvision's CIFAR100 for both splits into the root; a failure
    ends the "not found" line."""
    import torchvision.datasets as tvd

    calls = []

    def fake(root, train, download):
        calls.append((root, train, download))
        raise RuntimeError("no network here")

    monkeypatch.setattr(tvd, "CIFAR100", fake)
    with pytest.raises(UserError, match="download failed: RuntimeError: no network here"):
        load_image_data(node("CIFAR100", tmp_path, download=True))
    assert calls == [(str(tmp_path), True, True)]


def test_cifar100_option_is_checked():
    with pytest.raises(UserError, match="^dataset.labels='medium' is invalid"):
        load_image_data(node("CIFAR100", "/nonexistent", labels="medium"))


def test_cifar10_labels_out_of_range_are_refused_too(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        write_cifar_batch(folder / name, np.zeros((2, 3, 32, 32), np.uint8),
                          [0, 10 if name == "data_batch_3" else 9])
    with pytest.raises(UserError, match=r"data_batch_3: 1 labels outside 0\.\.9"):
        load_image_data(node("CIFAR10", tmp_path))


# -- SVHN ----------------------------------------------------------------------------------------
def write_small_svhn(folder, splits=("train", "test"), n=6, seed=0):
    """SVHN's own layout, written directly: X (32, 32, 3, N) uint8, y (N, 1) in 1..10."""
    from vae_train.data.svhn import svhn_file

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split in splits:
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        y[0, 0] = 10                                      # the digit 0, at least once
        scipy_io.savemat(str(svhn_file(folder, split)), {"X": x, "y": y})
        out[split] = (x, y)
    return out


def test_svhn_is_read_with_10_as_digit_0(tmp_path):
    written = write_small_svhn(tmp_path)
    data = load_image_data(node("SVHN", tmp_path))
    assert data.train_x.shape == (6, 3, 32, 32) and data.test_x.shape == (6, 3, 32, 32)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    x, y = written["train"]
    # example i, channel c, row h, column w is X[h, w, c, i]
    assert data.train_x[2, 1, 5, 7] == x[5, 7, 1, 2]
    assert np.array_equal(data.train_x.numpy(), x.transpose(3, 2, 0, 1))
    expected = y[:, 0].astype(np.int64) % 10
    assert np.array_equal(data.train_y.numpy(), expected) and data.train_y[0] == 0
    assert set(data.train_y.tolist()) <= set(range(10))
    assert data.classes == [str(d) for d in range(10)] and data.value_kind == "8bit"


def test_svhn_under_a_svhn_folder_and_with_extra(tmp_path):
    written = write_small_svhn(tmp_path / "svhn", ("train", "test", "extra"), n=4)
    data = load_image_data(node("SVHN", tmp_path))
    assert len(data.train_x) == 4
    data = load_image_data(node("SVHN", tmp_path, extra=True))
    assert len(data.train_x) == 8 and len(data.test_x) == 4
    assert np.array_equal(data.train_x[4:].numpy(), written["extra"][0].transpose(3, 2, 0, 1))


def test_svhn_missing_names_both_places(tmp_path):
    with pytest.raises(UserError) as e:
        load_image_data(node("SVHN", tmp_path, extra=True))
    msg = str(e.value)
    assert msg.startswith("SVHN not found") and str(tmp_path / "svhn") in msg
    assert "train_32x32.mat, test_32x32.mat, extra_32x32.mat" in msg
    assert "dataset.root" in msg and "\n" not in msg


def test_svhn_download_asks_torchvision_for_each_split(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    def fake(root, split, download):
        calls.append(split)

    monkeypatch.setattr(tvd, "SVHN", fake)
    with pytest.raises(UserError, match="download failed: the download left no usable files"):
        load_image_data(node("SVHN", tmp_path, download=True, extra=True))
    assert calls == ["train", "test", "extra"]


def test_svhn_bad_labels_and_bad_files_are_one_line(tmp_path):
    from vae_train.data.svhn import svhn_file

    write_small_svhn(tmp_path)
    x = np.zeros((32, 32, 3, 3), np.uint8)
    scipy_io.savemat(str(svhn_file(tmp_path, "test")), {"X": x, "y": np.array([[1], [11], [2]])})
    with pytest.raises(UserError, match=r"test_32x32.mat: 1 labels outside 1\.\.10"):
        load_image_data(node("SVHN", tmp_path))
    scipy_io.savemat(str(svhn_file(tmp_path, "test")), {"X": np.zeros((28, 28, 3, 2), np.uint8),
                                                        "y": np.array([[1], [2]])})
    with pytest.raises(UserError, match=r"X is uint8 of shape \(28, 28, 3, 2\)"):
        load_image_data(node("SVHN", tmp_path))
    svhn_file(tmp_path, "test").write_bytes(b"not a matlab file at all")
    with pytest.raises(UserError, match="cannot read SVHN file .*test_32x32.mat"):
        load_image_data(node("SVHN", tmp_path))


def test_svhn_without_scipy_says_how_to_install_it(tmp_path, monkeypatch):
    write_small_svhn(tmp_path)
    monkeypatch.setitem(sys.modules, "scipy", None)      # import scipy now raises ImportError
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(UserError) as e:
        load_image_data(node("SVHN", tmp_path))
    assert str(e.value) == "dataset=svhn needs scipy: pip install 'vae-train[svhn]'"


def test_svhn_writer_round_trips(tmp_path):
    from vae_train.data.svhn import read_svhn, write_svhn

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    write_svhn(tmp_path / "a.mat", images, [0, 3, 9, 0, 1])
    raw = scipy_io.loadmat(str(tmp_path / "a.mat"))
    assert raw["X"].shape == (32, 32, 3, 5) and raw["y"][:, 0].tolist() == [10, 3, 9, 10, 1]
    x, y = read_svhn(tmp_path / "a.mat")
    assert np.array_equal(x.numpy(), images) and y.tolist() == [0, 3, 9, 0, 1]


# -- through the config --------------------------------------------------------------------------
def test_cifar100_and_svhn_compose_from_the_config_groups(tmp_path):
    write_small_cifar100(tmp_path)
    write_small_svhn(tmp_path)
    cfg = compose_cfg(["dataset=cifar100", f"dataset.root={tmp_path}", "dataset.download=false",
                       "dataset.labels=coarse"])
    data = load_image_data(cfg.dataset)
    assert data.name == "cifar100" and data.num_classes == 20 and data.shape == (3, 32, 32)
    cfg = compose_cfg(["dataset=svhn", f"dataset.root={tmp_path}", "dataset.download=false"])
    data = load_image_data(cfg.dataset)
    assert data.name == "svhn" and data.num_classes == 10 and data.shape == (3, 32, 32)
