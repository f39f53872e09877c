"""model=rnn_vae (recurrent VAE over sequences) and dataset=sines (generated float sequences)."""

import json
import math

import pytest
import torch
from PIL import Image

from conftest import compose_cfg, run_cli
from vae_train.build import load_image_data
from vae_train.data import DataModule
from vae_train.data.sines import make_sines
from vae_train.errors import UserError
from vae_train.distributions import BernoulliLikelihood, GaussianLikelihood
from vae_train.models.rnn_vae import RNNVAE
from vae_train.pictures import training_figures
from vae_train.pictures.plots import INPUT, RECON, SAMPLE, plot_panels
from vae_train.nets.rnn import from_sequence, to_sequence

SINES = ["model=rnn_vae", "dataset=sines", "dataset.num_train=3000", "dataset.num_test=200",
         "dataset.length=32", "model.hidden_dim=32", "model.latent_dim=4", "optimizer.lr=3e-3",
         "loss.likelihood=gaussian", "trainer.batch_size=32", "trainer.num_images=16",
         "trainer.progress=false", "device=cpu"]


# -- dataset=sines ------------------------------------------------------------------------
def test_sines_are_seeded_in_range_and_labelled():
    x, y = make_sines(600, seed=3)
    x2, y2 = make_sines(600, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)            # deterministic
    assert not torch.equal(x, make_sines(600, seed=4)[0])       # the seed matters
    assert x.shape == (600, 1, 64, 1) and x.dtype == torch.float32
    assert x.min() > 0 and x.max() < 1                          # inside the sigmoid's range
    assert set(y.tolist()) == {0, 1, 2}
    # without noise a 1-sine sequence is one sinusoid: its spectrum has one peak (the clean
    # signal of a 3-sine sequence spreads over more frequency bins)
    clean, lab = make_sines(300, seed=0, length=256, noise=0.0)
    spec = torch.fft.rfft(clean[:, 0, :, 0] - 0.5).abs()
    share = spec.max(1).values ** 2 / (spec ** 2).sum(1)       # energy in the top bin
    assert share[lab == 0].mean() > share[lab == 2].mean() + 0.1
    _, lab1 = make_sines(50, seed=0, max_components=1)
    assert lab1.eq(0).all()


def test_sines_config_builds_float_data_with_classes():
    cfg = compose_cfg(["dataset=sines", "dataset.num_train=50", "dataset.num_test=20",
                       "dataset.length=16"])
    data = load_image_data(cfg.dataset)
    assert data.shape == (1, 16, 1) and data.train_x.dtype == torch.float32
    assert data.classes == ["1 sine", "2 sines", "3 sines"] and data.num_classes == 3
    assert len(data.test_x) == 20 and not torch.equal(data.train_x[:20], data.test_x)
    dm = DataModule(data, torch.device("cpu"), val_size=10)
    xb, _ = dm.train_batch(torch.arange(4))
    assert torch.equal(xb, dm.train.x[:4])                      # float data passes through
    with pytest.raises(UserError, match="binarize"):
        DataModule(data, torch.device("cpu"), binarize="static")
    for bad, key in (("dataset.length=1", "dataset.length"), ("dataset.noise=-1", "dataset.noise"),
                     ("dataset.max_components=0", "dataset.max_components")):
        with pytest.raises(UserError, match=f"^{key}="):
            load_image_data(compose_cfg(["dataset=sines", "dataset.num_train=5",
                                         "dataset.num_test=5", bad]).dataset)


# -- the model ----------------------------------------------------------------------------
def test_sequence_view_round_trips():
    x = torch.rand(2, 3, 5, 4)
    s = to_sequence(x)
    assert s.shape == (2, 5, 12) and torch.equal(s[:, 1, 4:8], x[:, 1, 1, :])  # row 1, channel 1
    assert torch.equal(from_sequence(s, (3, 5, 4)), x)


@pytest.mark.parametrize("cell,layers,bidirectional", [("gru", 1, True), ("lstm", 2, False)])
@pytest.mark.parametrize("shape", [(1, 24, 1), (1, 28, 28)])
def test_infer_shapes(cell, layers, bidirectional, shape):
    torch.manual_seed(0)
    model = RNNVAE(shape, latent_dim=5, hidden_dim=16, num_layers=layers, cell=cell,
                   bidirectional=bidirectional, likelihood=GaussianLikelihood())
    x = torch.rand(3, *shape)
    out = model.infer(x, k=4)
    for key in ("log_px", "log_pz", "log_qz"):
        assert out[key].shape == (4, 3) and torch.isfinite(out[key]).all(), key
    assert out["kl_dims"].shape == (4, 3, 5) and out["x_out"].shape == (12, *shape)
    assert model.reconstruct(x).shape == x.shape and model.sample(2).shape == (2, *shape)
    assert [m.shape for m in model.latent_means(x)] == [(3, 5)]


def test_gradient_reaches_the_encoder_and_the_decoder_uses_z():
    torch.manual_seed(0)
    model = RNNVAE((1, 20, 1), latent_dim=3, hidden_dim=16, cell="lstm",
                   likelihood=GaussianLikelihood())
    x = make_sines(8, 0, length=20)[0]
    out = model.infer(x)
    (-(out["log_px"] - out["kl_dims"].sum(-1)).mean()).backward()
    for name, p in model.encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    z = torch.randn(2, 3)
    a, b = model.decode_code(z[:1]), model.decode_code(z[1:])
    assert not torch.allclose(a, b)                             # the output depends on z


def test_bad_model_settings_name_the_key():
    for kwargs, key in (({"cell": "rnn"}, "model.cell"), ({"num_layers": 0}, "model.num_layers"),
                        ({"hidden_dim": -1}, "model.hidden_dim")):
        with pytest.raises(UserError, match=f"^{key}="):
            RNNVAE((1, 8, 1), **kwargs)


def _colour_pixels(img: torch.Tensor, rgb) -> int:
    target = torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1) / 255
    return int(((img - target).abs() < 1e-3).all(0).sum())


def test_sequence_plots_are_line_plots_not_images():
    panels = [[(torch.linspace(0, 1, 30), INPUT), (torch.rand(30, 2), RECON)]] * 5
    img = plot_panels(panels, cols=3)
    assert img.shape[0] == 3 and img.shape[2] > img.shape[1] > 64   # 2 rows of 3 panels
    assert 0 <= img.min() and img.max() <= 1
    assert _colour_pixels(img, INPUT) > 30 and _colour_pixels(img, RECON) > 30

    model = RNNVAE((1, 32, 1), latent_dim=4, hidden_dim=16,
                   likelihood=GaussianLikelihood()).eval()
    x, y = make_sines(9, 0, length=32)
    figs = training_figures(model, x, y, 9, seed=0)
    assert set(figs) == {"reconstructions", "samples"}
    for name, img in figs.items():
        assert img.shape[0] == 3 and img.shape[1] > 100 and img.shape[2] > 100, name
        assert img.std() > 0.05, name                           # not blank
    assert _colour_pixels(figs["reconstructions"], INPUT) > 100
    assert _colour_pixels(figs["reconstructions"], RECON) > 20
    assert _colour_pixels(figs["samples"], SAMPLE) > 20

    # images read row by row keep the image grids (the natural picture there)
    images = RNNVAE((1, 28, 28), latent_dim=2, hidden_dim=16,
                    likelihood=BernoulliLikelihood()).eval()
    figs = training_figures(images, torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.long), 4)
    assert set(figs) == {"reconstructions", "samples", "manifold"}


# -- the command line ---------------------------------------------------------------------
@pytest.mark.slow
def test_cli_trains_evaluates_samples_and_resumes(tmp_path, call):
    run = tmp_path / "run"
    run_cli([*SINES, "trainer.epochs=2", f"hydra.run.dir={run}"], tmp_path,
            env={"OMP_NUM_THREADS": "1"})
    m = json.loads((run / "metrics.json").read_text())
    hist = m["history"]
    assert len(hist) == 2 and hist[1]["train_loss"] < hist[0]["train_loss"]
    assert hist[1]["val_loss"] < hist[0]["val_loss"]
    assert math.isfinite(m["test_loss"]) and m["test_loss"] == pytest.approx(
        m["test_recon"] + m["test_kl"], rel=1e-4)
    for png in ("reconstructions", "samples"):
        with Image.open(run / f"{png}.png") as im:
            assert im.size[0] > 100 and im.size[1] > 50

    call("vae_train.evaluate", [f"run={run}", "k=8", "n=40", "progress=false"], tmp_path)
    res = json.loads((run / "eval.json").read_text())
    assert res["n"] == 40 and res["latent_dims_per_layer"] == [4]
    assert res["nll"] <= -res["elbo"] + 1e-3                   # the 8-sample bound is tighter

    out = tmp_path / "pics"
    proc = call("vae_train.sample", [f"run={run}", "n=6", "dims=2", "steps=4", "pairs=2",
                                     "interp_steps=3", f"out={out}"], tmp_path)
    assert {p.stem for p in out.glob("*.png")} == {"samples", "reconstructions", "traversals",
                                                   "interpolations"}
    assert "traversed code dimensions" in proc.stderr

    proc = run_cli([f"resume={run}", "trainer.epochs=3"], tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert "resumed from" in proc.stderr and "epoch 3/3" in proc.stderr
    assert "epoch 1/" not in proc.stderr
    m = json.loads((run / "metrics.json").read_text())
    assert m["epoch"] == 3 and len(m["history"]) == 3
    assert not list(tmp_path.glob("outputs/*/*"))                # stayed in its run directory
