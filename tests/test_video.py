"""model=video_vae (hybrid conv-recurrent VAE, content f + dynamics z_t), dataset=moving_mnist
(generated from an MNIST-format set), video arrays, and the video pictures."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose_cfg, load_script, run_cli, run_module, write_mnist_like
from vae_train.build import build, load_image_data
from vae_train.data import moving_mnist as mm
from vae_train.data.base import ImageData
from vae_train.data.rows import Rows, as_tensor
from vae_train.data.validate import check_image_data
from vae_train.distributions import BernoulliLikelihood, GaussianLikelihood
from vae_train.errors import UserError
from vae_train.models.video_vae import Core, VideoVAE, gaussian_kl
from vae_train.distributions import DiagGaussian
from vae_train.pictures import training_figures
from vae_train.pictures.video import (content_swap_grid, dynamics_grid, prediction_strips,
                                      strip, write_gif)

SMALL_MODEL = ["model=video_vae", "model.channels=[16,32]", "model.hidden_dim=64",
               "model.feature_dim=64", "model.content_dim=8", "model.dynamics_dim=4"]


@pytest.fixture(scope="module")
def idx_root(tmp_path_factory):
    """A tiny MNIST-like set (bright squares) in torchvision's layout, for source=mnist."""
    root = tmp_path_factory.mktemp("idx")
    write_mnist_like(root / "MNIST" / "raw", 60, 30)
    return root


def moving(root, *extra):
    return ["dataset=moving_mnist", "dataset.source=mnist", f"dataset.root={root}",
            "dataset.num_train=40", "dataset.num_test=10", "dataset.frames=5",
            "dataset.image_size=24", "dataset.object_size=10", *extra]


# -- dataset=moving_mnist ----------------------------------------------------------------------
def test_bouncing_stays_in_the_frame_and_moves_at_speed():
    g = np.random.default_rng(0)
    c = mm.bounce(200, 30, 2, 20, 3.0, g)
    assert c.shape == (200, 2, 30, 2) and c.min() >= 0 and c.max() <= 20
    step = np.abs(np.diff(c, axis=2)).max(-1)
    assert step.max() <= 4 and step.mean() > 1        # it moves, at most ~speed per frame
    still = mm.bounce(5, 4, 1, 20, 0.0, np.random.default_rng(1))
    assert (still == still[:, :, :1]).all()           # speed 0: objects stand still


def test_moving_mnist_is_seeded_split_and_in_range(idx_root):
    data = load_image_data(compose_cfg(moving(idx_root)).dataset)
    assert data.train_x.shape == (40, 5, 1, 24, 24) and data.test_x.shape == (10, 5, 1, 24, 24)
    assert data.train_x.dtype == torch.uint8 and data.shape == (5, 1, 24, 24)
    assert data.classes == [str(i) for i in range(10)] and data.train_y.max() < 10
    # objects are in every frame, and they move
    assert (data.train_x.flatten(2).amax(-1) > 0).all()
    assert not torch.equal(data.train_x[:, 0], data.train_x[:, -1])
    again = load_image_data(compose_cfg(moving(idx_root, "dataset.cache=false")).dataset)
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.test_y, data.test_y)
    other = load_image_data(compose_cfg(moving(idx_root, "dataset.generator_seed=5",
                                                "dataset.cache=false")).dataset)
    assert not torch.equal(other.train_x, data.train_x)


def test_test_sequences_use_the_test_images():
    train_imgs = torch.zeros(5, 1, 8, 8, dtype=torch.uint8)
    train_imgs[:, :, 2:6, 2:6] = 100
    test_imgs = torch.full((5, 1, 8, 8), 200, dtype=torch.uint8)
    x, y = mm.make_moving(train_imgs, torch.arange(5), 6, 3, 16, 1, 8, 2.0, seed=0,
                          progress=False)
    assert x.max() == 100 and y.tolist() == sorted(y.tolist(), key=lambda _: 0)
    x2, _ = mm.make_moving(test_imgs, torch.arange(5), 6, 3, 16, 1, 8, 2.0, seed=1,
                           progress=False)
    assert x2.max() == 200 and (x2 > 0).flatten(2).sum(-1).eq(64).all()   # one 8x8 object


def test_second_load_reads_the_cache(idx_root, monkeypatch):
    cfg = compose_cfg(moving(idx_root, "dataset.generator_seed=7"))
    first = load_image_data(cfg.dataset)

    def fail(*a, **k):
        raise AssertionError("generated again")

    monkeypatch.setattr(mm, "make_moving", fail)
    second = load_image_data(cfg.dataset)
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_x, second.test_x)
    # a damaged cache is generated again (with the real generator), not an error
    monkeypatch.undo()
    ds = mm.MovingMNIST(**{k: v for k, v in cfg.dataset.items() if k != "_target_"})
    path = ds.cache_path(ds._source_files())
    path.write_bytes(b"not a zip")
    third = load_image_data(cfg.dataset)
    assert torch.equal(third.train_x, first.train_x)


def test_missing_source_says_where_it_looked_and_how_to_install(tmp_path):
    with pytest.raises(UserError) as e:
        load_image_data(compose_cfg(moving(tmp_path, "dataset.source=kmnist")).dataset)
    msg = str(e.value)
    assert "\n" not in msg and "dataset.source=kmnist" in msg and str(tmp_path) in msg
    assert "dataset.root" in msg
    from vae_train.data.torchvision_sets import FashionMNIST
    assert "apt-get install dataset-fashion-mnist" in FashionMNIST.hint


@pytest.mark.parametrize("bad,key", [("dataset.frames=1", "dataset.frames"),
                                     ("dataset.source=cifar10", "dataset.source"),
                                     ("dataset.speed=-1", "dataset.speed")])
def test_bad_options_are_one_line(idx_root, bad, key):
    with pytest.raises(UserError, match=f"^{key}="):
        load_image_data(compose_cfg(moving(idx_root, bad)).dataset)
    with pytest.raises(UserError, match="object_size=30 is larger"):
        load_image_data(compose_cfg(moving(idx_root, "dataset.object_size=30")).dataset)


# -- video data in the shared checks, batching and dataset=arrays ------------------------------
def test_validation_takes_videos_and_refuses_other_ranks():
    v = torch.zeros(4, 3, 1, 8, 8, dtype=torch.uint8)
    data = check_image_data(ImageData("v", v, torch.zeros(4, dtype=torch.long), v[:2], torch.zeros(2, dtype=torch.long)))
    assert data.shape == (3, 1, 8, 8)
    with pytest.raises(UserError, match="4 or 5 dimensions"):
        check_image_data(ImageData("v", v[None], torch.zeros(1, dtype=torch.long), v[None], torch.zeros(1, dtype=torch.long)))
    with pytest.raises(UserError, match=r"3x1x8x8 \(T x C x H x W\)"):
        check_image_data(ImageData("v", v, torch.zeros(4, dtype=torch.long), v[:2, :2], torch.zeros(2, dtype=torch.long)))


def test_video_batches_binarize_per_pixel(idx_root):
    cfg = compose_cfg([*moving(idx_root), *SMALL_MODEL, "dataset.binarize=dynamic",
                       "dataset.val_size=8", "device=cpu"])
    dm, _, _ = build(cfg, torch.device("cpu"))
    x, _ = dm.train_batch(torch.arange(6))
    assert x.shape == (6, 5, 1, 24, 24) and set(x.unique().tolist()) <= {0.0, 1.0}
    v, _ = next(dm.eval_batches(dm.val, 4))
    assert v.shape == (4, 5, 1, 24, 24) and set(v.unique().tolist()) <= {0.0, 1.0}


def test_arrays_of_videos(tmp_path):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (30, 4, 3, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "v.npy", u8)
    data = load_image_data(compose_cfg(["dataset=arrays", f"dataset.path={tmp_path / 'v.npy'}",
                                        "dataset.test_split=6"]).dataset)
    assert data.shape == (4, 3, 8, 8) and data.value_kind == "8bit" and len(data.test_x) == 6
    fl = rng.normal(2.0, 3.0, (30, 4, 2, 6, 6)).astype(np.float32)
    fl[:, :, 1] += 10
    np.save(tmp_path / "f.npy", fl)
    data = load_image_data(compose_cfg(["dataset=arrays", f"dataset.path={tmp_path / 'f.npy'}",
                                        "dataset.test_split=6"]).dataset)
    assert data.value_kind == "real" and data.stats["shape"] == [1, 2, 1, 1]
    x = torch.as_tensor(np.asarray(data.train_x))
    per_channel = x.transpose(0, 2).reshape(2, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(2), atol=1e-4)   # per channel
    assert torch.allclose(per_channel.std(1), torch.ones(2), atol=1e-2)
    np.save(tmp_path / "six.npy", np.zeros((2, 2, 2, 2, 2, 2), np.uint8))
    with pytest.raises(UserError, match="N x T x C x H x W videos"):
        load_image_data(compose_cfg(["dataset=arrays",
                                     f"dataset.path={tmp_path / 'six.npy'}"]).dataset)


def write_video_folder(root, classes, per_class=3, frames=4, size=16, start=0):
    """``per_class`` sequences of ``frames`` PNG frames in ``root/<class>/<seq>/`` (or
    ``root/<seq>/`` for classes=None): frame t of sequence i is a bar at column 2t, its
    brightness 40 + 10 i. Returns the brightness of each sequence by folder."""
    out, i = {}, start
    for c in (classes or [None]):
        for k in range(per_class):
            folder = root / (f"{c}/s{k}" if c else f"s{i}")
            folder.mkdir(parents=True, exist_ok=True)
            for t in range(frames):
                a = np.zeros((size, size), np.uint8)
                a[:, 2 * t:2 * t + 2] = 40 + 10 * i
                Image.fromarray(a).save(folder / f"f{t:02d}.png")
            out[folder.relative_to(root).as_posix()] = 40 + 10 * i
            i += 1
    return out


def video_folder(path, *extra):
    return compose_cfg(["dataset=video_folder", f"dataset.path={path}", *extra]).dataset


def test_video_folder_labelled_sequences_are_never_split(tmp_path):
    bright = write_video_folder(tmp_path / "v", ["a", "b"], per_class=5, frames=4)
    data = load_image_data(video_folder(tmp_path / "v", "dataset.test_split=0.2"))
    assert data.shape == (4, 1, 16, 16) and data.classes == ["a", "b"]
    assert len(data.train_x) == 8 and len(data.test_x) == 2
    assert isinstance(data.train_x, Rows)                # frames of the decode cache
    x = torch.cat([as_tensor(data.train_x), as_tensor(data.test_x)])
    y = torch.cat([data.train_y, data.test_y])
    levels = sorted(bright.values())
    for v, label in zip(x, y):
        level = int(v.max())
        assert level in levels and (v.amax((1, 2, 3)) == level).all()   # one sequence
        assert label == (levels.index(level) >= 5)                         # its class
        cols = v[:, 0, 0].nonzero()
        assert [int(c) for c in v[:, 0, 0].argmax(-1)] == [0, 2, 4, 6] and len(cols) == 8


def test_video_folder_unlabelled_splits_frames_and_errors(tmp_path):
    write_video_folder(tmp_path / "u" / "train", None, per_class=4, frames=5)
    write_video_folder(tmp_path / "u" / "test", None, per_class=2, frames=5, start=4)
    data = load_image_data(video_folder(tmp_path / "u", "dataset.frames=3",
                                        "dataset.cache=false"))
    assert data.train_x.shape == (4, 3, 1, 16, 16) and data.test_x.shape == (2, 3, 1, 16, 16)
    assert data.classes == [] and int(data.train_y.abs().sum()) == 0
    assert int(data.test_x.max()) == 40 + 10 * 5 and int(data.train_x.max()) == 40 + 10 * 3
    # unequal sequences: one line naming the sequence
    write_video_folder(tmp_path / "w", None, per_class=3, frames=4)
    (tmp_path / "w" / "s1" / "f03.png").unlink()
    with pytest.raises(UserError, match=r"sequence s1 has 3 frames; every sequence needs 4, "
                                        r"as s0 has \(set dataset.frames=N"):
        load_image_data(video_folder(tmp_path / "w"))
    data = load_image_data(video_folder(tmp_path / "w", "dataset.frames=3"))
    assert data.shape == (3, 1, 16, 16)
    with pytest.raises(UserError, match=r"sequence s1 has 3 frames; every sequence needs 4 "
                                        r"\(dataset.frames\)"):
        load_image_data(video_folder(tmp_path / "w", "dataset.frames=4"))
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(flat / "a.png")
    with pytest.raises(UserError, match="<sequence>/<frame>.*found a.png"):
        load_image_data(video_folder(flat))
    with pytest.raises(UserError, match="^dataset=video_folder needs"):
        load_image_data(video_folder("null"))


def test_video_folder_trains_the_video_model(tmp_path):
    write_video_folder(tmp_path / "v", ["a", "b"], per_class=6, frames=4)
    cfg = compose_cfg([*SMALL_MODEL, "dataset=video_folder", f"dataset.path={tmp_path / 'v'}",
                       "dataset.val_size=2", "device=cpu"])
    dm, objective, model = build(cfg, torch.device("cpu"))
    assert model.input_shape == (4, 1, 16, 16)
    x, y = dm.train_batch(torch.arange(4))
    terms = objective(model, x, y, step=0)
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"]) and model.reconstruct(x).shape == x.shape


# -- the model ----------------------------------------------------------------------------------
PARTS = ("encoder", "content_core", "content_head", "posterior_core", "posterior_head",
         "prior_core", "prior_head", "decoder")


def small(shape=(5, 1, 16, 16), **kw):
    kw = {"content_dim": 6, "dynamics_dim": 3, "hidden_dim": 24, "feature_dim": 24,
          "channels": (8, 16), **kw}
    return VideoVAE(shape, **kw)


@pytest.mark.parametrize("core,posterior", [("gru", "filtered"), ("lstm", "full"),
                                            ("conv", "filtered"), ("conv", "full")])
def test_infer_shapes_and_gradients_reach_every_part(core, posterior):
    torch.manual_seed(0)
    model = small(core=core, posterior=posterior, likelihood=BernoulliLikelihood())
    x = torch.rand(3, 5, 1, 16, 16).bernoulli()
    out = model.infer(x, k=4)
    assert out["log_px"].shape == out["log_pz"].shape == out["log_qz"].shape == (4, 3)
    assert out["kl_dims"].shape == (4, 3, 6 + 5 * 3)
    assert out["x_out"].shape == (12, 5, 1, 16, 16)
    assert torch.isfinite(out["log_px"]).all() and (out["kl_dims"] >= 0).all()
    one = model.infer(x, k=1)
    (-(one["log_px"] - one["kl_dims"].sum(-1)).mean()).backward()
    for part in PARTS:
        grads = [p.grad for p in getattr(model, part).parameters()]
        assert all(g is not None for g in grads), part
        assert sum(float(g.abs().sum()) for g in grads) > 0, part


def test_log_px_sums_the_frames_and_kl_matches_the_estimate():
    torch.manual_seed(0)
    model = small(likelihood=BernoulliLikelihood())
    x = torch.rand(2, 5, 1, 16, 16).bernoulli()
    out = model.infer(x, k=1)
    per_frame = model.log_px(out["x_out"].unsqueeze(0), x)          # (1, 2, 5)
    assert per_frame.shape == (1, 2, 5)
    assert torch.allclose(per_frame.sum(-1), out["log_px"], rtol=1e-5)
    bce = -torch.nn.functional.binary_cross_entropy_with_logits(
        out["x_out"], x, reduction="none").flatten(1).sum(-1)
    assert torch.allclose(bce, out["log_px"][0], rtol=1e-5)
    # the analytic Gaussian KL against a Monte-Carlo estimate
    q = DiagGaussian(torch.tensor([0.3, -1.0]), torch.tensor([-0.5, 0.4]))
    p = DiagGaussian(torch.tensor([1.0, 0.2]), torch.tensor([0.1, -0.3]))
    z = q.rsample(200000)
    mc = (q.log_prob_dims(z) - p.log_prob_dims(z)).mean(0)
    assert torch.allclose(gaussian_kl(q, p), mc, atol=0.02)
    # the IWAE bound is tighter than the ELBO on average
    torch.manual_seed(1)
    many = model.infer(x, k=64, analytic_kl=False)
    log_w = many["log_px"] + many["log_pz"] - many["log_qz"]
    assert (torch.logsumexp(log_w, 0) - math.log(64) >= log_w.mean(0) - 1e-3).all()


@pytest.mark.parametrize("shape", [(3, 1, 16, 16), (7, 3, 20, 12), (2, 2, 9, 9)])
def test_any_frames_channels_and_size(shape):
    torch.manual_seed(0)
    model = small(shape, likelihood=GaussianLikelihood(0.1, True, shape[0]))
    # build passes a likelihood made for T "channels": the model makes it per frame channel
    assert model.likelihood.log_sigma.numel() == shape[1]
    x = torch.rand(2, *shape)
    assert model.reconstruct(x).shape == x.shape
    assert model.sample(3).shape == (3, *shape)
    assert model.predict(x[:, :1], 4).shape == (2, 4, *shape[1:])


def test_wrong_data_is_one_line():
    with pytest.raises(UserError, match=r"needs videos.*1x28x28 \(C x H x W images\).*"
                                        "dataset=moving_mnist"):
        VideoVAE((1, 28, 28))
    with pytest.raises(UserError, match="too many for 4x4"):
        small((5, 1, 4, 4), channels=(8, 16, 32))
    with pytest.raises(UserError, match="at least 2"):
        small((1, 1, 16, 16))
    model = small()
    with pytest.raises(UserError, match=r"takes videos \(B, T, 1, 16, 16\)"):
        model.infer(torch.rand(2, 1, 16, 16))
    with pytest.raises(UserError, match="^model.core="):
        small(core="transformer")


def test_video_model_on_image_data_is_one_line(tmp_path):
    cfg = compose_cfg([*SMALL_MODEL, "dataset=synthetic", "dataset.num_train=50",
                       "dataset.num_test=10", "device=cpu"])
    with pytest.raises(UserError, match="needs videos") as e:
        build(cfg, torch.device("cpu"))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("model", ["vae", "conv_vae"])
def test_image_model_on_video_data_is_one_line(model, idx_root):
    cfg = compose_cfg([f"model={model}", *moving(idx_root), "device=cpu"])
    with pytest.raises(UserError, match=r"takes images.*5x1x24x24 \(videos.*model=video_vae") as e:
        build(cfg, torch.device("cpu"))
    assert "\n" not in str(e.value)


def test_core_is_causal_unless_bidirectional():
    torch.manual_seed(0)
    for kind in ("gru", "lstm", "conv"):
        core = Core(kind, 3, 8)
        s = torch.randn(2, 6, 3)
        s2 = s.clone()
        s2[:, 4:] += 1.0
        a, _ = core(s)
        b, _ = core(s2)
        assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6), kind      # the past only
        assert not torch.allclose(a[:, 4:], b[:, 4:]), kind
        # continuing from a state gives what one call over the whole sequence gives
        head, state = core(s[:, :4])
        tail, _ = core(s[:, 4:], state)
        assert torch.allclose(torch.cat([head, tail], 1), a, atol=1e-5), kind
        bi = Core(kind, 3, 8, bidirectional=True)
        a, _ = bi(s)
        b, _ = bi(s2)
        assert not torch.allclose(a[:, :4], b[:, :4]), kind             # sees the future


def test_swap_sampling_and_prediction():
    torch.manual_seed(0)
    model = small(likelihood=BernoulliLikelihood()).eval()
    x = torch.rand(4, 5, 1, 16, 16)
    # swapping a sequence's content with itself is its reconstruction
    assert torch.allclose(model.swap(x, x), model.reconstruct(x), atol=1e-6)
    sw = model.swap(x[:2], x[2:])
    assert sw.shape == (2, 5, 1, 16, 16)
    # the swapped sequence keeps B's content: decoding A's dynamics with B's content code
    f_b = model.code(x[2:])
    _, z_a = model.posterior_means(x[:2])
    assert torch.allclose(sw, model.frames_mean(f_b, z_a), atol=1e-6)
    assert not torch.allclose(sw, model.swap(x[:2], x[:2]))
    g = torch.Generator().manual_seed(0)
    dyn = model.sample_dynamics(x[:2], 3, generator=g)
    assert dyn.shape == (2, 3, 5, 1, 16, 16)
    assert not torch.allclose(dyn[:, 0], dyn[:, 1])                     # dynamics vary
    pred = model.predict(x[:, :3], 2)
    assert pred.shape == (4, 2, 1, 16, 16) and (pred >= 0).all() and (pred <= 1).all()
    s1 = model.sample(3, generator=torch.Generator().manual_seed(5))
    s2 = model.sample(3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(s1, s2)                                          # seeded
    lat = model.latents(x)
    assert lat["code"].shape == (4, 6) and lat["dynamics"].shape == (4, 5, 3)
    assert [m.shape for m in model.latent_means(x)] == [(4, 6), (4, 15)]
    # bad arguments are one line each, naming what was wrong
    with pytest.raises(UserError, match="got 4 and 3 sequences"):
        model.swap(x, x[:3])
    with pytest.raises(UserError, match="steps=0"):
        model.predict(x[:, :2], 0)
    with pytest.raises(UserError, match="got 0 frames"):
        model.predict(x[:, :0], 2)
    with pytest.raises(UserError, match="n=0"):
        model.sample_dynamics(x[:2], 0)


def test_evaluate_terms_add_up():
    torch.manual_seed(0)
    model = small(prefix=3, likelihood=BernoulliLikelihood()).eval()
    x = torch.rand(6, 5, 1, 16, 16).bernoulli()
    sums = model.evaluate_batch(x, torch.zeros(6))
    m = model.evaluate_summary(sums, 6)
    assert m["sequence_elbo"] == pytest.approx(-(m["sequence_recon"] + m["sequence_kl_content"]
                                                  + m["sequence_kl_dynamics"]))
    assert m["frame_recon"] == pytest.approx(m["sequence_recon"] / 5)
    assert m["predict_prefix"] == 3
    copy = ((x[:, 2:3] - x[:, 3:]) ** 2).mean()
    assert m["copy_last_mse"] == pytest.approx(float(copy), rel=1e-6)


# -- pictures -------------------------------------------------------------------------------------
def test_strips_have_a_column_per_frame_and_a_row_per_sequence():
    rows = [torch.rand(6, 1, 64, 64) for _ in range(4)]
    img = strip(rows)
    assert img.shape == (3, 2 + 4 * 66, 2 + 6 * 66)
    small_rows = [torch.rand(3, 1, 16, 16) for _ in range(2)]
    assert strip(small_rows).shape[1] >= 2 * 48                  # small frames drawn larger
    grouped = strip(rows, gap_after=2)
    assert grouped.shape[1] == 2 * (2 + 2 * 66) + 8                # a band between groups
    assert (grouped[:, 2 + 2 * 66:2 + 2 * 66 + 8] == 0.5).all()
    torch.manual_seed(0)
    model = small().eval()
    x = torch.rand(8, 5, 1, 16, 16)
    assert content_swap_grid(model, x, 2).shape[1] > dynamics_grid(model, x, 1, 2).shape[1]
    assert prediction_strips(model, x, 2, 3).shape[2] == 2 + 5 * (48 + 2)
    figs = training_figures(model, x, torch.zeros(8), 8)
    assert set(figs) == {"reconstructions", "samples"}


def test_gif_has_one_frame_per_video_frame(tmp_path):
    v = torch.zeros(4, 7, 1, 16, 16)
    for t in range(7):
        v[:, t, :, :, 2 * t:2 * t + 2] = 1.0                       # a bar moving right
    path = write_gif(v, tmp_path / "a.gif")
    with Image.open(path) as im:
        assert im.n_frames == 7 and im.is_animated
        im.seek(3)
        frame = np.asarray(im.convert("L"))
    assert frame.shape[0] == frame.shape[1] and frame.max() > 200


# -- learning -------------------------------------------------------------------------------------
def _moving_data(n, seed, frames=8, size=32, obj=10, speed=3.0):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.zeros(20, 1, obj, obj, dtype=torch.uint8)
    for i in range(20):                                       # blobs of different sizes
        r = 2 + i % 4
        imgs[i, :, obj // 2 - r:obj // 2 + r, obj // 2 - r:obj // 2 + r] = 255
    imgs = (imgs.float() * (0.6 + 0.4 * torch.rand(20, 1, 1, 1, generator=g))).to(torch.uint8)
    return mm.make_moving(imgs, torch.arange(20), n, frames, size, 1, obj, speed, seed=seed,
                          progress=False)[0].float() / 255


def _fit(model, x, steps, lr=3e-3, batch=32, warmup=0):
    """Adam on the negative ELBO, the KL weight rising linearly over ``warmup`` steps."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    losses = []
    for s in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        out = model.infer(x[idx])
        beta = min(1.0, s / warmup) if warmup else 1.0
        loss = -(out["log_px"] - beta * out["kl_dims"].sum(-1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_a_short_run_learns():
    torch.manual_seed(0)
    x = _moving_data(128, 0, frames=5, size=24, obj=8)
    model = small((5, 1, 24, 24), likelihood=BernoulliLikelihood())
    losses = _fit(model, x, 60, batch=16)
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5])


@pytest.mark.slow
def test_next_frame_prediction_beats_copying_the_last_frame():
    """Frames 1..4 given, 5..8 predicted (about 30 s of training on one core)."""
    torch.manual_seed(0)
    train, test = _moving_data(1500, 0), _moving_data(200, 1)
    model = small((8, 1, 32, 32), content_dim=8, dynamics_dim=4, hidden_dim=64,
                  feature_dim=64, channels=(16, 32), prefix=4, likelihood=BernoulliLikelihood())
    losses = _fit(model, train, 400)
    assert np.mean(losses[-20:]) < 0.2 * np.mean(losses[:5])
    model.eval()
    p = 4
    pred = model.predict(test[:, :p], 8 - p)
    target = test[:, p:]
    err = ((pred - target) ** 2).mean((0, 2, 3, 4))                 # per predicted frame
    copy = ((test[:, p - 1:p] - target) ** 2).mean((0, 2, 3, 4))
    blank = (target ** 2).mean((0, 2, 3, 4))                        # an empty frame
    assert err.mean() < 0.8 * copy.mean(), (err, copy)
    # the next frame is predicted far better than copied, and it is no blank guess
    assert err[0] < 0.6 * copy[0] and err[0] < 0.6 * blank[0], (err, copy, blank)
    # and reconstruction (every frame seen) is better still
    recon = ((model.reconstruct(test) - test) ** 2).mean()
    assert recon < err[0]
    m = model.evaluate_summary(model.evaluate_batch(test, torch.zeros(len(test))), len(test))
    assert m["predict_prefix"] == 4 and m["predict_mse"] == pytest.approx(float(err.mean()),
                                                                          rel=1e-4)
    assert m["predict_next_mse"] == pytest.approx(float(err[0]), rel=1e-4)
    assert m["copy_last_next_mse"] == pytest.approx(float(copy[0]), rel=1e-4)


# -- the command line ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_run(idx_root, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cli")
    run = cwd / "run"
    args = [*SMALL_MODEL, "dataset=moving_mnist", "dataset.source=mnist",
            f"dataset.root={idx_root}", "dataset.num_train=120", "dataset.num_test=12",
            "dataset.frames=6", "dataset.image_size=24", "dataset.object_size=10",
            "model.prefix=3", "trainer.batch_size=16", "trainer.num_images=8",
            "trainer.progress=false", "device=cpu", "optimizer.lr=3e-3"]
    run_cli([*args, "trainer.epochs=3", f"hydra.run.dir={run}"], cwd,
            env={"OMP_NUM_THREADS": "1"})
    return cwd, run


@pytest.mark.slow
def test_cli_trains_with_falling_loss_and_writes_strips(cli_run):
    _, run = cli_run
    metrics = json.loads((run / "metrics.json").read_text())
    losses = [h["train_loss"] for h in metrics["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    with Image.open(run / "reconstructions.png") as im:
        w, h = im.size
    assert w == 2 + 6 * 50 and h > 8 * 48                     # 6 frames a row, 8 pairs of rows


@pytest.mark.slow
def test_cli_evaluate_sample_and_resume(cli_run, call):
    cwd, run = cli_run
    call("vae_train.evaluate", [f"run={run}", "k=8", "progress=false"], cwd)
    res = json.loads((run / "eval.json").read_text())
    for key in ("nll", "sequence_recon", "sequence_kl_content", "sequence_kl_dynamics",
                "frame_recon", "frame_kl_dynamics", "predict_mse", "copy_last_mse"):
        assert math.isfinite(res[key]), key
    assert res["predict_prefix"] == 3 and res["latent_dims_per_layer"] == [8, 24]
    # content and dynamics are reported as two layers everywhere (KL too)
    assert len(res["kl_per_layer"]) == len(res["kl_units_per_layer"]) == 2
    assert math.isclose(res["kl_per_layer"][0], res["sequence_kl_content"], rel_tol=0.05)
    call("vae_train.sample", [f"run={run}", "n=4", "pairs=2"], cwd)
    out = run / "samples"
    assert {p.name for p in out.iterdir()} == {
        "samples.png", "reconstructions.png", "content_swap.png", "dynamics.png",
        "prediction.png", "samples.gif"}
    with Image.open(out / "samples.gif") as im:
        assert im.n_frames == 6 and im.is_animated
    proc = run_cli([f"resume={run}", "trainer.epochs=4"], cwd, env={"OMP_NUM_THREADS": "1"})
    assert "resumed from" in proc.stderr and "epoch 4/4" in proc.stderr


# -- the benchmark ------------------------------------------------------------------------------
@pytest.mark.slow
def test_benchmark_trains_the_video_family_on_moving_fashion(tmp_path):
    """scripts/benchmark.py's video_vae row: moving_mnist made from the Fashion-MNIST files it
    is given, the same model in both loops (no timing is asserted)."""
    bench = load_script("benchmark")
    assert bench.is_video_family("video_vae") and not bench.is_video_family("conv_vae")
    root = tmp_path / "fm"
    write_mnist_like(root / "FashionMNIST" / "raw", 100, 30)
    n = torch.get_num_threads()
    try:
        report = bench.main(["--models", "video_vae", "--epochs", "1", "--train-size", "40",
                             "--threads", "1", "--peak-size", "128", "--data-root", str(root),
                             "--out", str(tmp_path / "b.json"), "--override",
                             "model.channels=[8,16]", "model.hidden_dim=16",
                             "model.feature_dim=16", "dataset.frames=3", "dataset.image_size=24",
                             "dataset.object_size=10", "trainer.batch_size=8"])
    finally:
        torch.set_num_threads(n)
    (row,) = report["results"]
    assert "errors" not in row, row.get("errors")
    assert row["model"] == "video_vae" and row["dataset_train_size"] == 40
    assert row["bare"]["train_images"] == 36 and row["vae_train"]["images_per_sec"] > 0
    assert row["ratio"] > 0 and "seconds_per_full_epoch" not in row
    assert row["bare_test_loss"] > 0 and row["vae_train_test_loss"] > 0


@pytest.mark.slow
def test_encode_and_torchscript_export_take_videos(cli_run):
    cwd, run = cli_run
    run_module("vae_train.encode", [f"run={run}", "k=3", "progress=false"], cwd=cwd)
    with np.load(run / "encode" / "test.npz") as z:
        assert z["code"].shape == z["content"].shape and z["code"].ndim == 2
        assert z["dynamics"].shape[0] == z["code"].shape[0]
        assert np.isfinite(z["nll"]).all()
    out = cwd / "ts"
    run_module("vae_train.export", [f"run={run}", "format=torchscript", f"out={out}"], cwd=cwd)
    assert (out / "decoder.pt").exists() and (out / "encoder.pt").exists()
