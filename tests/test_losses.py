"""Likelihoods and KL terms against analytic and Monte Carlo values."""

import math

import torch
import torch.nn.functional as F

from vae_train.distributions import BernoulliLikelihood, DiagGaussian, GaussianLikelihood
from vae_train.losses import ELBO


def test_analytic_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.randn(3, 4), torch.randn(3, 4) * 0.5
    q = DiagGaussian(mu, logvar)
    analytic = q.kl_to_standard_normal().sum(-1)
    z = torch.stack([q.rsample() for _ in range(100000)])            # (S, 3, 4)
    p = DiagGaussian.standard(mu.shape)
    mc = (q.log_prob(z) - p.log_prob(z)).mean(0)
    assert torch.allclose(analytic, mc, atol=0.03), (analytic, mc)


def test_diag_gaussian_log_prob_matches_torch_distributions():
    mu, logvar, z = torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3)
    ours = DiagGaussian(mu, logvar).log_prob(z)
    ref = torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_kl_is_zero_for_the_prior_itself():
    q = DiagGaussian.standard((2, 7))
    assert torch.equal(q.kl_to_standard_normal(), torch.zeros(2, 7))


def test_bernoulli_is_summed_bce_per_example():
    logits, x = torch.randn(4, 1, 28, 28), torch.rand(4, 1, 28, 28)
    ll = BernoulliLikelihood().log_prob(logits, x)
    bce = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").sum((1, 2, 3))
    assert ll.shape == (4,)
    assert torch.allclose(-ll, bce, rtol=1e-4)


def test_gaussian_likelihood_matches_normal_log_prob():
    out, x = torch.randn(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    lik = GaussianLikelihood(sigma=0.2, channels=3)
    ref = torch.distributions.Normal(torch.sigmoid(out), 0.2).log_prob(x).sum((1, 2, 3))
    assert torch.allclose(lik.log_prob(out, x), ref, atol=1e-4)
    assert not any(p.requires_grad for p in lik.parameters())
    learned = GaussianLikelihood(sigma=0.2, learn_sigma=True, channels=3)
    assert [p.shape for p in learned.parameters()] == [torch.Size([3])]


def test_kl_warmup_is_linear_in_the_step_and_full_at_evaluation():
    elbo = ELBO(beta=4.0, warmup_steps=100)
    assert elbo.kl_weight(0) == 0.0
    assert math.isclose(elbo.kl_weight(25), 1.0)
    assert elbo.kl_weight(100) == 4.0 and elbo.kl_weight(10 ** 6) == 4.0
    assert elbo.kl_weight(None) == 4.0
    assert ELBO(beta=0.5).kl_weight(0) == 0.5


def test_elbo_terms_add_up():
    from vae_train.models.vae import VAE

    torch.manual_seed(0)
    model = VAE((1, 28, 28), latent_dim=3, hidden_dims=[16])
    x = torch.rand(8, 1, 28, 28)
    terms = ELBO(beta=2.0)(model, x)
    assert set(terms) >= {"loss", "recon", "kl", "elbo"}
    assert torch.allclose(terms["loss"], terms["recon"] + 2.0 * terms["kl"], rtol=1e-5)
    assert torch.allclose(terms["elbo"], -(terms["recon"] + terms["kl"]), rtol=1e-5)
    assert terms["kl"] > 0


def test_fast_bernoulli_nll_matches_torch_in_value_and_gradient():
    from vae_train.distributions import bernoulli_nll

    torch.manual_seed(0)
    o = (torch.randn(6, 50, dtype=torch.float64) * 8).requires_grad_()   # includes large |o|
    x = torch.rand(6, 50, dtype=torch.float64)
    ref = F.binary_cross_entropy_with_logits(o, x, reduction="none")
    assert torch.allclose(bernoulli_nll(o, x), ref, atol=1e-7)
    assert torch.autograd.gradcheck(lambda t: bernoulli_nll(t, x), (o,))
