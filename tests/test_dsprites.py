"""dataset=dsprites: the renderer, the factor grid, the cache, and a run scored by evaluate."""

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg, run_cli
from vae_train.config import validate
from vae_train.build import load_image_data
from vae_train.data import DataModule, dsprites
from vae_train.data.dsprites import (FACTOR_SIZES, NUM_IMAGES, cache_path, factors_to_index,
                                     index_to_factors, load_grid, render, split_indices)
from vae_train.errors import UserError

SQUARE, ELLIPSE, HEART = 0, 1, 2


def one(shape=0, scale=5, orientation=0, pos_x=16, pos_y=16):
    return render([[shape, scale, orientation, pos_x, pos_y]])[0].astype(float)


def centroid(img):
    ys, xs = np.nonzero(img)
    return ys.mean(), xs.mean()


def principal_angle(img):
    """Angle of the mask's long axis, counter-clockwise from the x axis, in [0, pi)."""
    ys, xs = np.nonzero(img)
    x, y = xs - xs.mean(), -(ys - ys.mean())     # y up
    return (0.5 * math.atan2(2 * (x * y).mean(), (x * x).mean() - (y * y).mean())) % math.pi


# -- the renderer -------------------------------------------------------------------------------
def test_images_are_binary_64x64_and_the_shapes_differ():
    imgs = [one(s) for s in (SQUARE, ELLIPSE, HEART)]
    assert all(i.shape == (64, 64) and set(np.unique(i)) == {0, 1} for i in imgs)
    for a in range(3):
        for b in range(a + 1, 3):
            assert np.abs(imgs[a] - imgs[b]).sum() > 40
    areas = [i.sum() for i in imgs]                 # sizes like the original's: comparable
    assert max(areas) / min(areas) < 1.6 and 150 < min(areas) and max(areas) < 400


@pytest.mark.parametrize("shape", [SQUARE, ELLIPSE, HEART])
def test_scale_grows_the_area_and_position_moves_the_centroid(shape):
    areas = [one(shape, scale=s, orientation=7).sum() for s in range(6)]
    assert all(b > a for a, b in zip(areas, areas[1:]))
    assert areas[-1] / areas[0] == pytest.approx(4, rel=0.15)      # scale 0.5 -> 1: area x4
    y0, x0 = centroid(one(shape, pos_x=0, pos_y=31))
    y1, x1 = centroid(one(shape, pos_x=31, pos_y=31))
    y2, x2 = centroid(one(shape, pos_x=31, pos_y=0))
    assert x1 - x0 == pytest.approx(31 * 1.25, abs=0.5) and y1 == pytest.approx(y0, abs=0.3)
    assert y1 - y2 == pytest.approx(31 * 1.25, abs=0.5) and x1 == pytest.approx(x2, abs=0.3)
    # at every orientation and scale 1 the sprite stays inside the frame
    for o in range(0, 40, 3):
        img = one(shape, orientation=o, pos_x=0, pos_y=0)
        assert img[0].sum() + img[:, 0].sum() <= 2


def test_orientation_rotates_the_sprite_counter_clockwise():
    values = np.linspace(0, 2 * math.pi, 40)
    for o in (0, 3, 8, 13, 25):
        got = principal_angle(one(ELLIPSE, orientation=o))
        want = values[o] % math.pi
        assert min(abs(got - want), math.pi - abs(got - want)) < math.radians(3)
    # a square turned by ~45 degrees is a diamond: wider bounding box, same area
    square, diamond = one(SQUARE, orientation=0), one(SQUARE, orientation=5)   # 46 degrees
    width = lambda m: np.ptp(np.nonzero(m.any(0))[0]) + 1                     # noqa: E731
    assert width(diamond) / width(square) == pytest.approx(math.sqrt(2), rel=0.1)
    assert diamond.sum() == pytest.approx(square.sum(), rel=0.05)
    assert np.array_equal(one(HEART, orientation=0), one(HEART, orientation=39))  # 0 == 2 pi


def test_heart_points_down_and_is_not_symmetric_under_a_half_turn():
    heart = one(HEART, pos_x=16, pos_y=16)
    ys, xs = np.nonzero(heart)
    cy, cx = ys.mean(), xs.mean()
    assert cy < (ys.min() + ys.max()) / 2 - 1          # lobes up (heavier), point down
    iy, ix = np.round(2 * cy - ys).astype(int), np.round(2 * cx - xs).astype(int)
    half_turn = np.zeros_like(heart)
    half_turn[iy, ix] = 1
    assert (half_turn * heart).sum() / heart.sum() < 0.85
    mirror = heart[:, ::-1]                             # but mirror-symmetric left-right
    shift = int(round(2 * cx - 63))
    assert (np.roll(mirror, shift, axis=1) * heart).sum() / heart.sum() > 0.9
    for s in (SQUARE, ELLIPSE):
        ys, _ = np.nonzero(one(s))
        assert ys.mean() == pytest.approx((ys.min() + ys.max()) / 2, abs=0.5)


def test_grid_size_and_mixed_radix_index():
    assert NUM_IMAGES == 737280 == 3 * 6 * 40 * 32 * 32
    idx = np.random.default_rng(0).integers(0, NUM_IMAGES, 1000)
    assert np.array_equal(factors_to_index(index_to_factors(idx)), idx)
    assert factors_to_index([[0, 0, 0, 0, 1], [0, 0, 0, 1, 0], [0, 0, 1, 0, 0],
                             [1, 0, 0, 0, 0], [2, 5, 39, 31, 31]]).tolist() == \
        [1, 32, 1024, 245760, NUM_IMAGES - 1]
    with pytest.raises(ValueError, match="out of range"):
        render([[0, 6, 0, 0, 0]])
    assert np.array_equal(render(index_to_factors(idx[:50])), render(index_to_factors(idx[:50])))


def test_train_and_test_are_disjoint_seeded_subsets():
    tr, te = split_indices(500, 100, seed=0)
    assert len(tr) == 500 and len(te) == 100 and not set(tr) & set(te)
    tr2, te2 = split_indices(500, 100, seed=0)
    assert np.array_equal(tr, tr2) and np.array_equal(te, te2)
    assert not np.array_equal(split_indices(500, 100, seed=1)[0], tr)
    tr, te = split_indices(None, None, seed=0)          # null: 10% test, the rest train
    assert len(te) == 73728 and len(tr) + len(te) == NUM_IMAGES
    with pytest.raises(UserError, match="num_train=700000 and dataset.num_test=100000"):
        split_indices(700000, 100000, 0)
    with pytest.raises(UserError, match=r"dataset.num_train=1 is invalid"):
        load_image_data(ds_cfg("/nonexistent", num_train=1, num_test=10, cache=False))


# -- the data set and its cache ------------------------------------------------------------------
def ds_cfg(root, **kw):
    base = dict(_target_="vae_train.data.dsprites.DSprites", name="dsprites", root=str(root),
                num_train=600, num_test=200, generator_seed=0, cache=True, train_size=None,
                test_size=None)
    return OmegaConf.create({**base, **kw})


@pytest.fixture(scope="module")
def grid_root(tmp_path_factory):
    """A data root holding the rendered grid (rendered once for this module: about 6 s)."""
    root = tmp_path_factory.mktemp("data")
    load_grid(root)
    return root


@pytest.mark.slow
def test_first_load_renders_and_caches_later_loads_read_the_cache(grid_root, monkeypatch,
                                                                   caplog):
    path = cache_path(grid_root)
    assert path == grid_root / "dsprites" / "dsprites_v1.npz" and path.is_file()
    assert not list(path.parent.glob(".*tmp"))         # written atomically
    monkeypatch.setattr(dsprites, "render_grid", lambda *a, **k: pytest.fail("re-rendered"))
    with caplog.at_level(logging.INFO, logger="vae_train.data.dsprites"):
        data = load_image_data(ds_cfg(grid_root))
    assert "reading dSprites from" in caplog.text
    assert data.train_x.shape == (600, 1, 64, 64) and data.train_x.dtype == torch.uint8
    assert set(data.train_x.unique().tolist()) == {0, 255}
    assert data.classes == ["square", "ellipse", "heart"]
    assert data.train_factors.shape == (600, 5) and data.test_factors.shape == (200, 5)
    assert torch.equal(data.train_y, data.train_factors[:, 0])
    # the cached images are the renderer's, at the factors kept with them
    assert np.array_equal(data.train_x[:, 0].numpy() // 255, render(data.train_factors.numpy()))
    assert np.array_equal(data.test_x[:, 0].numpy() // 255, render(data.test_factors.numpy()))
    train_idx = set(factors_to_index(data.train_factors.numpy()))
    assert not train_idx & set(factors_to_index(data.test_factors.numpy()))
    # cache=false renders the same subsets without the file
    fresh = load_image_data(ds_cfg(grid_root / "none", cache=False))
    assert torch.equal(fresh.train_x, data.train_x) and torch.equal(fresh.test_y, data.test_y)
    assert not (grid_root / "none").exists()
    small = load_image_data(ds_cfg(grid_root, train_size=50))
    assert len(small.train_x) == len(small.train_factors) == 50
    dm = DataModule(data, torch.device("cpu"))
    assert dm.factor_grid.names == ["shape", "scale", "orientation", "pos_x", "pos_y"]
    assert dm.factor_grid.sizes == list(FACTOR_SIZES)


def test_a_corrupt_or_stale_cache_is_rendered_again(tmp_path, monkeypatch, caplog):
    packed = np.zeros((NUM_IMAGES, 64, 8), np.uint8)      # stands in for a render (fast)
    calls = []
    monkeypatch.setattr(dsprites, "render_grid",
                        lambda *a, **k: calls.append(1) or packed)
    path = cache_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 not really a zip file")
    with caplog.at_level(logging.WARNING, logger="vae_train.data.dsprites"):
        assert load_grid(tmp_path).shape == (NUM_IMAGES, 64, 8)
    assert calls == [1] and "unreadable" in caplog.text and str(path) in caplog.text
    assert np.load(path)["images"].shape == (NUM_IMAGES, 64, 8)  # rewritten, readable
    np.savez(path, images=packed[:10], version=np.int64(0), factor_sizes=np.array(FACTOR_SIZES))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vae_train.data.dsprites"):
        load_grid(tmp_path)
    assert calls == [1, 1] and "another version" in caplog.text
    def refuse(path, write):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(dsprites, "atomic_write", refuse)
    with pytest.raises(UserError, match="cannot write the dSprites cache .*Permission denied.*"
                                        "dataset.cache=false"):
        load_grid(tmp_path / "elsewhere")


def test_unusable_roots_and_sizes_are_clear_errors(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        load_grid(tmp_path / "afile")
    with pytest.raises(UserError, match="dataset.num_test=0 is invalid"):
        load_image_data(ds_cfg(tmp_path, num_test=0, cache=False))
    # null sizes are the data set's to check; elsewhere they stay invalid
    validate(compose_cfg(["dataset=dsprites", "dataset.num_train=null", "dataset.num_test=null"]))
    with pytest.raises(UserError, match="dataset.num_train=None is invalid"):
        validate(compose_cfg(["dataset=synthetic", "dataset.num_train=null"]))


# -- a run, scored --------------------------------------------------------------------------------
@pytest.mark.slow
def test_conv_vae_trains_on_dsprites_and_evaluate_writes_the_metrics(tmp_path, call,
                                                                      monkeypatch):
    run = tmp_path / "run"
    run_cli(["dataset=dsprites", "dataset.cache=false", "dataset.num_train=600",
             "dataset.num_test=100", "model=conv_vae", "model.channels=[8,8,16,16]",
             "model.hidden_dim=32", "model.latent_dim=4", "loss=beta_vae", "trainer.epochs=1",
             "trainer.batch_size=64", "trainer.progress=false", "device=cpu",
             f"hydra.run.dir={run}"], tmp_path)
    opts = ["k=2", "n=50", "metric_samples=400", "factorvae_votes=40", "factorvae_l=10",
            "progress=false"]
    out = call("vae_train.evaluate", [f"run={run}", *opts])
    result = json.loads((run / "eval.json").read_text())
    assert 0 <= result["mig"] <= 1 and 0 <= result["factorvae_metric"] <= 1
    d = result["disentanglement"]
    assert np.array(d["mutual_info"]).shape == (4, 5) and d["samples"] == 400
    assert d["votes_fit"] == 20 and d["votes_eval"] == 20 and d["group"] == 10
    assert "MIG" in out.stdout and "FactorVAE metric" in out.stdout and "nll" in result
    assert "not a normalised density" not in out.stdout    # dSprites pixels are binary
    again = call("vae_train.evaluate", [f"run={run}", *opts])
    assert json.loads((run / "eval.json").read_text())["mig"] == result["mig"]   # seeded
    assert again.returncode == 0
    # a model without a code: the metrics are skipped with a note
    from abc import ABC

    from vae_train import evaluate

    class NoCode(ABC):   # no model has this capability: as a model without a continuous code
        pass

    monkeypatch.setattr(evaluate, "HasCode", NoCode)
    out = call("vae_train.evaluate", [f"run={run}", *opts])
    result = json.loads((run / "eval.json").read_text())
    assert "mig" not in result and "disentanglement metrics skipped" in result["note"]
    bad = call("vae_train.evaluate", [f"run={run}", "metric_samples=1"], check=False)
    assert bad.returncode == 2 and "metric_samples=1 is invalid" in bad.stderr
    assert Path(run / "metrics.json").is_file()
