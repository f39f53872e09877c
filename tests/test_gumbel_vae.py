"""model=gumbel_vae: categorical latents with the Gumbel-softmax relaxation."""

import itertools
import json
import math

import pytest
import torch
from PIL import Image

from conftest import TINY, compose_cfg, run_cli
from vae_train.errors import UserError
from vae_train.api import log_likelihood
from vae_train.logging import TBLogger
from vae_train.losses import ELBO, IWAE
from vae_train.models.gumbel_vae import GumbelVAE, categorical_kl_to_uniform
from vae_train.pictures.grids import categorical_traversals
from vae_train.build import build
from vae_train.training.trainer import Trainer

SHAPE = (1, 8, 8)


def small(n=5, k=4, **kw):
    torch.manual_seed(0)
    return GumbelVAE(SHAPE, num_latents=n, num_categories=k, hidden_dims=[32], **kw)


def binary_images(b=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, *SHAPE, generator=g) < 0.4).float()


def set_logits(model, bias):
    """Make the encoder output the same logits ``bias`` (N*K,) for every image."""
    last = model.encoder[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(bias)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("analytic_kl", [True, False])
def test_infer_shapes(training, analytic_kl):
    model, x = small(), binary_images(4)
    model.train(training)
    out = model.infer(x, k=3, analytic_kl=analytic_kl, step=10)
    for key in ("log_px", "log_pz", "log_qz"):
        assert out[key].shape == (3, 4) and torch.isfinite(out[key]).all(), key
    assert out["kl_dims"].shape == (3, 4, 5)
    assert out["x_out"].shape == (12, *SHAPE)
    assert torch.allclose(out["log_pz"], torch.full((3, 4), -5 * math.log(4)))
    assert model.latent_means(x)[0].shape == (4, 20) and model.code_dim == 20
    assert model.reconstruct(x).shape == x.shape and model.sample(7).shape == (7, *SHAPE)


def test_kl_to_the_uniform_prior_is_analytic():
    n, k = 5, 4
    model, x = small(n, k), binary_images(3)
    model.eval()
    set_logits(model, torch.zeros(n * k))                     # q uniform: KL 0
    out = model.infer(x, k=2)
    assert torch.allclose(out["kl_dims"], torch.zeros(2, 3, n), atol=1e-6)
    assert torch.allclose(out["log_qz"], out["log_pz"], atol=1e-5)  # q(c|x) = p(c)
    set_logits(model, torch.tensor([40.0, 0, 0, 0]).repeat(n))  # q one-hot: KL log K
    out = model.infer(x, k=2)
    assert torch.allclose(out["kl_dims"], torch.full((2, 3, n), math.log(k)), atol=1e-5)
    logits = torch.randn(n * k)                                # any q: the closed form
    set_logits(model, logits)
    q = torch.distributions.Categorical(logits=logits.view(n, k))
    u = torch.distributions.Categorical(logits=torch.zeros(n, k))
    expected = torch.distributions.kl_divergence(q, u)
    assert torch.allclose(model.infer(x)["kl_dims"][0, 0], expected, atol=1e-5)
    # the single-sample estimate log q(c) - log p(c) averages to the same
    est = model.infer(x, k=20000, analytic_kl=False)["kl_dims"].mean((0, 1))
    assert torch.allclose(est, expected, atol=0.03)


def test_temperature_schedule():
    model = small(tau0=1.0, tau_min=0.5, anneal_rate=3e-5)
    assert model.temperature(0) == 1.0
    assert model.temperature(1000) == pytest.approx(math.exp(-0.03))
    assert model.temperature(10000) == pytest.approx(math.exp(-0.3))
    assert model.temperature(math.ceil(math.log(2) / 3e-5)) == 0.5     # reaches the floor
    assert model.temperature(10 ** 6) == 0.5 and model.temperature(None) == 0.5
    assert model.schedule_terms(1000) == {"tau": pytest.approx(math.exp(-0.03))}
    assert small(tau0=2.0, tau_min=0.1, anneal_rate=0).temperature(10 ** 6) == 2.0
    # infer draws at tau(step): near uniform when hot, near one-hot when cold
    model = small(tau0=1000.0, tau_min=0.01, anneal_rate=1.0).train()
    set_logits(model, torch.zeros(20))
    x = binary_images(50)
    hot = model.draw(model.log_q(x), 1, step=0)
    cold = model.draw(model.log_q(x), 1, step=100)
    assert (hot - 0.25).abs().max() < 0.02
    assert (cold.max(-1).values > 0.99).float().mean() > 0.9


def test_eval_samples_are_exactly_one_hot_and_follow_q():
    model, x = small(), binary_images(6)
    model.eval()
    log_q = model.log_q(x)
    z = model.draw(log_q, 50, step=0)
    assert set(z.unique().tolist()) == {0.0, 1.0} and (z.sum(-1) == 1).all()
    # hard=true in training: forward one-hot too
    st = small(hard=True).train()
    zh = st.draw(st.log_q(x), 3, step=0)
    assert torch.allclose(zh.sum(-1), torch.ones(3, 6, 5)) and \
        ((zh - zh.round()).abs() < 1e-6).all()
    soft = small(hard=False).train().draw(log_q, 3, step=0)
    assert ((soft > 1e-3) & (soft < 0.999)).any()              # relaxed: not one-hot
    # the empirical class frequencies of eval samples follow q
    freq = model.draw(log_q, 20000, step=0).mean(0)
    assert torch.allclose(freq, log_q.exp(), atol=0.015)


@pytest.mark.parametrize("hard", [False, True])
def test_gradient_reaches_the_encoder_through_the_samples(hard):
    model, x = small(hard=hard), binary_images(8)
    model.train()
    # the reconstruction term alone: its only path to the encoder is the sample
    model.infer(x, k=2, step=0)["log_px"].mean().backward()
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    model.zero_grad()
    ELBO()(model, x, step=0)["loss"].backward()
    assert model.encoder[0].weight.grad.abs().sum() > 0


def test_importance_weights_give_the_exact_marginal_of_the_discrete_model():
    """Eval mode on a model small enough to enumerate: 2 variables of 3 classes, 9 codes."""
    n, k = 2, 3
    model, x = small(n, k), binary_images(4)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(4)                                          # make p(x|c) depend on c
    model.eval()
    codes = torch.tensor(list(itertools.product(range(k), repeat=n)))          # (9, 2)
    with torch.no_grad():
        out = model.decode(model.one_hot(codes))                               # (9, ...)
        log_px_c = model.likelihood.log_prob(out.unsqueeze(1).expand(-1, len(x), *SHAPE),
                                             x)                                  # (9, B)
        exact = torch.logsumexp(log_px_c, 0) - n * math.log(k)
        log_q = model.log_q(x)
        q_c = log_q.exp()[:, torch.arange(n), codes].prod(-1).T               # (9, B)
        elbo = (q_c * log_px_c).sum(0) - categorical_kl_to_uniform(log_q).sum(-1)
        torch.manual_seed(0)
        est = log_likelihood(model, x, None, k=40000, max_batch=40000)
        one = model.infer(x, k=40000, analytic_kl=True)
    assert torch.allclose(est, exact, atol=0.06)            # 40,000 samples of a 9-code q
    assert (exact - elbo > 1).all()                           # the ELBO is far below
    assert torch.allclose(one["log_px"].mean(0) - one["kl_dims"][0].sum(-1), elbo, atol=0.15)
    # IWAE in evaluation: its expected bound rises with k towards log p(x), staying below
    many = x.repeat(500, 1, 1, 1)                             # 500 draws of each bound
    with torch.no_grad():
        iw1, iw5, iw50 = [IWAE(k=s)(model, many, train=False)["iwae"] for s in (1, 5, 50)]
    assert float(iw1) == pytest.approx(float(elbo.mean()), abs=0.2)
    assert iw1 < iw5 < iw50 < exact.mean()


def test_bad_settings_name_the_key():
    with pytest.raises(UserError, match=r"^model.num_categories=1 is invalid"):
        GumbelVAE(SHAPE, num_categories=1)
    with pytest.raises(UserError, match=r"^model.tau_min=2.0 is invalid"):
        GumbelVAE(SHAPE, tau0=1.0, tau_min=2.0)
    with pytest.raises(UserError, match=r"^model.hard='yes' is invalid"):
        GumbelVAE(SHAPE, hard="yes")


def test_iwae_trains_it(tmp_path):
    cfg = compose_cfg(["model=gumbel_vae", "loss=iwae", "loss.k=3", "dataset=synthetic",
                       "dataset.num_train=600", "dataset.num_test=50", "trainer.epochs=2",
                       "trainer.batch_size=32", "trainer.progress=false",
                       "trainer.image_every_epochs=0"])
    dm, objective, model = build(cfg, torch.device("cpu"))
    trainer = Trainer(cfg, model, objective, dm, torch.device("cpu"), None, tmp_path,
                      TBLogger(tmp_path, enabled=False))
    trainer.fit()
    first, second = trainer.history
    assert second["train_loss"] < first["train_loss"]
    assert math.isfinite(second["val_iwae"]) and second["val_iwae"] >= second["val_elbo"]


def test_traversal_rows_show_each_class_of_a_variable():
    model, x = small(n=5, k=4), binary_images(2)
    model.eval()
    grid = categorical_traversals(model, x[:1], [3, 1])
    h, w = SHAPE[1:]
    assert grid.shape == (3, 2 + 2 * (h + 2), 2 + 5 * (w + 2))

    def cell(r, c):
        return grid[0, 2 + r * (h + 2):2 + r * (h + 2) + h, 2 + c * (w + 2):2 + c * (w + 2) + w]

    mode = model.mode(x[:1])[0]
    recon = model.reconstruct(x[:1])[0, 0]
    for r, v in enumerate([3, 1]):
        assert torch.equal(cell(r, 0), x[0, 0])                         # the input image
        assert torch.allclose(cell(r, 1 + int(mode[v])), recon, atol=1e-6)  # its own class
        codes = mode.repeat(4, 1)
        codes[:, v] = torch.arange(4)
        imgs = model.decode_code(model.one_hot(codes))
        for c in range(4):
            assert torch.allclose(cell(r, 1 + c), imgs[c, 0], atol=1e-6)


@pytest.mark.slow
def test_command_line_train_sample_evaluate_resume(tmp_path, call):
    run = tmp_path / "run"
    run_cli([*TINY, "model=gumbel_vae", "trainer.epochs=2", f"hydra.run.dir={run}"], tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    h = metrics["history"]
    assert [e["epoch"] for e in h] == [1, 2] and h[1]["train_loss"] < h[0]["train_loss"]
    assert 0.5 <= h[1]["train_tau"] < h[0]["train_tau"] <= 1.0         # annealed by step
    assert "test_tau" not in metrics and math.isfinite(metrics["test_loss"])
    assert {p.stem for p in run.glob("*.png")} == {"reconstructions", "samples"}

    out = tmp_path / "pics"
    proc = call("vae_train.sample", [f"run={run}", "n=16", "dims=3", f"out={out}"])
    assert {p.stem for p in out.glob("*.png")} == {"samples", "reconstructions", "traversals"}
    assert "traversed variables" in proc.stderr
    with Image.open(out / "traversals.png") as im:             # 3 rows of image + 10 classes
        assert im.size == (2 + 11 * 30, 2 + 3 * 30)

    call("vae_train.evaluate", [f"run={run}", "k=20", "n=100", "batch_size=50",
                                "progress=false"])
    res = json.loads((run / "eval.json").read_text())
    assert res["n"] == 100 and res["k"] == 20
    assert res["latent_dims_per_layer"] == [300] and len(res["kl_per_dim"]) == 30
    assert 0 < res["nll"] <= -res["elbo"] + 1e-3

    proc = run_cli([f"resume={run}", "trainer.epochs=3"], tmp_path)
    assert "resumed from" in proc.stderr and "epoch 3/3" in proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["history"]] == [1, 2, 3] and metrics["epoch"] == 3
    assert not list(tmp_path.glob("outputs/*/*"))               # no new run directory
