"""The Python API (``vae_train.load``) on trained runs of every family, and the class-swap
grid of ``sample``."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vae_train
from conftest import TINY, run_cli
from vae_train.errors import UserError
from vae_train.pictures.grids import class_swap_images, swap_targets

FIXTURE = Path(__file__).parent / "fixtures" / "run_v0_1"
SINES = ["model=rnn_vae", "dataset=sines", "dataset.num_train=600", "dataset.num_test=100",
         "dataset.length=16", "model.hidden_dim=16", "model.latent_dim=3",
         "loss.likelihood=gaussian", "trainer.batch_size=32", "trainer.progress=false",
         "device=cpu"]
FAMILIES = {
    "vae": [*TINY, "model.latent_dim=3"],
    "conv_vae": [*TINY, "model=conv_vae", "model.latent_dim=3"],
    "cvae": [*TINY, "model=cvae", "model.latent_dim=3", "model.hidden_dims=[32]"],
    "hvae": [*TINY, "model=hvae", "model.latent_dim=6", "model.latent_dim2=3"],
    "m2": [*TINY, "model=m2", "model.latent_dim=3"],
    "gumbel_vae": [*TINY, "model=gumbel_vae", "model.num_latents=4", "model.num_categories=5"],
    "vqvae": [*TINY, "model=vqvae", "model.num_codes=16", "model.prior_channels=8",
              "model.prior_epochs=1"],
    "aae": [*TINY, "model=aae", "model.latent_dim=2"],
    "rnn_vae": SINES,
}
LATENTS = {"vae": {"mean", "logvar", "code"}, "conv_vae": {"mean", "logvar", "code"},
           "cvae": {"mean", "logvar", "code"},
           "hvae": {"mean", "logvar", "mean2", "logvar2", "code"},
           "m2": {"class_probs", "mean", "logvar", "code"},
           "gumbel_vae": {"probs", "mode", "code"}, "vqvae": {"codes"}, "aae": {"code"},
           "rnn_vae": {"mean", "logvar", "code"}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    run = tmp_path_factory.mktemp("api") / "run"
    shutil.copytree(FIXTURE, run)
    return vae_train.load(run, device="cpu")


@pytest.fixture(scope="module")
def family_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("families")
    out = {}
    for name, args in FAMILIES.items():
        out[name] = base / name
        run_cli([*args, "trainer.epochs=1", f"hydra.run.dir={out[name]}"], base)
    return out


# -- on the kept tiny run -------------------------------------------------------------------
def test_load_gives_an_eval_model_with_its_run(tiny):
    assert not tiny.model.training
    assert tiny.input_shape == (1, 8, 8) and tiny.device == torch.device("cpu")
    assert tiny.has_likelihood and tiny.epoch == 3
    assert "VAE" in repr(tiny)


def test_prepare_takes_uint8_channels_last_single_and_numpy(tiny):
    x, _ = next(tiny.batches("test", 4))
    u8 = (x * 255).round().to(torch.uint8)
    as_float = tiny.prepare(u8)
    assert torch.allclose(as_float, u8.float() / 255)
    assert torch.equal(tiny.prepare(u8.permute(0, 2, 3, 1).numpy()), as_float)   # NHWC numpy
    assert tiny.prepare(u8[0]).shape == (1, 1, 8, 8)                            # one image
    assert tiny.prepare(u8[:, 0]).shape == (4, 1, 8, 8)                         # (B, H, W)
    with pytest.raises(UserError, match=r"shape \(2, 1, 9, 9\).*\(B, 1, 8, 8\)"):
        tiny.prepare(torch.zeros(2, 1, 9, 9))
    with pytest.raises(UserError, match="uint8 pixels"):
        tiny.prepare(torch.zeros(2, 1, 8, 8, dtype=torch.int32))


def test_methods_agree_with_the_model(tiny):
    x, _ = next(tiny.batches("test", 16))
    m = tiny.model
    enc = tiny.encode(x)
    q = m.encode(x)
    assert torch.equal(enc["mean"], q.mu) and torch.equal(enc["logvar"], q.logvar)
    assert torch.equal(tiny.decode(enc["code"]), m.decode_code(q.mu))
    assert torch.equal(tiny.reconstruct(x), m.reconstruct(x))
    assert torch.equal(tiny.sample(5, seed=3), tiny.sample(5, seed=3))
    assert not torch.equal(tiny.sample(5, seed=3), tiny.sample(5, seed=4))
    path = tiny.interpolate(x[0], x[1], steps=6)
    assert path.shape == (6, 1, 8, 8)
    assert torch.allclose(path[0], m.decode_code(q.mu[:1])[0], atol=1e-6)
    assert torch.allclose(path[-1], m.decode_code(q.mu[1:2])[0], atol=1e-6)


def test_log_prob_is_a_tighter_bound_than_the_elbo(tiny):
    x, _ = next(tiny.batches("test", 100))
    torch.manual_seed(0)
    ll = tiny.log_prob(x, k=500)
    neg_elbo = tiny.elbo(x)["neg_elbo"]
    assert ll.shape == (100,) and torch.isfinite(ll).all()
    # log p(x) >= ELBO: the importance-weighted estimate lies above the ELBO on average
    assert (-ll).mean() < neg_elbo.mean()
    assert ((-ll).mean() - neg_elbo.mean()).abs() < 20


def test_bad_calls_are_one_line_errors(tiny):
    with pytest.raises(UserError, match=r"codes of shape \(2, 5\)"):
        tiny.decode(torch.zeros(2, 5))
    with pytest.raises(UserError, match="at least 2"):
        tiny.interpolate(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8), steps=1)
    with pytest.raises(UserError, match="data=nosuch is not a data set option"):
        tiny.data_for("nosuch")
    with pytest.raises(UserError, match="not a vae-train run directory"):
        vae_train.load(FIXTURE.parent)


def test_data_for_checks_the_shape(tiny):
    assert len(tiny.data_for().test) == len(tiny.data.test)
    with pytest.raises(UserError, match="1x28x28, the model takes 1x8x8"):
        tiny.data_for("synthetic", {"num_train": 50, "num_test": 20})


# -- every family ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_load_round_trips_every_family(family_runs, name):
    m = vae_train.load(family_runs[name], device="cpu")
    x, y = next(m.batches("test", 12))
    enc = m.encode(x, y if m.conditional else None)
    assert set(enc) == LATENTS[name]
    assert all(len(v) == 12 for v in enc.values())
    again = vae_train.load(family_runs[name], checkpoint="last", device="cpu")
    for key in enc:              # the same weights load the same way
        assert torch.allclose(again.encode(x, y if m.conditional else None)[key], enc[key])
    rec = m.reconstruct(x, y)
    assert rec.shape == x.shape and torch.isfinite(rec).all()
    labels = torch.arange(4) % max(m.num_classes, 1)
    if name == "m2":
        assert m.decode(enc["code"][:4], labels).shape == (4, *m.input_shape)
    elif "code" in enc:
        dec = m.decode(enc["code"][:4], labels if m.conditional else None)
        assert dec.shape == (4, *m.input_shape)
    else:                         # vqvae: the grid of code indices decodes to the images
        assert torch.allclose(m.decode(enc["codes"]), rec, atol=1e-5)
    assert m.sample(4, seed=1).shape == (4, *m.input_shape)
    per = m.elbo(x, y)
    assert per["recon_error"].shape == (12,)
    if m.has_likelihood:
        assert torch.isfinite(m.log_prob(x, y, k=20)).all()
        assert torch.allclose(per["neg_elbo"], per["recon"] + per["kl"])
    else:
        with pytest.raises(UserError, match="no likelihood bound"):
            m.log_prob(x)
    if "code" in enc and name != "gumbel_vae":
        assert m.interpolate(x[0], x[1], 5, y=y[:1] if m.conditional else None).shape == \
            (5, *m.input_shape)


@pytest.mark.slow
def test_conditional_models_need_labels(family_runs):
    m = vae_train.load(family_runs["cvae"], device="cpu")
    x, _ = next(m.batches("test", 3))
    with pytest.raises(UserError, match="conditional: give the class labels"):
        m.encode(x)
    with pytest.raises(UserError, match="outside 0..9"):
        m.sample(2, y=[0, 10])
    assert m.sample(3, y=7).shape == (3, *m.input_shape)


# -- class swap -------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["cvae", "m2"])
def test_class_swap_keeps_the_style_code(family_runs, name):
    m = vae_train.load(family_runs[name], device="cpu")
    x, y = next(m.batches("test", 5))
    model = m.model
    imgs = class_swap_images(model, x, y)
    assert imgs.shape == (5, 1 + m.num_classes, *m.input_shape)
    assert torch.equal(imgs[:, 0], x)
    style = model.code(x, y)              # the posterior mean given the image's own label
    for k in range(m.num_classes):
        want = model.decode_code(style, torch.full_like(y, k))
        assert torch.allclose(imgs[:, 1 + k], want, atol=1e-6)
    # decoded with its own label, the style code is the reconstruction
    own = imgs[torch.arange(5), 1 + y]
    assert torch.allclose(own, model.reconstruct(x, y), atol=1e-5)


def test_swap_targets_flip_each_attribute():
    y = torch.tensor([[1, 0, 1], [0, 0, 1]])
    t = swap_targets(y, 3)
    assert len(t) == 3 and t[0].tolist() == [[0, 0, 1], [1, 0, 1]]
    assert [v.tolist() for v in swap_targets(torch.tensor([2, 0]), 3)] == \
        [[0, 0], [1, 1], [2, 2]]


@pytest.mark.slow
def test_sample_writes_the_class_swap_grid(family_runs, tmp_path, call):
    out = tmp_path / "pics"
    call("vae_train.sample", [f"run={family_runs['cvae']}", "n=16", "swap=3", f"out={out}"])
    img = np.asarray(Image.open(out / "class_swap.png"))
    # make_grid: 2 px padding around 28 px images; 3 rows of 1 + 10 images
    assert img.shape[:2] == (3 * 30 + 2, 11 * 30 + 2)
    proc = call("vae_train.sample", [f"run={family_runs['vae']}", "n=16", f"out={out}/v"])
    assert not (out / "v" / "class_swap.png").exists() and proc.returncode == 0
    bad = call("vae_train.sample", [f"run={family_runs['cvae']}", "swap=1000", "n=4",
                                    f"out={out}/b"], check=False)
    assert bad.returncode == 2 and "swap=1000 x (10 classes + 1)" in bad.stderr
