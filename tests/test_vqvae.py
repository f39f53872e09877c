"""VQ-VAE: quantisation, the straight-through gradient, codebook updates, the PixelCNN prior,
and the two-stage run (autoencoder, then prior) through the command line."""

import json
import math

import pytest
import torch

from conftest import TINY, make_trainer, run_cli
from vae_train.models.vqvae import PixelCNNPrior

SMALL = ["dataset=synthetic", "dataset.num_train=200", "dataset.num_test=50", "model=vqvae",
         "model.num_codes=16", "model.code_dim=4", "model.prior_channels=8", "model.prior_layers=2"]


def _trainer(tmp_path, overrides=()):
    return make_trainer([*SMALL, *overrides], tmp_path)


def test_quantize_picks_the_nearest_code(tmp_path):
    model = _trainer(tmp_path).model
    z_e = torch.randn(3, 4, 7, 7)
    idx, z_q = model.quantize(z_e)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 4)
    brute = torch.cdist(flat, model.codebook.detach()).argmin(1)
    assert torch.equal(idx.flatten(), brute)
    assert torch.equal(z_q.permute(0, 2, 3, 1).reshape(-1, 4), model.codebook.detach()[brute])


@pytest.mark.parametrize("ema", [False, True])
def test_gradients_and_codebook_updates(tmp_path, ema):
    tr = _trainer(tmp_path, [f"model.ema={ema}"])
    model = tr.model
    x, y = tr.data.train_batch(torch.arange(32))
    terms = model.loss_terms(x, y, step=0, train=True, phase="main")
    terms["loss"].backward()
    # the decoder's gradient reaches the encoder straight through the quantisation
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert model.codebook.requires_grad == (not ema)
    if not ema:
        assert model.codebook.grad.abs().sum() > 0
    else:   # the codebook is the EMA of the assigned encoder outputs over the smoothed counts
        n = model.ema_count.sum()
        smoothed = (model.ema_count + 1e-5) / (n + 16e-5) * n
        assert torch.allclose(model.codebook.detach(), model.ema_sum / smoothed[:, None])
    assert 1 <= terms["perplexity"].item() <= 16 and 0 < terms["codes_used"].item() <= 1


def test_dead_codes_restart_at_encoder_outputs(tmp_path):
    tr = _trainer(tmp_path)
    model = tr.model
    x, y = tr.data.train_batch(torch.arange(32))
    model.loss_terms(x, y, step=0, train=True, phase="main")  # first step: unused codes restart
    with torch.no_grad():
        flat = model.encode(x).permute(0, 2, 3, 1).reshape(-1, 4)
    far = torch.full((4,), 1e3)
    model.codebook.data[5] = far                             # code 5 can never win now
    model.usage[5] = 0.0
    model.loss_terms(x, y, step=1, train=True, phase="main")
    row = model.codebook.detach()[5]
    assert not torch.equal(row, far)
    assert torch.cdist(row[None], flat).min().item() < 1e-5  # it is one of the batch's outputs


def test_pixelcnn_prior_is_causal_in_raster_order():
    torch.manual_seed(0)
    prior = PixelCNNPrior(num_codes=6, channels=8, layers=3)
    codes = torch.randint(0, 6, (1, 5, 5))
    base = prior(codes)
    for i, j in ((0, 0), (2, 3), (4, 4)):
        changed = codes.clone()
        changed[0, i, j] = (codes[0, i, j] + 1) % 6
        diff = (prior(changed) - base).abs().sum(1)[0]          # (5, 5)
        order = torch.arange(25).view(5, 5)
        assert diff[order <= i * 5 + j].max() == 0, (i, j)      # no position sees itself/later
        if i * 5 + j < 24:
            assert diff[order == i * 5 + j + 1].item() > 0      # the next position does


def test_prior_nll_is_the_summed_cross_entropy_and_samples_have_the_grid_shape():
    torch.manual_seed(0)
    prior = PixelCNNPrior(num_codes=6, channels=8, layers=2)
    codes = torch.randint(0, 6, (3, 4, 4))
    logp = torch.log_softmax(prior(codes), dim=1)
    expect = -logp.gather(1, codes[:, None]).flatten(1).sum(1)
    assert torch.allclose(prior.nll(codes), expect, atol=1e-5)
    s = prior.sample(5, (4, 4), "cpu", torch.Generator().manual_seed(0))
    assert s.shape == (5, 4, 4) and s.min() >= 0 and s.max() < 6


def test_the_prior_stage_starts_from_the_best_autoencoder_and_freezes_it(tmp_path):
    tr = _trainer(tmp_path, ["trainer.epochs=1", "model.prior_epochs=1"])
    assert [(s[0], s[1]) for s in tr.stages] == [("autoencoder", 1), ("prior", 1)]
    tr.t.progress = False
    tr.enter_stage(1)
    tr.run_epoch(1)
    before = {k: v.clone() for k, v in tr.model.state_dict().items() if not k.startswith("prior")}
    tr.enter_stage(2)
    assert tr.phases == ("prior",) and tr.best_val == math.inf
    tr.run_epoch(2)
    after = tr.model.state_dict()
    for k, v in before.items():
        if k != "prior_steps":
            assert torch.equal(after[k], v), k   # codebook, encoder, decoder untouched
    assert tr.model.has_prior


@pytest.mark.slow
def test_vqvae_two_stage_run_evaluate_sample_and_resume(tmp_path, call):
    run = tmp_path / "vq"
    small = ["model=vqvae", "model.num_codes=32", "model.prior_channels=16",
             "model.prior_layers=2"]
    run_cli([*TINY, *small, "trainer.epochs=2", "model.prior_epochs=1", f"hydra.run.dir={run}"],
            tmp_path)
    m = json.loads((run / "metrics.json").read_text())
    assert m["epoch"] == 3
    h = m["history"]
    assert h[1]["train_recon"] < h[0]["train_recon"]         # the autoencoder learns
    assert "val_prior_nll" in h[2] and "train_prior_nll" in h[2]
    assert m["test_loss"] == pytest.approx(m["test_prior_nll"])
    assert 1 < m["test_perplexity"] <= 32 and 0 < m["test_codes_used"] <= 1
    # a uniform prior over 32 codes on the 7x7 grid costs 49 log 32 = 169.8 nats per image
    assert m["test_prior_nll"] < 49 * math.log(32)
    assert (run / "samples.png").is_file() and (run / "code_maps.png").is_file()

    call("vae_train.evaluate", [f"run={run}", "n=100", "progress=false"])
    ev = json.loads((run / "eval.json").read_text())
    for key in ("recon", "mse_per_pixel", "perplexity", "codes_used", "prior_nll", "nll_bound"):
        assert math.isfinite(ev[key]), key
    assert ev["nll_bound"] == pytest.approx(ev["recon"] + ev["prior_nll"], rel=1e-6)
    out = tmp_path / "pics"
    call("vae_train.sample", [f"run={run}", "n=8", f"out={out}"])
    assert {p.stem for p in out.glob("*.png")} == {"samples", "reconstructions", "code_maps"}

    # one more prior epoch, in the same run directory
    proc = run_cli([f"resume={run}", "model.prior_epochs=2"], tmp_path)
    assert "epoch 4/4" in proc.stderr
    assert json.loads((run / "metrics.json").read_text())["epoch"] == 4


@pytest.mark.slow
def test_without_a_prior_sample_says_how_to_train_one(tmp_path, call):
    run = tmp_path / "vq0"
    run_cli([*TINY, "model=vqvae", "model.num_codes=16", "trainer.epochs=1",
             "model.prior_epochs=0", "dataset.num_train=300", f"hydra.run.dir={run}"], tmp_path)
    out = tmp_path / "pics"
    proc = call("vae_train.sample", [f"run={run}", "n=4", f"out={out}"])
    assert "no prior trained" in proc.stderr and "model.prior_epochs" in proc.stderr
    assert not (out / "samples.png").exists() and (out / "reconstructions.png").is_file()
