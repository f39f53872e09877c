"""``dataset=folder``: image files a user brings, in class folders or flat, split by folders or
by seed; how each image is prepared (modes, channels, crop and pad); files that do not decode;
and the decode cache (a hit decodes nothing, a change rebuilds, a damaged entry is rebuilt)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose_cfg, run_cli
from vae_train.build import load_image_data
from vae_train.config import validate
from vae_train.data import decode_cache
from vae_train.data.decode_cache import Preprocess, cache_root, decode_image
from vae_train.data.folder import Folder, seeded_split
from vae_train.data.rows import Rows
from vae_train.errors import UserError


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test's cache in its own folder (never the user's ~/.cache)."""
    monkeypatch.setenv("VAE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def value(i: int) -> int:
    return (37 * i + 11) % 256


def write_classes(root, counts, size=(12, 10), fmt="PNG", mode="L", start=0):
    """``counts[c]`` images in ``root/<c>/``; image i of the whole set is uniform ``value(i)``.
    Returns {relative path: value}."""
    out, i = {}, start
    for c, n in counts.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            ext = {"PNG": "png", "JPEG": "jpg"}[fmt]
            path = root / c / f"{k:03d}.{ext}"
            Image.new(mode, size, value(i) if mode == "L" else (value(i),) * 3).save(path, fmt)
            out[f"{c}/{path.name}"] = value(i)
            i += 1
    return out


def folder(path, **kw) -> Folder:
    return Folder(path=str(path), **kw)


def all_rows(x):
    return x.materialize() if isinstance(x, Rows) else x


# -- layout, labels, splits --------------------------------------------------------------------
def test_class_folders_are_labels_and_values_survive(tmp_path):
    root = tmp_path / "imgs"
    vals = write_classes(root, {"b_dog": 6, "a_cat": 4, "c_eel": 5})
    data = folder(root, channels=1, test_split=0.2).load()
    assert data.classes == ["a_cat", "b_dog", "c_eel"]            # sorted folder names
    assert isinstance(data.train_x, Rows) and isinstance(data.test_x, Rows)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    assert data.shape == (1, 10, 12)                                # (C, H, W) of 12x10 files
    assert len(data.train_x) + len(data.test_x) == 15
    # every image is uniform; its value says which file it came from, its label its folder
    by_value = {v: rel.split("/")[0] for rel, v in vals.items()}
    for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
        imgs = all_rows(x)
        assert (imgs == imgs[:, :, :1, :1]).all()
        for img, label in zip(imgs, y):
            assert data.classes[int(label)] == by_value[int(img[0, 0, 0])]
    # a fifth of each class is test: 4 -> 1, 6 -> 1, 5 -> 1
    assert sorted(torch.bincount(data.test_y, minlength=3).tolist()) == [1, 1, 1]


def test_a_flat_folder_is_unlabelled(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    for i in range(10):
        Image.new("RGB", (8, 8), (i, 2 * i, 3 * i)).save(root / f"IMG_{i}.PNG")  # upper case
    (root / "notes.txt").write_text("not an image")
    data = folder(root).load()
    assert data.classes == [] and data.num_classes == 0
    assert len(data.train_x) == 9 and len(data.test_x) == 1
    assert data.train_y.tolist() == [0] * 9 and data.test_y.tolist() == [0]
    assert data.shape == (3, 8, 8)
    pixels = sorted(tuple(img[:, 0, 0].tolist()) for img in
                    torch.cat([all_rows(data.train_x), all_rows(data.test_x)]))
    assert pixels == [(i, 2 * i, 3 * i) for i in range(10)]


def test_train_and_test_folders_are_the_splits(tmp_path, caplog):
    root = tmp_path / "split"
    tr = write_classes(root / "train", {"x": 3, "y": 5})
    te = write_classes(root / "test", {"y": 2}, start=100)       # test may lack a class
    (root / "extra").mkdir()
    data = folder(root, channels=1).load()
    assert data.classes == ["x", "y"]
    assert data.train_y.tolist() == [0, 0, 0, 1, 1, 1, 1, 1]        # folder order
    assert data.test_y.tolist() == [1, 1]                           # "y" keeps train's index
    assert sorted(all_rows(data.test_x)[:, 0, 0, 0].tolist()) == sorted(te.values())
    assert sorted(all_rows(data.train_x)[:, 0, 0, 0].tolist()) == sorted(tr.values())


def test_val_folder_is_the_test_split_when_there_is_no_test(tmp_path):
    root = tmp_path / "split"
    write_classes(root / "train", {"x": 3})
    write_classes(root / "val", {"x": 2}, start=50)
    data = folder(root, channels=1).load()
    assert (len(data.train_x), len(data.test_x)) == (3, 2)
    assert sorted(all_rows(data.test_x)[:, 0, 0, 0].tolist()) == sorted([value(50), value(51)])


def test_split_folders_must_agree_on_classes(tmp_path):
    root = tmp_path / "split"
    write_classes(root / "train", {"x": 2})
    write_classes(root / "test", {"x": 1, "z": 1})
    with pytest.raises(UserError, match=r"class folders that .*train lacks: z"):
        folder(root).load()
    root2 = tmp_path / "split2"
    write_classes(root2 / "train", {"x": 2})
    (root2 / "test").mkdir(parents=True)
    Image.new("L", (4, 4)).save(root2 / "test" / "a.png")
    with pytest.raises(UserError, match="has class folders but .*test has none"):
        folder(root2).load()


def test_the_seeded_split_is_reproducible_disjoint_and_per_class():
    labels = np.repeat(np.arange(3), [50, 30, 20])
    a_train, a_test = seeded_split(labels, 0.1, seed=7)
    b_train, b_test = seeded_split(labels, 0.1, seed=7)
    c_train, c_test = seeded_split(labels, 0.1, seed=8)
    assert np.array_equal(a_test, b_test) and np.array_equal(a_train, b_train)
    assert not np.array_equal(a_test, c_test)
    assert set(a_train).isdisjoint(a_test) and len(a_train) + len(a_test) == 100
    assert np.bincount(labels[a_test]).tolist() == [5, 3, 2]


def test_the_split_seed_option_moves_the_split(tmp_path):
    root = tmp_path / "imgs"
    write_classes(root, {"a": 20, "b": 20})

    def test_values(seed):
        d = folder(root, channels=1, test_split=0.25, split_seed=seed).load()
        return sorted(all_rows(d.test_x)[:, 0, 0, 0].tolist())

    assert test_values(3) == test_values(3) != test_values(4)


# -- errors a user can cause -------------------------------------------------------------------
def test_bad_paths_are_one_line(tmp_path):
    cases = {tmp_path / "nope": "does not exist", tmp_path / "empty": "is empty"}
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.png").write_bytes(b"x")
    cases[tmp_path / "file.png"] = "is a file, not a folder"
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    (tmp_path / "docs" / "b.csv").write_text("x")
    cases[tmp_path / "docs"] = r"no image files under .*found 2 other files: \.csv, \.txt"
    for path, message in cases.items():
        with pytest.raises(UserError, match=message) as err:
            folder(path).load()
        assert "\n" not in str(err.value) and "dataset.path" in str(err.value)


def test_a_missing_path_is_refused_before_anything_is_read():
    from vae_train.build import instantiate_node
    from vae_train.data import DataSet

    validate(compose_cfg(["dataset=folder"]))     # the default (null) composes and checks
    with pytest.raises(UserError, match=r"dataset=folder needs a folder of images: "
                                        r"dataset.path=DIR"):
        instantiate_node(compose_cfg(["dataset=folder"]).dataset, "dataset", DataSet)
    with pytest.raises(UserError, match="dataset.resize='zoom' is invalid"):
        validate(compose_cfg(["dataset=folder", "dataset.path=x", "dataset.resize=zoom"]))
    with pytest.raises(UserError, match="dataset.channels=4 is invalid"):
        validate(compose_cfg(["dataset=folder", "dataset.path=x", "dataset.channels=4"]))


def test_mixed_sizes_without_image_size_name_two_files(tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    Image.new("L", (10, 10)).save(root / "a.png")
    Image.new("L", (10, 10)).save(root / "b.png")
    Image.new("L", (12, 9)).save(root / "c.png")
    with pytest.raises(UserError) as err:
        folder(root).load()
    msg = str(err.value)
    assert "\n" not in msg and "a.png" in msg and "c.png" in msg and "12x9" in msg
    assert "dataset.image_size" in msg
    assert folder(root, image_size=8).load().shape == (1, 8, 8)    # the fix works


def test_channels_null_follows_the_images(tmp_path):
    """Grey files (L, 16-bit, a palette of greys) give 1 channel; one colour file among them
    gives 3; an explicit choice wins."""
    grey = tmp_path / "grey"
    grey.mkdir()
    Image.new("L", (6, 6), 40).save(grey / "a.png")
    Image.new("I;16", (6, 6), 5000).save(grey / "b.png")
    p = Image.new("P", (6, 6), 1)
    p.putpalette([0, 0, 0, 90, 90, 90] + [0] * 762)
    p.save(grey / "c.png")
    assert folder(grey, channels=None).load().shape == (1, 6, 6)
    assert folder(grey, channels=3).load().shape == (3, 6, 6)
    Image.new("RGB", (6, 6), (200, 10, 10)).save(grey / "d.png")
    assert folder(grey, channels=None).load().shape == (3, 6, 6)


def _truncated(path):
    Image.new("RGB", (32, 32), (200, 10, 10)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_files_that_do_not_decode_are_skipped_and_named(tmp_path, caplog):
    root = tmp_path / "imgs"
    write_classes(root, {"a": 5, "b": 5}, size=(32, 32))
    _truncated(root / "a" / "zz_truncated.png")
    (root / "b" / "not_really.jpg").write_bytes(b"this is text")
    with caplog.at_level(logging.WARNING, logger="vae_train.data.decode_cache"):
        data = folder(root, channels=1).load()
    assert len(data.train_x) + len(data.test_x) == 10               # 12 files, 2 skipped
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "skipped 2 of 12" in warning
    assert "a/zz_truncated.png" in warning and "b/not_really.jpg" in warning
    assert "truncated" in warning                                    # PIL's reason
    with pytest.raises(UserError, match=r"cannot decode .*zz_truncated\.png: .*truncated") as e:
        folder(root, bad_files="error").load()
    assert "\n" not in str(e.value) and "dataset.bad_files=skip" in str(e.value)


def test_only_undecodable_files_is_one_line(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    for i in range(3):
        (root / f"{i}.png").write_bytes(b"garbage")
    with pytest.raises(UserError, match="none of the 3 image files .* can be read"):
        folder(root).load()


# -- preparing an image ------------------------------------------------------------------------
def prep(**kw):
    return Preprocess(**{"image_size": None, "resize": "crop", "channels": 3, **kw})


def test_rgba_is_composited_onto_black(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., :3] = (200, 100, 50)
    a[:, :2, 3] = 255          # left half opaque
    a[:, 2:, 3] = 128          # right half half-transparent
    Image.fromarray(a, "RGBA").save(tmp_path / "rgba.png")
    out = decode_image(tmp_path / "rgba.png", prep())
    assert out.shape == (3, 4, 4)
    assert out[:, 0, 0].tolist() == [200, 100, 50]
    assert np.abs(out[:, 0, 3].astype(int) - np.round(np.array([200, 100, 50]) * 128 / 255)
                  ).max() <= 1
    grey = decode_image(tmp_path / "rgba.png", prep(channels=1))
    luma = round(200 * 0.299 + 100 * 0.587 + 50 * 0.114)
    assert grey.shape == (1, 4, 4) and abs(int(grey[0, 0, 0]) - luma) <= 1


def test_palette_images_are_converted(tmp_path):
    p = Image.new("P", (4, 2))
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    p.putdata([1, 1, 2, 2, 0, 0, 1, 2])
    p.save(tmp_path / "pal.png")
    out = decode_image(tmp_path / "pal.png", prep())
    assert out[:, 0, 0].tolist() == [255, 0, 0] and out[:, 0, 2].tolist() == [0, 0, 255]
    assert out[:, 1, 0].tolist() == [0, 0, 0]
    p.info["transparency"] = 2                  # blue is transparent: black
    p.save(tmp_path / "pal_t.png", transparency=2)
    out = decode_image(tmp_path / "pal_t.png", prep())
    assert out[:, 0, 0].tolist() == [255, 0, 0] and out[:, 0, 2].tolist() == [0, 0, 0]
    p.save(tmp_path / "pal.gif")                # GIF: its first frame
    assert decode_image(tmp_path / "pal.gif", prep())[:, 0, 0].tolist() == [255, 0, 0]


def test_grey_and_colour_channels(tmp_path):
    Image.new("L", (3, 3), 77).save(tmp_path / "g.png")
    Image.new("RGB", (3, 3), (10, 200, 30)).save(tmp_path / "c.png")
    assert decode_image(tmp_path / "g.png", prep(channels=3))[:, 1, 1].tolist() == [77] * 3
    assert decode_image(tmp_path / "g.png", prep(channels=1)).shape == (1, 3, 3)
    luma = round(10 * 0.299 + 200 * 0.587 + 30 * 0.114)
    assert abs(int(decode_image(tmp_path / "c.png", prep(channels=1))[0, 1, 1]) - luma) <= 1
    la = Image.new("LA", (2, 2), (100, 255))
    la.save(tmp_path / "la.png")
    assert decode_image(tmp_path / "la.png", prep(channels=1))[0, 0, 0] == 100


def test_16bit_grey_cmyk_and_other_formats(tmp_path):
    Image.fromarray(np.full((4, 4), 65535 // 2, np.uint16)).save(tmp_path / "deep.png")
    assert decode_image(tmp_path / "deep.png", prep(channels=1))[0, 0, 0] == 127
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.tif")
    assert decode_image(tmp_path / "cmyk.tif", prep())[:, 0, 0].tolist() == [255, 0, 0]
    for ext in ("bmp", "webp", "tiff", "gif"):
        Image.new("RGB", (5, 5), (255, 255, 255)).save(tmp_path / f"w.{ext}",
                                                       **({"lossless": True} if ext == "webp"
                                                          else {}))
        assert decode_image(tmp_path / f"w.{ext}", prep()).min() >= 250, ext


def stripes(path, w, h):
    """Vertical thirds: red | green | blue."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, :w // 3, 0] = 255
    a[:, w // 3:2 * w // 3, 1] = 255
    a[:, 2 * w // 3:, 2] = 255
    Image.fromarray(a).save(path)


def test_resize_crop_keeps_the_centre_square(tmp_path):
    stripes(tmp_path / "s.png", 30, 10)          # the centre 10x10 square is the green third
    out = decode_image(tmp_path / "s.png", prep(image_size=10, resize="crop"))
    assert out.shape == (3, 10, 10)
    assert (out[1] == 255).all() and (out[0] == 0).all() and (out[2] == 0).all()
    stripes(tmp_path / "big.png", 60, 20)        # and when it shrinks: the interior is green
    out = decode_image(tmp_path / "big.png", prep(image_size=10, resize="crop"))
    assert (out[1, :, 1:9] == 255).all() and (out[0, :, 1:9] == 0).all()


def test_resize_pad_keeps_everything_and_pads_with_black(tmp_path):
    stripes(tmp_path / "s.png", 60, 20)
    out = decode_image(tmp_path / "s.png", prep(image_size=15, resize="pad"))
    assert out.shape == (3, 15, 15)
    # 60x20 -> 15x5, centred: rows 5..9 hold it, rows 0..4 and 10..14 are black
    assert (out[:, :5] == 0).all() and (out[:, 10:] == 0).all()
    band = out[:, 5:10]
    assert (band[0, :, 1:4] == 255).all() and (band[1, :, 6:9] == 255).all()
    assert (band[2, :, 11:14] == 255).all() and (band[1, :, 1:4] == 0).all()


def test_a_jpeg_decoded_at_reduced_scale_keeps_its_geometry(tmp_path):
    stripes(tmp_path / "s.png", 480, 160)
    Image.open(tmp_path / "s.png").save(tmp_path / "s.jpg", quality=95)
    out = decode_image(tmp_path / "s.jpg", prep(image_size=16, resize="crop")).astype(int)
    assert (out[1, :, 2:14] > 230).all() and (out[0, :, 2:14] < 25).all()   # the green centre
    pad = decode_image(tmp_path / "s.jpg", prep(image_size=24, resize="pad")).astype(int)
    assert (pad[:, :8] == 0).all() and (pad[:, 16:] == 0).all()              # 24x8 band
    assert (pad[0, 9:15, 1:7] > 230).all() and (pad[2, 9:15, 17:23] > 230).all()


# -- the decode cache --------------------------------------------------------------------------
@pytest.fixture
def counted(monkeypatch):
    """Count decode_image calls (in this process: sets of this size decode without a pool)."""
    calls = {"n": 0}
    real = decode_cache.decode_image

    def counting(path, prep):
        calls["n"] += 1
        return real(path, prep)

    monkeypatch.setattr(decode_cache, "decode_image", counting)
    return calls


def entries(cache):
    return sorted(p.name for p in (cache / "images").glob("*.npy"))


def test_a_second_load_decodes_nothing(tmp_path, private_cache, monkeypatch, caplog):
    root = tmp_path / "imgs"
    write_classes(root, {"a": 4, "b": 4})
    first = folder(root, channels=1).load()
    assert len(entries(private_cache)) == 1
    manifest = json.loads(next((private_cache / "images").glob("*.json")).read_text())
    assert manifest["shape"] == [8, 1, 10, 12] and manifest["meta"]["classes"] == ["a", "b"]

    def fail(*a, **k):
        raise AssertionError("decoded on a cache hit")

    monkeypatch.setattr(decode_cache, "decode_image", fail)
    with caplog.at_level(logging.INFO, logger="vae_train.data.decode_cache"):
        second = folder(root, channels=1).load()
    assert "decode cache hit" in caplog.text
    assert torch.equal(all_rows(first.train_x), all_rows(second.train_x))
    assert torch.equal(first.test_y, second.test_y)
    assert isinstance(second.train_x.base, np.memmap)             # mapped, not read


def test_other_options_are_another_entry(tmp_path, private_cache, counted):
    root = tmp_path / "imgs"
    write_classes(root, {"a": 3})
    folder(root, channels=1).load()
    folder(root, channels=3).load()
    folder(root, channels=3, image_size=6).load()
    assert counted["n"] == 9 and len(entries(private_cache)) == 3


def test_a_changed_added_or_removed_file_rebuilds(tmp_path, private_cache, counted):
    root = tmp_path / "imgs"
    write_classes(root, {"a": 4, "b": 4})
    folder(root, channels=1).load()
    assert counted["n"] == 8
    folder(root, channels=1).load()
    assert counted["n"] == 8                                         # hit
    st = os.stat(root / "a" / "000.png")
    os.utime(root / "a" / "000.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched
    folder(root, channels=1).load()
    assert counted["n"] == 16 and len(entries(private_cache)) == 1  # the old entry is removed
    Image.new("L", (12, 10), 5).save(root / "b" / "new.png")        # added
    d = folder(root, channels=1).load()
    assert counted["n"] == 25 and len(d.train_x) + len(d.test_x) == 9
    (root / "a" / "001.png").unlink()                                # removed
    d = folder(root, channels=1).load()
    assert counted["n"] == 33 and len(d.train_x) + len(d.test_x) == 8
    assert len(entries(private_cache)) == 1


@pytest.mark.parametrize("damage", ["truncate", "manifest", "flip", "no_manifest", "shape"])
def test_a_damaged_entry_is_rebuilt_with_a_warning(tmp_path, private_cache, counted, caplog,
                                                   damage):
    root = tmp_path / "imgs"
    write_classes(root, {"a": 4, "b": 4})
    good = folder(root, channels=1).load()
    npy = next((private_cache / "images").glob("*.npy"))
    manifest = npy.with_suffix(".json")
    raw = npy.read_bytes()
    if damage == "truncate":
        npy.write_bytes(raw[:-100])
    elif damage == "manifest":
        manifest.write_text(manifest.read_text()[:40] + "}{garbled")
    elif damage == "flip":                        # same size, one pixel's bits flipped
        npy.write_bytes(raw[:-7] + bytes([raw[-7] ^ 0xFF]) + raw[-6:])
    elif damage == "no_manifest":                 # a build that died before its manifest
        manifest.unlink()
    elif damage == "shape":
        m = json.loads(manifest.read_text())
        m["shape"][0] = 7
        manifest.write_text(json.dumps(m))
    with caplog.at_level(logging.WARNING, logger="vae_train.data.decode_cache"):
        again = folder(root, channels=1).load()
    assert counted["n"] == 16                                        # decoded again
    assert "is not usable" in caplog.text
    reason = {"truncate": "truncated", "manifest": "unreadable", "flip": "CRC-32",
              "no_manifest": "unreadable", "shape": "shape"}[damage]
    assert reason in caplog.text
    assert torch.equal(all_rows(good.train_x), all_rows(again.train_x))
    caplog.clear()
    folder(root, channels=1).load()                                  # and then it is a hit
    assert counted["n"] == 16 and "is not usable" not in caplog.text


def test_skipped_files_are_remembered_by_the_cache(tmp_path, counted, caplog):
    root = tmp_path / "imgs"
    write_classes(root, {"a": 4})
    _truncated(root / "a" / "bad.png")
    folder(root, channels=1, image_size=8).load()
    n = counted["n"]
    with caplog.at_level(logging.WARNING, logger="vae_train.data.decode_cache"):
        d = folder(root, channels=1, image_size=8).load()
    assert counted["n"] == n and "a/bad.png" in caplog.text and "skipped 1 of 5" in caplog.text
    assert len(d.train_x) + len(d.test_x) == 4


def test_cache_false_decodes_in_memory_and_writes_nothing(tmp_path, private_cache, counted):
    root = tmp_path / "imgs"
    write_classes(root, {"a": 3, "b": 3})
    d = folder(root, channels=1, cache=False).load()
    assert isinstance(d.train_x, torch.Tensor) and not private_cache.exists()
    folder(root, channels=1, cache=False).load()
    assert counted["n"] == 12
    cached = folder(root, channels=1).load()
    assert torch.equal(d.train_x, all_rows(cached.train_x))


def test_a_pool_of_workers_decodes_the_same(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    write_classes(root, {"a": 30, "b": 30}, fmt="JPEG", mode="RGB", size=(40, 30))
    monkeypatch.setattr(decode_cache, "MIN_POOL_FILES", 0)
    pooled = folder(root, workers=2, image_size=16, cache_dir=str(tmp_path / "c1")).load()
    alone = folder(root, workers=1, image_size=16, cache=False).load()
    assert torch.equal(all_rows(pooled.train_x), alone.train_x)
    assert torch.equal(pooled.train_y, alone.train_y)
    _truncated(root / "a" / "zzz.jpg")
    with pytest.raises(UserError, match="zzz.jpg"):
        folder(root, workers=2, image_size=16, bad_files="error",
               cache_dir=str(tmp_path / "c2")).load()
    assert not list((tmp_path / "c2").rglob("*.tmp"))             # no half-written file left


def test_a_worker_that_dies_is_one_line(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    write_classes(root, {"a": 20})
    monkeypatch.setattr(decode_cache, "MIN_POOL_FILES", 0)
    monkeypatch.setattr(decode_cache, "decode_image", lambda path, prep: os._exit(9))
    with pytest.raises(UserError, match="died .*dataset.workers"):
        folder(root, workers=2).load()
    assert not list(decode_cache.cache_root().rglob("*.tmp"))


def test_where_the_cache_lives(monkeypatch, tmp_path):
    monkeypatch.setenv("VAE_CACHE_DIR", str(tmp_path / "v"))
    assert cache_root(str(tmp_path / "o")) == tmp_path / "o"              # the option wins
    assert cache_root("~/x") == Path.home() / "x"
    assert cache_root() == tmp_path / "v"
    monkeypatch.delenv("VAE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "vae-train"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "vae-train"


def test_an_unwritable_cache_dir_is_one_line(tmp_path):
    root = tmp_path / "imgs"
    write_classes(root, {"a": 3})
    (tmp_path / "ro").write_text("a file where the folder should be")
    with pytest.raises(UserError, match="cannot write the decode cache .*dataset.cache=false"):
        folder(root, cache_dir=str(tmp_path / "ro")).load()


# -- through the config and the command line ---------------------------------------------------
def test_the_config_builds_it(tmp_path):
    root = tmp_path / "imgs"
    write_classes(root, {"a": 5, "b": 5})
    cfg = compose_cfg(["dataset=folder", f"dataset.path={root}", "dataset.image_size=8",
                       "dataset.channels=1", "dataset.train_size=6"])
    validate(cfg)
    data = load_image_data(cfg.dataset)
    assert data.shape == (1, 8, 8) and len(data.train_x) == 6 and data.classes == ["a", "b"]


@pytest.mark.slow
def test_a_conditional_model_trains_on_a_folder(tmp_path):
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for c in ("across", "down"):
        (root / c).mkdir(parents=True)
        for k in range(60):
            a = np.zeros((16, 16), np.uint8)
            at = rng.integers(0, 14)
            if c == "across":
                a[at:at + 2] = 255
            else:
                a[:, at:at + 2] = 255
            Image.fromarray(a).save(root / c / f"{k}.png")
    run = tmp_path / "run"
    proc = run_cli(["model=cvae", "dataset=folder", f"dataset.path={root}", "dataset.channels=1",
                    "trainer.epochs=1", "trainer.batch_size=32", "trainer.progress=false",
                    "device=cpu", f"hydra.run.dir={run}"], tmp_path,
                   env={"VAE_CACHE_DIR": str(tmp_path / "cache")})
    metrics = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(metrics["test_loss"])
    assert "decoded 120 images" in proc.stderr + proc.stdout
