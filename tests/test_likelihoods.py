"""Likelihoods of 8-bit pixels (the discretised mixture of logistics and the discretised
Gaussian): normalised over the 256 levels, equal to a direct float64 computation, finite
gradients at the edge levels, the decoders sized by them, bits per dimension in a run, and the
choice and refusal of a likelihood for the data's kind of values."""

import json
import math

import mpmath
import pytest
import torch

from conftest import TINY, compose_cfg, run_cli
from vae_train.build import build
from vae_train.distributions import (BernoulliLikelihood, DiscretizedGaussian,
                                     DiscretizedLogisticMixture, GaussianLikelihood,
                                     bits_per_dim)
from vae_train.errors import UserError
from vae_train.losses import ELBO
from vae_train.models.aae import AAE
from vae_train.models.gumbel_vae import GumbelVAE
from vae_train.models.hvae import HVAE
from vae_train.models.m2 import M2
from vae_train.models.rnn_vae import RNNVAE
from vae_train.models.vae import VAE

LEVELS = torch.arange(256, dtype=torch.float32) / 255          # the 256 values of a pixel


def random_params(p: int, n: int, seed: int, spread: float = 2.0) -> torch.Tensor:
    """(n, p, 1, 1) decoder outputs: n parameter settings of one pixel, log-scales included
    (from very narrow to very wide: entries of N(0, spread^2))."""
    g = torch.Generator().manual_seed(seed)
    return spread * torch.randn(n, p, 1, 1, generator=g)


# -- direct computations at 30 digits (mpmath, which torch's sympy brings), independent of the
# module's formulas: probabilities of far tails do not underflow, CDFs are subtracted as is
mpmath.mp.dps = 30


def _sigmoid(t):
    return 1 / (1 + mpmath.exp(-t))


def bin_probability(cdf, k: int, mean: float, log_scale: float):
    """P(level k) of a distribution on [-1, 1] given its CDF: the mass of [x - 1/255,
    x + 1/255] for x = 2k/255 - 1, the edge bins reaching to -inf / +inf; a bin above the mean
    is taken as a difference of upper tails (so 30 digits are plenty)."""
    s = mpmath.exp(max(log_scale, -7.0))
    x = mpmath.mpf(2 * k) / 255 - 1
    hi = mpmath.inf if k == 255 else (x + mpmath.mpf(1) / 255 - mean) / s
    lo = -mpmath.inf if k == 0 else (x - mpmath.mpf(1) / 255 - mean) / s
    if hi + lo > 0:
        return cdf(-lo) - cdf(-hi)
    return cdf(hi) - cdf(lo)


def direct_mixture_log_prob(params, x) -> float:
    """log p of one pixel (C channels, levels ``x``) under the mixture of K logistics, from
    ``params`` (P,): PixelCNN++'s coupled RGB form for C = 3, else independent channels."""
    c = len(x)
    vals = [mpmath.mpf(2 * v) / 255 - 1 for v in x]
    if c == 3:
        k = len(params) // 10
        logits, rest = params[:k], params[k:]
        means = [rest[i * k:(i + 1) * k] for i in range(3)]
        log_s = [rest[3 * k + i * k:3 * k + (i + 1) * k] for i in range(3)]
        coef = [[mpmath.tanh(v) for v in rest[6 * k + i * k:6 * k + (i + 1) * k]]
                for i in range(3)]
        w = [mpmath.exp(a) for a in logits]
        w = [v / sum(w) for v in w]
        total = 0
        for j in range(k):
            mu = [means[0][j], means[1][j] + coef[0][j] * vals[0],
                  means[2][j] + coef[1][j] * vals[0] + coef[2][j] * vals[1]]
            p = w[j]
            for ch in range(3):
                p *= bin_probability(_sigmoid, x[ch], mu[ch], log_s[ch][j])
            total += p
        return float(mpmath.log(total))
    k = len(params) // (3 * c)
    out = 0
    for ch in range(c):
        logits = params[ch * k:(ch + 1) * k]
        means = params[(c + ch) * k:(c + ch + 1) * k]
        log_s = params[(2 * c + ch) * k:(2 * c + ch + 1) * k]
        w = [mpmath.exp(a) for a in logits]
        out += mpmath.log(sum(wj / sum(w) * bin_probability(_sigmoid, x[ch], mu, ls)
                              for wj, mu, ls in zip(w, means, log_s)))
    return float(out)


def direct_gaussian_log_prob(params, x) -> float:
    c = len(x)
    return float(sum(mpmath.log(bin_probability(mpmath.ncdf, x[ch], params[ch], params[c + ch]))
                     for ch in range(c)))


# -- normalisation ---------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("mixtures", [1, 5])
def test_logistic_mixture_sums_to_one_over_the_256_levels(channels, mixtures):
    lik = DiscretizedLogisticMixture(mixtures, channels)
    out = random_params(lik.param_channels(channels), 6, seed=mixtures + channels, spread=3.0)
    x = LEVELS.view(256, 1, 1, 1).expand(256, channels, 1, 1)
    for o in out:                                      # per channel: the 256 levels sum to 1
        p = lik.log_prob_pixels(o.expand(256, -1, 1, 1), x).double().exp().sum(0)
        assert torch.allclose(p, torch.ones_like(p), atol=1e-4), p.flatten()


def test_coupled_rgb_mixture_conditionals_sum_to_one():
    """RGB: for a fixed red level the 256^2 (green, blue) pairs sum to p(r), the red marginal
    of a direct computation, and those marginals sum to 1 over the 256 red levels (the full
    256^3 sum is the slow test below)."""
    lik = DiscretizedLogisticMixture(3, 3)
    params = random_params(30, 1, seed=7)[0]
    flat = params.flatten().double().tolist()
    k = 3
    w = torch.softmax(torch.tensor(flat[:k], dtype=torch.float64), 0).tolist()

    def p_red(r):   # sum_k w_k P_k(r): the red channel is not coupled to anything
        return float(sum(w[j] * bin_probability(_sigmoid, r, flat[k + j], flat[4 * k + j])
                         for j in range(k)))

    assert sum(p_red(r) for r in range(256)) == pytest.approx(1, abs=1e-9)
    gb = torch.cartesian_prod(torch.arange(256), torch.arange(256))
    for r in (0, 77, 255):
        x = torch.stack([torch.full((len(gb),), r), gb[:, 0], gb[:, 1]], 1).float() / 255
        p = lik.log_prob(params.expand(len(gb), -1, 1, 1), x.view(-1, 3, 1, 1)).double().exp()
        assert p.sum().item() == pytest.approx(p_red(r), rel=1e-4, abs=1e-9)


@pytest.mark.slow
def test_coupled_rgb_mixture_sums_to_one_over_all_256_cubed_values():
    lik = DiscretizedLogisticMixture(2, 3)
    params = random_params(20, 1, seed=3)[0]
    total = 0.0
    with torch.no_grad():
        for r in range(256):
            gb = torch.cartesian_prod(torch.arange(256), torch.arange(256))
            x = torch.stack([torch.full((len(gb),), r), gb[:, 0], gb[:, 1]], 1).float() / 255
            total += lik.log_prob(params.expand(len(gb), -1, 1, 1),
                                  x.view(-1, 3, 1, 1)).double().exp().sum().item()
    assert total == pytest.approx(1, abs=1e-4)


@pytest.mark.parametrize("channels", [1, 3])
def test_discretized_gaussian_sums_to_one_over_the_256_levels(channels):
    lik = DiscretizedGaussian(channels)
    out = random_params(2 * channels, 8, seed=channels, spread=3.0)
    out[0, channels:] = 6.0                             # very wide: the mid-point branch
    out[1, channels:] = -7.0                            # as narrow as allowed
    x = LEVELS.view(256, 1, 1, 1).expand(256, channels, 1, 1)
    for o in out:
        p = lik.log_prob_pixels(o.expand(256, -1, 1, 1), x).double().exp().sum(0)
        assert torch.allclose(p, torch.ones_like(p), atol=1e-4), p.flatten()


# -- against a direct computation ------------------------------------------------------------
@pytest.mark.parametrize("channels,mixtures", [(1, 1), (1, 4), (2, 3), (3, 1), (3, 4)])
def test_logistic_mixture_matches_the_direct_computation(channels, mixtures):
    lik = DiscretizedLogisticMixture(mixtures, channels)
    n = 40
    out = random_params(lik.param_channels(channels), n, seed=11 * channels + mixtures,
                        spread=1.5)
    g = torch.Generator().manual_seed(mixtures)
    levels = torch.randint(0, 256, (n, channels), generator=g)
    levels[0], levels[1] = 0, 255                      # the edge bins
    got = lik.log_prob(out, (levels.float() / 255).view(n, channels, 1, 1))
    for i in range(n):
        want = direct_mixture_log_prob(out[i].flatten().tolist(), levels[i].tolist())
        assert got[i].item() == pytest.approx(want, rel=1e-5, abs=2e-4), (i, levels[i])


@pytest.mark.parametrize("channels", [1, 3])
def test_discretized_gaussian_matches_the_direct_computation(channels):
    lik = DiscretizedGaussian(channels)
    n = 60
    out = random_params(2 * channels, n, seed=5 + channels, spread=1.5)
    g = torch.Generator().manual_seed(channels)
    levels = torch.randint(0, 256, (n, channels), generator=g)
    levels[0], levels[1] = 0, 255
    got = lik.log_prob(out, (levels.float() / 255).view(n, channels, 1, 1))
    for i in range(n):
        want = direct_gaussian_log_prob(out[i].flatten().tolist(), levels[i].tolist())
        assert got[i].item() == pytest.approx(want, rel=1e-5, abs=2e-4), (i, levels[i])


def test_log_prob_takes_a_leading_sample_dimension():
    for lik in (DiscretizedLogisticMixture(3, 3), DiscretizedGaussian(3)):
        out = random_params(lik.param_channels(3) * 4 * 4, 6, seed=1).view(2, 3, -1, 4, 4)
        x = torch.randint(0, 256, (3, 3, 4, 4)).float() / 255
        got = lik.log_prob(out, x)                     # (k=2, B=3)
        assert got.shape == (2, 3)
        for s in range(2):
            assert torch.allclose(got[s], lik.log_prob(out[s], x))


# -- gradients, mean, samples -----------------------------------------------------------------
@pytest.mark.parametrize("lik", [DiscretizedLogisticMixture(4, 3), DiscretizedLogisticMixture(4, 1),
                                 DiscretizedGaussian(3)], ids=["lm_rgb", "lm_grey", "dgauss"])
def test_gradients_are_finite_at_the_edge_levels(lik):
    c = lik.channels
    for value in (0.0, 1.0):
        for spread, shift in ((1.0, 0.0), (30.0, 0.0), (1.0, 40.0), (1.0, -40.0)):
            out = (random_params(lik.param_channels(c) * 4, 4, seed=2, spread=spread)
                   .view(4, -1, 2, 2) + shift).requires_grad_()
            x = torch.full((4, c, 2, 2), value)
            lp = lik.log_prob(out, x)
            assert torch.isfinite(lp).all() and (lp <= 1e-5).all()
            lp.sum().backward()
            assert torch.isfinite(out.grad).all(), (value, spread, shift)


@pytest.mark.parametrize("spread,shift", [(1.0, 0.0), (0.3, -5.0), (0.3, 5.0), (3.0, -3.0)],
                         ids=["usual", "narrow", "wide_mid_point", "far_means"])
def test_discretized_gaussian_backward_matches_finite_differences(spread, shift):
    """The hand-written backward against float64 finite differences, edge levels included."""
    from vae_train.distributions import _DiscretizedGaussian
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 1, 4, 4), generator=g).double() / 255 * 2 - 1
    x[0, 0, 0], x[1, 0, 0] = -1.0, 1.0
    mean = (spread * torch.randn(2, 3, 2, 4, 4, generator=g, dtype=torch.float64)
            * (4 if shift == -3.0 else 1)).requires_grad_()
    log_scale = (spread * torch.randn(2, 3, 2, 4, 4, generator=g, dtype=torch.float64)
                 + shift).requires_grad_()
    assert torch.autograd.gradcheck(lambda m, s: _DiscretizedGaussian.apply(x, m, s),
                                    (mean, log_scale), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mean,log_scale,level", [(0.9, -3.0, 10), (-0.9, -6.0, 250),
                                                  (0.0, -6.5, 255), (30.0, -6.9, 0),
                                                  (0.2, 0.5, 100)])
def test_discretized_gaussian_gradient_in_float32_far_in_the_tails(mean, log_scale, level):
    """d log P / d mean and d log P / d log_scale in float32 against 30-digit values, for bins
    tens to thousands of standard deviations from the mean (torch's log_ndtr backward is
    off there)."""
    lik = DiscretizedGaussian(1)
    out = torch.tensor([mean, log_scale]).view(1, 2, 1, 1).requires_grad_()
    lik.log_prob(out, torch.full((1, 1, 1, 1), level / 255)).sum().backward()
    s = mpmath.exp(log_scale)
    x = mpmath.mpf(2 * level) / 255 - 1
    hi = mpmath.inf if level == 255 else (x + mpmath.mpf(1) / 255 - mean) / s
    lo = -mpmath.inf if level == 0 else (x - mpmath.mpf(1) / 255 - mean) / s
    p = bin_probability(mpmath.ncdf, level, mean, log_scale)

    def phi_times(z):          # z phi(z), 0 at infinity
        return 0 if mpmath.isinf(z) else z * mpmath.npdf(z)

    def phi(z):
        return 0 if mpmath.isinf(z) else mpmath.npdf(z)

    d_mean = float((phi(lo) - phi(hi)) / (s * p))
    d_scale = float((phi_times(lo) - phi_times(hi)) / p)
    assert out.grad[0, 0].item() == pytest.approx(d_mean, rel=1e-4)
    assert out.grad[0, 1].item() == pytest.approx(d_scale, rel=1e-4)


def test_mean_and_sample_are_images_on_the_levels():
    torch.manual_seed(0)
    for lik in (DiscretizedLogisticMixture(3, 3), DiscretizedLogisticMixture(3, 1),
                DiscretizedGaussian(3)):
        c = lik.channels
        out = random_params(lik.param_channels(c) * 25, 4, seed=4).view(4, -1, 5, 5)
        m = lik.mean(out)
        assert m.shape == (4, c, 5, 5) and m.min() >= 0 and m.max() <= 1
        s = lik.sample(out, generator=torch.Generator().manual_seed(0))
        assert s.shape == (4, c, 5, 5)
        assert torch.allclose(s * 255, (s * 255).round(), atol=1e-4)   # on the 256 levels
        again = lik.sample(out, generator=torch.Generator().manual_seed(0))
        assert torch.equal(s, again)


def test_grey_mixture_mean_is_the_weighted_location():
    lik = DiscretizedLogisticMixture(2, 1)
    out = torch.tensor([0.0, math.log(3.0), -0.5, 0.5, -3.0, -3.0]).view(1, 6, 1, 1)
    # weights 1/4, 3/4; locations -0.5, 0.5 on [-1, 1]: mean 0.25 -> 0.625 on [0, 1]
    assert lik.mean(out).item() == pytest.approx(0.625, abs=1e-6)


def test_samples_follow_the_distribution():
    """The frequencies of 20000 draws of one RGB pixel's red level and of one grey pixel
    match exp(log_prob) (chi-square-sized tolerance)."""
    n = 20000
    lik = DiscretizedLogisticMixture(2, 1)
    out = torch.tensor([0.3, -0.2, -0.4, 0.6, -2.0, -2.5]).view(1, 6, 1, 1)
    draws = lik.sample(out.expand(n, -1, 1, 1), generator=torch.Generator().manual_seed(1))
    counts = torch.bincount((draws.flatten() * 255).round().long(), minlength=256).double()
    p = lik.log_prob_pixels(out.expand(256, -1, 1, 1), LEVELS.view(256, 1, 1, 1)).exp()
    expected = n * p.flatten().double()
    assert ((counts - expected).abs() <= 5 * expected.sqrt() + 3).all()
    gauss = DiscretizedGaussian(1)
    out = torch.tensor([0.9, -1.0]).view(1, 2, 1, 1)     # mass piled on the top edge
    draws = gauss.sample(out.expand(n, -1, 1, 1), generator=torch.Generator().manual_seed(2))
    top = (draws == 1).double().mean().item()
    want = gauss.log_prob(out, torch.ones(1, 1, 1, 1)).exp().item()
    assert top == pytest.approx(want, abs=0.015)


def test_param_channels():
    assert DiscretizedLogisticMixture(10, 3).param_channels(3) == 100     # K (1 + 3C)
    assert DiscretizedLogisticMixture(10, 1).param_channels(1) == 30      # 3K
    assert DiscretizedLogisticMixture(5, 2).param_channels(2) == 30       # 3K per channel
    assert DiscretizedGaussian(3).param_channels(3) == 6
    assert BernoulliLikelihood().param_channels(3) == 3
    assert GaussianLikelihood(channels=3).param_channels(3) == 3


def test_bits_per_dim():
    assert bits_per_dim(3072 * math.log(2), (3, 32, 32)) == pytest.approx(1.0)


# -- models built with each likelihood ---------------------------------------------------------
MODELS = {
    "vae": lambda lik: VAE((3, 8, 8), latent_dim=4, hidden_dims=(32,), likelihood=lik),
    "hvae": lambda lik: HVAE((3, 8, 8), latent_dim=4, latent_dim2=2, hidden_dims=(16,),
                             hidden_dims2=(8,), likelihood=lik),
    "gumbel_vae": lambda lik: GumbelVAE((3, 8, 8), num_latents=3, num_categories=4,
                                        hidden_dims=(32,), likelihood=lik),
    "m2": lambda lik: M2((3, 8, 8), num_classes=3, latent_dim=4, hidden_dims=(16,),
                         classifier_dims=(16,), likelihood=lik),
    "rnn_vae": lambda lik: RNNVAE((3, 8, 8), latent_dim=4, hidden_dim=16, likelihood=lik),
    "aae": lambda lik: AAE((3, 8, 8), latent_dim=2, hidden_dims=(16,), disc_hidden_dims=(8,),
                           likelihood=lik),
}
LIKELIHOODS = {"logistic_mixture": lambda: DiscretizedLogisticMixture(3, 3),
               "discretized_gaussian": lambda: DiscretizedGaussian(3)}


@pytest.mark.parametrize("likelihood", list(LIKELIHOODS))
@pytest.mark.parametrize("name", list(MODELS))
def test_models_decode_the_likelihoods_parameters(name, likelihood):
    torch.manual_seed(0)
    lik = LIKELIHOODS[likelihood]()
    model = MODELS[name](lik)
    assert model.output_shape == (lik.param_channels(3), 8, 8)
    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8).float() / 255
    if name == "aae":
        out = model.decode(model.encode(x))
        terms = model.loss_terms(x, phase="autoencoder")
        assert torch.isfinite(terms["loss"])
    else:
        inf = model.infer(x, k=2)
        out = inf["x_out"]
        assert inf["log_px"].shape == (2, 5) and torch.isfinite(inf["log_px"]).all()
        # nats per example: 192 pixels, each at most log 1 and (untrained) about log(1/256)
        assert (inf["log_px"] < 0).all() and (inf["log_px"] > -192 * 30).all()
    assert out.shape[1:] == model.output_shape
    assert model.reconstruct(x).shape == x.shape
    assert model.sample(4).shape == (4, 3, 8, 8)


# -- choosing the likelihood from the config and the data ------------------------------------
SMALL = ["dataset=synthetic", "dataset.num_train=64", "dataset.num_test=16",
         "dataset.image_size=8", "device=cpu", "model.hidden_dims=[16]"]


@pytest.mark.parametrize("choice,values,kind,bounded", [
    ("auto", "8bit", BernoulliLikelihood, None), ("auto", "binary", BernoulliLikelihood, None),
    ("auto", "unit", GaussianLikelihood, True), ("auto", "real", GaussianLikelihood, False),
    ("gaussian", "real", GaussianLikelihood, False), ("gaussian", "8bit", GaussianLikelihood, True),
    ("logistic_mixture", "8bit", DiscretizedLogisticMixture, None),
    ("discretized_gaussian", "8bit", DiscretizedGaussian, None),
])
def test_the_likelihood_for_each_kind_of_values(choice, values, kind, bounded):
    lik = ELBO(likelihood=choice, mixtures=4).make_likelihood(3, values)
    assert type(lik) is kind
    if bounded is not None:
        assert lik.bounded is bounded
        out = torch.tensor([-3.0, 0.0, 2.0]).view(1, 3, 1, 1)
        assert torch.allclose(lik.mean(out), torch.sigmoid(out) if bounded else out)
    if kind is DiscretizedLogisticMixture:
        assert lik.param_channels(3) == 40


def test_config_builds_the_mixture_with_its_components():
    cfg = compose_cfg([*SMALL, "dataset.channels=3", "loss.likelihood=logistic_mixture",
                       "loss.mixtures=2"])
    dm, objective, model = build(cfg, torch.device("cpu"))
    assert isinstance(model.likelihood, DiscretizedLogisticMixture)
    assert model.output_shape == (20, 8, 8) and dm.values == "8bit"
    x, y = dm.train_batch(torch.arange(4))
    assert torch.isfinite(objective(model, x, y)["loss"])


@pytest.mark.parametrize("choice", ["logistic_mixture", "discretized_gaussian"])
def test_discretised_likelihood_on_sequences_is_one_line(choice):
    cfg = compose_cfg(["model=rnn_vae", "dataset=sines", "dataset.num_train=40",
                       "dataset.num_test=10", "device=cpu", f"loss.likelihood={choice}"])
    with pytest.raises(UserError) as e:
        build(cfg, torch.device("cpu"))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"loss.likelihood={choice} needs 8-bit images; sines holds")
    assert msg.endswith("use loss.likelihood=gaussian")


def test_bad_mixtures_and_likelihood_names_the_key():
    from vae_train.config import validate
    with pytest.raises(UserError, match=r"^loss.mixtures=0 is invalid"):
        validate(compose_cfg(["loss.mixtures=0"]))
    with pytest.raises(UserError, match=r"^loss.likelihood='poisson' is invalid.*auto"):
        validate(compose_cfg(["loss.likelihood=poisson"]))


# -- a run on 8-bit images reports bits per dimension --------------------------------------------
@pytest.mark.slow
def test_a_logistic_mixture_run_reports_bits_per_dim(tmp_path, call):
    run = tmp_path / "run"
    run_cli([*TINY, "dataset.channels=3", "dataset.image_size=8",
             "loss.likelihood=logistic_mixture", "loss.mixtures=3", "model.hidden_dims=[64]",
             "trainer.epochs=3", "trainer.image_every_epochs=0", f"hydra.run.dir={run}"],
            tmp_path)
    m = json.loads((run / "metrics.json").read_text())
    assert math.isfinite(m["test_bpd"]) and 0 < m["test_bpd"] < 8
    assert m["test_bpd"] == pytest.approx(-m["test_elbo"] / (3 * 8 * 8 * math.log(2)), rel=1e-6)
    losses = [h["train_loss"] for h in m["history"]]
    assert losses[-1] < losses[0] and m["history"][-1]["val_loss"] < m["history"][0]["val_loss"]
    assert (run / "samples.png").is_file() and (run / "reconstructions.png").is_file()
    call("vae_train.evaluate", [f"run={run}", "k=20", "n=60", "progress=false"])
    ev = json.loads((run / "eval.json").read_text())
    assert ev["bpd_of"] == "nll"
    assert ev["bpd"] == pytest.approx(ev["nll"] / (3 * 8 * 8 * math.log(2)), rel=1e-6)
    assert 0 < ev["bpd"] <= -ev["elbo"] / (3 * 8 * 8 * math.log(2)) + 1e-6   # NLL <= -ELBO

