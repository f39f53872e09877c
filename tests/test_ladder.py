"""model=ladder: the top-down hierarchical VAE, and the per-layer options of the ELBO."""

import json
import math

import pytest
import torch

from conftest import TINY, load_script, run_cli, run_module
from vae_train.distributions import DiagGaussian
from vae_train.errors import UserError
from vae_train.losses import ELBO, IWAE, layer_kls
from vae_train.models.base import Hierarchy
from vae_train.models.hvae import HVAE
from vae_train.models.ladder import Ladder, _gaussian_kl, _precision_merge
from vae_train.pictures.grids import layer_variations, layer_variations_images

SHAPES = {"mlp": (1, 12, 12), "conv": (3, 12, 12)}


def _model(cell="mlp", merge="residual", layers=3, **kw):
    torch.manual_seed(0)
    kw.setdefault("latent_dim", 4)
    return Ladder(SHAPES[cell], layers=layers, cell=cell, merge=merge, hidden_dim=32,
                  channels=8, **kw)


def _x(cell="mlp", n=6):
    return torch.rand(n, *SHAPES[cell], generator=torch.Generator().manual_seed(1)).bernoulli()


# -- shapes and the contract ------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["mlp", "conv"])
@pytest.mark.parametrize("merge", ["residual", "precision"])
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_every_cell_and_merge_meets_the_contract(cell, merge, layers):
    m, x = _model(cell, merge, layers), _x(cell)
    assert isinstance(m, Hierarchy)
    out = m.infer(x, k=4)
    D = sum(m.sizes)
    assert out["log_px"].shape == out["log_pz"].shape == out["log_qz"].shape == (4, 6)
    assert out["kl_dims"].shape == (4, 6, D)
    assert out["x_out"].shape == (24, *m.output_shape)
    # the layer slices partition kl_dims, bottom first, the top one being the code
    sl = m.layer_slices
    assert len(sl) == layers and sl[0].start == 0 and sl[-1].stop == D
    assert all(a.stop == b.start for a, b in zip(sl, sl[1:]))
    assert m.code_kl_slice == sl[-1] and m.code_dim == sl[-1].stop - sl[-1].start
    # the analytic and the sampled KL terms estimate the same total; the sampled one is
    # log q - log p exactly
    est = m.infer(x, k=4, analytic_kl=False)
    assert torch.allclose(est["kl_dims"].sum(-1), est["log_qz"] - est["log_pz"], atol=1e-3)
    means = m.latent_means(x)
    assert [t.shape for t in means] == [(6, s) for s in m.sizes]
    assert m.code(x).shape == (6, m.code_dim)
    assert m.decode_code(m.code(x)).shape == m.reconstruct(x).shape == x.shape
    assert m.sample(5).shape == (5, *x.shape[1:])
    lat = m.latents(x)
    assert torch.equal(lat["code"], m.code(x))                  # the top layer's mean
    assert set(lat) == {"code", *(f"{p}{'' if l == 1 else l}" for l in range(1, layers + 1)
                                  for p in ("mean", "logvar"))}


@pytest.mark.parametrize("cell", ["mlp", "conv"])
def test_gradients_reach_every_part(cell):
    m, x = _model(cell, layers=3), _x(cell)
    out = m.infer(x)
    (-(out["log_px"] - out["kl_dims"].sum(-1)).mean()).backward()
    parts = {"stem": m.stem, "up": m.up_blocks, "posteriors": m.post, "priors": m.prior,
             "z_in": m.z_in, "cells": m.cells, "head": m.head, "down": m.down}
    for name, part in parts.items():
        grads = [p.grad for p in part.parameters()]
        if name == "down" and cell == "mlp":
            assert grads == []                                   # no resolution change
            continue
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), name


def test_analytic_kl_matches_its_monte_carlo_estimate():
    m, x = _model(layers=3), _x()[:1]
    with torch.no_grad():
        a = m.infer(x, k=20000)["kl_dims"].sum(-1).mean()
        s = m.infer(x, k=20000, analytic_kl=False)["kl_dims"].sum(-1).mean()
    assert abs(a - s) < 0.05 * abs(a) + 0.05


def test_gaussian_helpers_against_closed_forms():
    q = DiagGaussian(torch.tensor([0.3, -1.0]), torch.tensor([0.2, -0.5]))
    p = DiagGaussian(torch.tensor([-0.4, 0.5]), torch.tensor([-0.1, 0.7]))
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(q.mu, q.std),
                                            torch.distributions.Normal(p.mu, p.std))
    assert torch.allclose(_gaussian_kl(q, p), ref, atol=1e-6)
    # the precision-weighted product of two Gaussians (Ladder VAE): precisions add
    m = _precision_merge(q, p)
    vq, vp = q.std ** 2, p.std ** 2
    var = 1 / (1 / vq + 1 / vp)
    assert torch.allclose(torch.exp(m.logvar), var, atol=1e-6)
    assert torch.allclose(m.mu, var * (q.mu / vq + p.mu / vp), atol=1e-6)


def test_one_layer_is_a_plain_vae_with_a_standard_normal_prior():
    m, x = _model(layers=1), _x()
    out = m.infer(x, k=3)
    z_dims = out["kl_dims"].shape[-1]
    q = DiagGaussian(*m.post[0](m.bottom_up(x)[0]).chunk(2, 1))
    kl = 0.5 * (q.mu ** 2 + torch.exp(torch.tanh(q.logvar / 10) * 10) - 1
                - torch.tanh(q.logvar / 10) * 10)
    assert z_dims == 4 and torch.allclose(out["kl_dims"][0], kl, atol=1e-5)


def test_sampling_is_seeded_and_layers_vary_alone():
    m = _model(layers=3)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(m.sample(4, generator=g1), m.sample_from_noise(m.layer_noise(4, g2)))
    imgs = layer_variations_images(m, n=5, seed=0, rows=2)
    assert imgs.shape == (2, 3, 5, *SHAPES["mlp"])
    # each row varies one layer: its images differ from each other ...
    assert (imgs[:, :, 1:] - imgs[:, :, :1]).abs().amax() > 1e-4
    # ... and a held draw is held: the same seed gives the same picture
    assert torch.equal(imgs, layer_variations_images(m, n=5, seed=0, rows=2))
    grid = layer_variations(m, n=5)
    assert grid.shape[0] == 3 and grid.min() >= 0 and grid.max() <= 1


def test_hvae_is_a_hierarchy_too():
    m = HVAE((1, 8, 8), latent_dim=6, latent_dim2=3, hidden_dims=[8], hidden_dims2=[8])
    x = torch.rand(4, 1, 8, 8).bernoulli()
    kl = layer_kls(m, m.infer(x)["kl_dims"][0])
    assert kl.shape == (4, 2)
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    assert torch.equal(m.sample(3, generator=g1), m.sample_from_noise(m.layer_noise(3, g2)))


# -- bad settings are one line ------------------------------------------------------------------
def test_bad_settings_name_the_problem():
    with pytest.raises(UserError, match="model.latent_dim lists 2 sizes but model.layers=3"):
        Ladder((1, 8, 8), layers=3, latent_dim=[4, 4])
    with pytest.raises(UserError, match="model.cell=conv needs images of side >= 4"):
        Ladder((1, 64, 1), cell="conv")
    with pytest.raises(UserError, match="set one of them to 0"):
        ELBO(free_bits=0.1, free_bits_layer=1.0)
    with pytest.raises(UserError, match="loss.warmup_steps"):
        ELBO(kl_balance=True)
    from vae_train.losses import BetaVAE
    with pytest.raises(UserError, match="do not combine with loss.capacity=true"):
        BetaVAE(capacity=True, free_bits_layer=2.0)
    Ladder((1, 64, 1), layers=2, latent_dim=[3, 5])             # mlp takes sequences


# -- the objective's per-layer terms --------------------------------------------------------------
def test_elbo_logs_every_layer_and_floors_per_layer():
    m, x = _model(layers=3), _x()
    torch.manual_seed(0)
    terms = ELBO()(m, x, step=0)
    layer = [terms[f"kl_{i}"] for i in (1, 2, 3)]
    assert torch.allclose(sum(layer), terms["kl"], atol=1e-4)
    assert "kl_4" not in terms
    # a floor above every layer's KL makes the KL part of the loss L * floor exactly
    torch.manual_seed(0)
    floored = ELBO(free_bits_layer=1000.0)(m, x, step=0)
    assert torch.allclose(floored["loss"], floored["recon"] + 3 * 1000.0)
    torch.manual_seed(0)
    iw = IWAE(k=3)(m, x)
    assert {"kl_1", "kl_2", "kl_3"} <= set(iw)


def test_kl_balance_weights_are_shares_per_dimension_during_warmup_only():
    layer_kl = torch.tensor([[2.0, 8.0], [2.0, 8.0]])          # (B, L)
    w = ELBO.balance(layer_kl, [2, 4])                          # per dim: 1.0 and 2.0
    assert torch.allclose(w.mean(), torch.tensor(1.0))
    assert torch.allclose(w[1] / w[0], torch.tensor(2.01 / 1.01))
    elbo = ELBO(warmup_steps=100, kl_balance=True)
    kl_dims = torch.tensor([[1.0, 1.0, 2.0, 2.0, 2.0, 2.0]]).repeat(2, 1)
    kl = kl_dims.sum(-1)
    during, _ = elbo.penalty(kl, kl_dims, 50, True, layer_kl, [2, 4])
    after, _ = elbo.penalty(kl, kl_dims, 100, True, layer_kl, [2, 4])
    assert torch.allclose(after, torch.tensor(10.0))            # weight 1, plain KL
    expect = 0.5 * (w * torch.tensor([2.0, 8.0])).sum()
    assert torch.allclose(during, expect)


# -- a run: it learns, and evaluate / sample / resume work ------------------------------------
@pytest.fixture(scope="module")
def ladder_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ladder")
    run = tmp / "run"
    run_cli([*TINY, "model=ladder", "model.layers=3", "model.latent_dim=4",
             "model.hidden_dim=64", "trainer.epochs=3", "optimizer.lr=2e-3",
             f"hydra.run.dir={run}"], cwd=tmp)
    return tmp, run


@pytest.mark.slow
def test_a_short_run_learns_and_logs_every_layer(ladder_run):
    _, run = ladder_run
    m = json.loads((run / "metrics.json").read_text())
    val = [e["val_loss"] for e in m["history"]]
    assert val[-1] < val[0] - 5, val
    kls = [m[f"test_kl_{i}"] for i in (1, 2, 3)]
    assert math.isclose(sum(kls), m["test_kl"], rel_tol=1e-3, abs_tol=1e-3)


@pytest.mark.slow
def test_evaluate_sample_and_resume(ladder_run):
    tmp, run = ladder_run
    run_module("vae_train.evaluate", [f"run={run}", "k=50", "n=100", "progress=false"], cwd=tmp)
    e = json.loads((run / "eval.json").read_text())
    assert e["latent_dims_per_layer"] == [4, 4, 4] and len(e["active_units_per_layer"]) == 3
    assert len(e["kl_per_layer"]) == len(e["kl_units_per_layer"]) == 3
    assert math.isclose(sum(e["kl_per_layer"]), e["kl"], rel_tol=1e-3, abs_tol=1e-3)
    assert e["nll"] <= -e["elbo"] + 0.5                         # the bound is looser
    out = tmp / "pics"
    run_module("vae_train.sample", [f"run={run}", f"out={out}", "n=16"], cwd=tmp)
    from PIL import Image
    with Image.open(out / "layer_variations.png") as img:
        assert img.size[0] > 0
    run_cli([f"resume={run}", "trainer.epochs=4"], cwd=tmp)
    m = json.loads((run / "metrics.json").read_text())
    assert m["epoch"] == 4 and len(m["history"]) == 4


@pytest.mark.slow
def test_encode_and_export_see_every_layer(ladder_run):
    import numpy as np
    tmp, run = ladder_run
    run_module("vae_train.encode", [f"run={run}", "progress=false"], cwd=tmp)
    with np.load(run / "encode" / "test.npz") as z:
        for name in ("mean", "logvar", "mean2", "logvar2", "mean3", "logvar3", "code"):
            assert z[name].shape == (300, 4), name
        assert np.array_equal(z["code"], z["mean3"])           # the code is the top layer
    out = tmp / "ts"
    run_module("vae_train.export", [f"run={run}", "format=torchscript", f"out={out}"], cwd=tmp)
    info = json.loads((out / "export.json").read_text())
    assert (out / "decoder.pt").exists() and (out / "encoder.pt").exists(), info


def test_the_results_script_tabulates_layers_and_draws_the_curves(tmp_path, capsys):
    report = load_script("ladder_report")
    for name, epochs in (("L2", 3), ("L2_e2", 2)):
        run = tmp_path / name
        run.mkdir()
        hist = [{"epoch": i + 1, "val_loss": 250.0 - i, "val_kl_1": 1.0 + i, "val_kl_2": 5.0}
                for i in range(epochs)]
        (run / "metrics.json").write_text(json.dumps(
            {"epoch": epochs, "train_seconds": 12.0, "history": hist}))
        (run / "eval.json").write_text(json.dumps(
            {"elbo": -248.5, "nll": 246.25, "k": 1000, "latent_dims_per_layer": [2, 3],
             "active_units_per_layer": [2, 1], "kl_per_dim": [0.5, 0.001, 4.0, 0.02, 0.0]}))
    report.main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "| L2 | 3 | 12 | 248.50 | 246.25 (1000) | 0.5 + 4.0 | 1/2 + 2/3 | 2/2 + 1/3 |" in out
    assert "| L2_e2 | 2 |" in out
    from PIL import Image
    with Image.open(tmp_path / "ladder_curves.png") as img:
        assert img.size[0] > 500
