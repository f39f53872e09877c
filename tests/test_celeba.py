"""``dataset=celeba``: torchvision's layout read offline from a tiny tree of the real formats
(178x218 JPEGs, the partition and attribute lists): the 148-px centre crop resized to 64, the
splits from the partition file, attributes as multi-hot labels, and one-line refusals."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose_cfg
from vae_train.build import load_image_data
from vae_train.config import validate
from vae_train.data import decode_cache
from vae_train.data.celeba import ATTRIBUTE_NAMES, CelebA
from vae_train.data.rows import Rows
from vae_train.errors import UserError

PARTS = [0, 0, 0, 1, 2, 0, 2, 1]          # eight images: 4 train, 2 valid, 2 test


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VAE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def attrs_of(i: int) -> np.ndarray:
    """Image i's 40 attributes, -1/1: attribute k is present when (i + k) % 3 == 0."""
    return np.where((i + np.arange(40)) % 3 == 0, 1, -1)


def write_celeba(folder, parts=PARTS):
    """CelebA's files in ``folder``: faces whose centre 148x148 is grey level 10 * (i + 1) and
    whose rim (outside the crop) is white."""
    images = folder / "img_align_celeba"
    images.mkdir(parents=True)
    names = [f"{i + 1:06d}.jpg" for i in range(len(parts))]
    for i, name in enumerate(names):
        a = np.full((218, 178, 3), 255, np.uint8)
        a[35:35 + 148, 15:15 + 148] = 10 * (i + 1)
        Image.fromarray(a).save(images / name, quality=95)
    (folder / "list_eval_partition.txt").write_text(
        "".join(f"{n} {p}\n" for n, p in zip(names, parts)))
    rows = [f"{n} " + " ".join(f"{v:2d}" for v in attrs_of(i)) for i, n in enumerate(names)]
    (folder / "list_attr_celeba.txt").write_text(
        f"{len(names)}\n" + " ".join(ATTRIBUTE_NAMES) + " \n" + "\n".join(rows) + "\n")
    return names


def celeba(root, **kw) -> CelebA:
    return CelebA(root=str(root), download=False, **kw)


def level(x) -> np.ndarray:
    """Each image's mean grey level (its identity)."""
    x = x.materialize() if isinstance(x, Rows) else x
    return x.float().mean(dim=(1, 2, 3)).numpy()


def test_the_faces_are_cropped_resized_and_split_by_the_partition_file(tmp_path):
    write_celeba(tmp_path / "celeba")
    data = celeba(tmp_path).load()
    assert data.shape == (3, 64, 64) and data.train_x.dtype == torch.uint8
    assert isinstance(data.train_x, Rows)
    assert data.classes == [] and data.train_y.tolist() == [0] * 4      # unlabelled
    # the white rim is cropped away: every pixel is the centre's level (JPEG: within a few)
    x = data.train_x.materialize().int()
    assert (x - x[:, :, 32:33, 32:33]).abs().max() <= 6
    assert np.allclose(level(data.train_x), [10, 20, 30, 60], atol=3)  # partition 0
    assert np.allclose(level(data.test_x), [50, 70], atol=3)           # partition 2
    with_valid = celeba(tmp_path, include_valid=True).load()
    assert np.allclose(level(with_valid.train_x), [10, 20, 30, 40, 60, 80], atol=3)


def test_attributes_are_multi_hot_labels(tmp_path):
    write_celeba(tmp_path / "celeba")
    data = celeba(tmp_path, attributes=["Smiling", "Male", "5_o_Clock_Shadow"]).load()
    assert data.classes == ["Smiling", "Male", "5_o_Clock_Shadow"]
    assert data.train_y.dtype == torch.int64 and data.train_y.shape == (4, 3)
    cols = [ATTRIBUTE_NAMES.index(a) for a in data.classes]
    want = lambda idx: [[int(attrs_of(i)[c] > 0) for c in cols] for i in idx]  # noqa: E731
    assert data.train_y.tolist() == want([0, 1, 2, 5])
    assert data.test_y.tolist() == want([4, 6])
    assert set(data.train_y.flatten().tolist()) <= {0, 1}
    every = celeba(tmp_path, attributes="all").load()
    assert every.classes == list(ATTRIBUTE_NAMES) and every.train_y.shape == (4, 40)


def test_an_unknown_attribute_lists_the_valid_ones(tmp_path):
    with pytest.raises(UserError) as err:
        celeba(tmp_path, attributes=["Smiling", "Happy"])
    msg = str(err.value)
    assert "\n" not in msg and "Happy is not" in msg and "Wearing_Necktie" in msg
    assert "Smiling" in msg.split("are:")[1]


def test_the_images_folder_directly_under_root_is_found(tmp_path):
    write_celeba(tmp_path)
    assert celeba(tmp_path, attributes=["Young"]).load().train_y.shape == (4, 1)


def test_missing_files_name_every_place_tried(tmp_path):
    with pytest.raises(UserError) as err:
        celeba(tmp_path / "data").load()
    msg = str(err.value)
    assert "\n" not in msg and "CelebA not found" in msg
    assert str(tmp_path / "data" / "celeba") in msg and f"{tmp_path / 'data'};" in msg
    assert "dataset.download=false" in msg and "dataset.root" in msg
    (tmp_path / "data" / "celeba").mkdir(parents=True)
    (tmp_path / "data" / "celeba" / "img_align_celeba.zip").write_bytes(b"PK")
    with pytest.raises(UserError, match=r"unzip .*img_align_celeba\.zip"):
        celeba(tmp_path / "data").load()


def test_a_failed_download_says_why(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*a, **k):
        raise RuntimeError("Google Drive refused: too many users")

    monkeypatch.setattr(tvd, "CelebA", offline)
    with pytest.raises(UserError, match="download failed: RuntimeError: Google Drive refused"):
        CelebA(root=str(tmp_path), download=True).load()


def test_listed_images_that_are_missing(tmp_path, caplog):
    names = write_celeba(tmp_path / "celeba")
    (tmp_path / "celeba" / "img_align_celeba" / names[1]).unlink()
    with caplog.at_level(logging.WARNING):
        data = celeba(tmp_path, attributes=["Male"]).load()
    assert "1 of the 8 images" in caplog.text and names[1] in caplog.text
    assert np.allclose(level(data.train_x), [10, 30, 60], atol=3)
    male = ATTRIBUTE_NAMES.index("Male")
    assert data.train_y[:, 0].tolist() == [int(attrs_of(i)[male] > 0) for i in (0, 2, 5)]
    with pytest.raises(UserError, match=f"missing from .*{names[1]}"):
        celeba(tmp_path, bad_files="error").load()


def test_a_damaged_attribute_file_is_one_line(tmp_path):
    write_celeba(tmp_path / "celeba")
    path = tmp_path / "celeba" / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    lines[4] = lines[4].rsplit(" ", 3)[0]
    path.write_text("\n".join(lines))
    with pytest.raises(UserError, match=r"line 5 has 37 values.*damaged"):
        celeba(tmp_path, attributes=["Male"]).load()


def test_the_second_load_is_a_cache_hit(tmp_path, monkeypatch):
    write_celeba(tmp_path / "celeba")
    first = celeba(tmp_path).load()
    monkeypatch.setattr(decode_cache, "decode_image",
                        lambda *a: (_ for _ in ()).throw(AssertionError("decoded again")))
    again = celeba(tmp_path, include_valid=True, attributes=["Male"]).load()   # same files
    assert torch.equal(first.test_x.materialize(), again.test_x.materialize())


def test_the_config_builds_it(tmp_path):
    write_celeba(tmp_path / "celeba")
    cfg = compose_cfg(["dataset=celeba", f"dataset.root={tmp_path}", "dataset.download=false",
                       "dataset.attributes=[Smiling,Male]", "dataset.image_size=32"])
    validate(cfg)
    data = load_image_data(cfg.dataset)
    assert data.shape == (3, 32, 32) and data.train_y.shape == (4, 2)
    with pytest.raises(UserError, match="dataset.attributes=5 is invalid"):
        validate(compose_cfg(["dataset=celeba", "dataset.attributes=5"]))


def test_cvae_conditions_on_the_attribute_vector(tmp_path):
    """model=cvae on attributes: the multi-hot vector is the condition (trains a step, a
    different vector gives a different image, the pictures draw); m2 needs classes."""
    from vae_train.build import build
    from vae_train.pictures.figures import training_figures

    write_celeba(tmp_path / "celeba")
    over = ["dataset=celeba", f"dataset.root={tmp_path}", "dataset.download=false",
            "dataset.attributes=[Smiling,Male,Young]", "dataset.image_size=16",
            "dataset.val_size=1"]
    dm, objective, model = build(compose_cfg(["model=cvae", *over]), torch.device("cpu"))
    x, y = dm.train_batch(torch.arange(len(dm.train)))
    assert y.shape == (3, 3) and model.num_classes == 3
    terms = objective(model, x, y)
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"])
    z = torch.zeros(2, model.code_dim)
    a, b = model.decode_code(z, torch.tensor([[1, 0, 0], [0, 1, 1]]))
    assert a.shape == (3, 16, 16) and not torch.allclose(a, b)
    figs = training_figures(model, x, y, n=3)
    assert figs["class_samples"].shape[0] == 3          # one row per attribute, each alone
    with pytest.raises(UserError, match="attribute labels .* not classes"):
        build(compose_cfg(["model=m2", *over]), torch.device("cpu"))
