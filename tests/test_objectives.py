"""beta-VAE, free bits, warm-up, IWAE and the likelihood estimator, against exact values."""

import math

import pytest
import torch

from vae_train.api import log_likelihood
from vae_train.distributions import GaussianLikelihood
from vae_train.losses import ELBO, IWAE, BetaVAE, iwae_bound
from vae_train.models.gaussian import GaussianVAE
from vae_train.models.cvae import CVAE
from vae_train.models.hvae import HVAE
from vae_train.models.vae import VAE


class IdentityGaussian(GaussianLikelihood):
    squash = staticmethod(lambda t: t)      # the decoder output is the mean itself


class LinearGaussianVAE(GaussianVAE):
    """p(z) = N(0, I), p(x|z) = N(W z + b, s^2 I): p(x) = N(b, W W^T + s^2 I) exactly.
    The encoder is the exact posterior's mean shrunk by ``shrink`` with a diagonal,
    inflated variance, so it is imperfect and the number of samples matters."""

    def __init__(self, W, b, s, shrink=0.8, inflate=1.5):
        super().__init__((1, 1, W.shape[0]), W.shape[1],
                         likelihood=IdentityGaussian(sigma=s, channels=1))
        self.W, self.b, self.s = W, b, s
        self.post_cov = torch.linalg.inv(torch.eye(W.shape[1]) + W.T @ W / s ** 2)
        self.shrink, self.inflate = shrink, inflate
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def encoder_forward(self, x, y):
        mu = (x.flatten(1) - self.b) @ self.W @ self.post_cov / self.s ** 2 * self.shrink
        logvar = torch.log(torch.diagonal(self.post_cov) * self.inflate).expand_as(mu)
        return torch.cat([mu, logvar], -1)

    def decoder_forward(self, z, y):
        return z @ self.W.T + self.b

    def exact_log_px(self, x):
        cov = self.W @ self.W.T + self.s ** 2 * torch.eye(self.W.shape[0])
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x.flatten(1))


@pytest.fixture
def linear_gaussian():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 2, generator=g)
    b = torch.randn(6, generator=g)
    model = LinearGaussianVAE(W, b, 0.5)
    z = torch.randn(300, 2, generator=g)
    x = (z @ W.T + b + 0.5 * torch.randn(300, 6, generator=g)).view(300, 1, 1, 6)
    return model, x


def test_importance_sampled_estimate_converges_to_the_exact_likelihood(linear_gaussian):
    model, x = linear_gaussian
    torch.manual_seed(1)
    exact = model.exact_log_px(x)
    errors = {}
    for k in (1, 10, 100, 1000, 10000):
        est = log_likelihood(model, x, None, k, max_batch=300 * 1000)
        errors[k] = (exact - est).mean().item()      # >= 0 in expectation: a lower bound
    assert errors[1] > 0.2                            # the encoder is imperfect: k matters
    assert errors[1] > errors[10] > errors[100] > errors[10000] - 1e-3
    assert abs(errors[10000]) < 0.01, errors
    assert (est - exact).abs().quantile(0.95) < 0.05   # nearly every example, not just the mean


def test_chunking_over_samples_does_not_change_the_estimate():
    """Served the same log weights, every chunk size gives logsumexp(all) - log k."""

    class Replay:
        def __init__(self, log_w):
            self.log_w, self.pos = log_w, 0

        def infer(self, x, y=None, k=1, analytic_kl=False):
            part = self.log_w[self.pos:self.pos + k]
            self.pos += k
            zeros = torch.zeros_like(part)
            return {"log_px": part, "log_pz": zeros, "log_qz": zeros}

    log_w = torch.randn(100, 7) * 5
    exact = torch.logsumexp(log_w, 0) - math.log(100)
    x = torch.zeros(7, 1)
    for max_batch in (7 * 100, 7 * 33, 7 * 5, 1):
        assert torch.allclose(log_likelihood(Replay(log_w), x, None, 100, max_batch), exact,
                              atol=1e-5)


def test_iwae_bound_does_not_decrease_with_k(linear_gaussian):
    model, x = linear_gaussian
    torch.manual_seed(0)
    xs = x.repeat(20, 1, 1, 1)                           # 6000 examples: noise << the gaps
    bounds = [IWAE(k=k, likelihood="gaussian")(model, xs)["iwae"].item() for k in (1, 2, 5, 50)]
    assert bounds[0] < bounds[1] < bounds[2] < bounds[3], bounds
    assert bounds[3] <= model.exact_log_px(xs).mean().item() + 0.01


@pytest.mark.parametrize("make", [
    lambda: VAE((1, 8, 8), latent_dim=3, hidden_dims=[16]),
    lambda: CVAE((1, 8, 8), num_classes=4, latent_dim=3, hidden_dims=[16]),
    lambda: HVAE((1, 8, 8), latent_dim=4, latent_dim2=3, hidden_dims=[16], hidden_dims2=[8]),
], ids=["vae", "cvae", "hvae"])
def test_iwae_with_k1_is_exactly_the_single_sample_elbo(make):
    model = make()
    x, y = torch.rand(10, 1, 8, 8), torch.randint(0, 4, (10,))
    torch.manual_seed(5)
    iw = IWAE(k=1)(model, x, y)
    torch.manual_seed(5)
    el = ELBO(analytic_kl=False)(model, x, y)
    # the same number, up to float rounding of the sums taken in another order
    assert torch.allclose(iw["loss"], el["loss"], rtol=1e-6, atol=0)
    assert torch.allclose(iw["iwae"], el["elbo"], rtol=1e-6, atol=0)
    # ... and the analytic-KL ELBO is the same bound in expectation
    torch.manual_seed(6)
    analytic = torch.stack([ELBO()(model, x, y)["elbo"] for _ in range(300)]).mean()
    mc = torch.stack([IWAE(k=1)(model, x, y)["iwae"] for _ in range(300)]).mean()
    assert abs(analytic - mc) < 0.05 * abs(analytic)


def test_iwae_bound_function():
    log_w = torch.tensor([[0.0, -1.0], [math.log(3.0), -1.0]])
    assert torch.allclose(iwae_bound(log_w), torch.tensor([math.log(2.0), -1.0]))


def test_free_bits_floor_each_dimension():
    model = VAE((1, 8, 8), latent_dim=4, hidden_dims=[16])
    x = torch.rand(32, 1, 8, 8)
    torch.manual_seed(0)
    terms = ELBO(free_bits=0.0)(model, x)
    torch.manual_seed(0)
    recon, kl, kl_dims = ELBO().kl_terms(model, x, None)
    for fb in (0.01, 5.0):
        torch.manual_seed(0)
        floored = ELBO(free_bits=fb)(model, x)
        expected = recon.mean() + kl_dims.mean(0).clamp_min(fb).sum()
        assert torch.allclose(floored["loss"], expected)
    assert torch.allclose(floored["loss"], recon.mean() + 4 * 5.0)      # all four below 5 nats
    assert torch.allclose(floored["kl"], terms["kl"])                   # kl reported unfloored
    # below the floor the KL gives the encoder no gradient
    model.zero_grad()
    torch.manual_seed(0)
    ELBO(free_bits=50.0)(model, x)["loss"].backward()
    g_floor = model.encoder[-1].weight.grad.clone()
    model.zero_grad()
    torch.manual_seed(0)
    (-model.infer(x)["log_px"][0].mean()).backward()
    assert torch.allclose(g_floor, model.encoder[-1].weight.grad, atol=1e-6)


def test_warmup_and_capacity_schedules_are_functions_of_the_step():
    beta = BetaVAE(capacity=True, gamma=100.0, C_max=20.0, C_stop_steps=1000, warmup_steps=10)
    assert beta.beta == 4.0 and BetaVAE().capacity is False
    assert [beta.C(s) for s in (0, 250, 1000, 5000)] == [0.0, 5.0, 20.0, 20.0]
    assert beta.C(None) == 20.0 and beta.warmup(5) == 0.5 and beta.warmup(None) == 1.0
    model = VAE((1, 8, 8), latent_dim=3, hidden_dims=[16])
    x = torch.rand(16, 1, 8, 8)
    torch.manual_seed(0)
    t = beta(model, x, step=250)
    assert t["C"] == 5.0 and t["gamma"] == 100.0 and t["warmup"] == 1.0
    assert torch.allclose(t["loss"], t["recon"] + 100.0 * (t["kl"] - 5.0).abs())
    # evaluation: the capacity target of the current step, warm-up at its full value
    torch.manual_seed(0)
    ev = beta(model, x, step=5, train=False)
    assert ev["C"] == 0.1 and ev["warmup"] == 1.0 and ev["kl_weight"] == 100.0
    warm = ELBO(beta=2.0, warmup_steps=100)
    assert warm.kl_weight(10) == 0.2 and warm.kl_weight(10, train=False) == 2.0
    torch.manual_seed(0)
    plain = BetaVAE()(model, x, step=3)
    assert torch.allclose(plain["loss"], plain["recon"] + 4.0 * plain["kl"])
    assert plain["beta"] == 4.0 and plain["kl_weight"] == 4.0


def test_hvae_uses_both_layers():
    torch.manual_seed(0)
    model = HVAE((1, 8, 8), latent_dim=5, latent_dim2=3, hidden_dims=[16], hidden_dims2=[8])
    x = torch.rand(7, 1, 8, 8)
    out = model.infer(x, k=4)
    assert out["log_px"].shape == out["log_pz"].shape == out["log_qz"].shape == (4, 7)
    assert out["kl_dims"].shape == (4, 7, 8)
    assert model.code_dim == 3 and model.code_kl_slice == slice(5, 8)
    # the analytic top-layer KL is an unbiased estimate of the Monte Carlo one
    torch.manual_seed(1)
    a = model.infer(x.repeat(400, 1, 1, 1), analytic_kl=True)["kl_dims"][0].sum(-1).mean()
    torch.manual_seed(1)
    m = model.infer(x.repeat(400, 1, 1, 1), analytic_kl=False)["kl_dims"][0].sum(-1).mean()
    assert abs(a - m) < 0.05 * abs(m) + 0.05
    assert [t.shape for t in model.latent_means(x)] == [(7, 5), (7, 3)]
    assert model.sample(6, generator=torch.Generator().manual_seed(0)).shape == (6, 1, 8, 8)
    assert model.decode_code(model.code(x)).shape == x.shape


def test_capacity_and_free_bits_together_are_refused():
    from vae_train.errors import UserError

    with pytest.raises(UserError, match="free_bits does not combine"):
        BetaVAE(capacity=True, free_bits=0.5)


def test_active_units_count_dimensions_the_encoder_uses(linear_gaussian):
    """A latent dimension whose decoder column is zero has a posterior mean that never moves:
    Cov_x(E_q[z_d]) = 0, so it is inactive; the other one is active."""
    from vae_train.evaluate import evaluate

    model, x = linear_gaussian
    model.W = model.W.clone()
    model.W[:, 1] = 0.0
    model.post_cov = torch.linalg.inv(torch.eye(2) + model.W.T @ model.W / model.s ** 2)
    res = evaluate(model, [(x[:150], None), (x[150:], None)], k=20, max_batch=10 ** 5,
                   threshold=0.01, progress=False)
    assert res["active_units"] == 1 and res["active_units_per_layer"] == [1]
    assert res["kl_per_dim"][1] < 0.05 < res["kl_per_dim"][0]
    assert res["n"] == 300 and res["nll"] < -res["elbo"]
    exact = -model.exact_log_px(x).mean().item()
    assert abs(res["nll"] - exact) < 0.2


def test_hvae_log_densities_by_hand():
    torch.manual_seed(0)
    model = HVAE((1, 4, 4), latent_dim=3, latent_dim2=2, hidden_dims=[8], hidden_dims2=[5])
    x = torch.rand(5, 1, 4, 4).round()
    torch.manual_seed(7)
    out = model.infer(x, k=2, analytic_kl=False)
    torch.manual_seed(7)
    q1 = model.encode(x)
    z1 = q1.mu + torch.randn(2, 5, 3) * q1.std
    q2 = model.q2(z1)
    z2 = q2.mu + torch.randn(2, 5, 2) * q2.std
    p1 = model.p1(z2)
    normal = torch.distributions.Normal
    log_q = normal(q1.mu, q1.std).log_prob(z1).sum(-1) + normal(q2.mu, q2.std).log_prob(z2).sum(-1)
    log_p = normal(p1.mu, p1.std).log_prob(z1).sum(-1) + normal(0.0, 1.0).log_prob(z2).sum(-1)
    logits = model.decoder(z1)
    log_px = torch.distributions.Bernoulli(logits=logits).log_prob(x.flatten(1)).sum(-1)
    assert torch.allclose(out["log_qz"], log_q, atol=1e-5)
    assert torch.allclose(out["log_pz"], log_p, atol=1e-5)
    assert torch.allclose(out["log_px"], log_px, atol=1e-4)
    assert torch.allclose(out["kl_dims"].sum(-1), log_q - log_p, atol=1e-5)


# -- the fast evaluation path: the same numbers as the plain one ------------------------------
@pytest.mark.parametrize("shape", [(3, 5, 1, 28, 28), (2, 4, 1, 64, 64), (7, 2, 3, 5, 5),
                                   (4, 1, 1, 1)])
def test_bernoulli_without_gradient_is_the_same_log_likelihood(shape):
    """The no-grad path (one log per group of pixels) against the per-pixel formula in
    float64, for logits up to +-60 (exp(-|o|) underflows) and grey levels; ``out`` is left
    as it was; with a gradient the autograd path is used and gives the same values."""
    from vae_train.distributions import BernoulliLikelihood, bernoulli_nll

    g = torch.Generator().manual_seed(0)
    out = torch.randn(shape, generator=g) * torch.tensor([0.1, 3.0, 20.0, 60.0])[
        torch.randint(0, 4, shape, generator=g)]
    x = torch.rand(shape[1:], generator=g)
    x[..., 0] = (x[..., 0] > 0.5).float()                    # some exact 0s and 1s
    ref = -bernoulli_nll(out.double(), x.double()).flatten(-3).sum(-1)
    kept = out.clone()
    with torch.no_grad():
        fast = BernoulliLikelihood().log_prob(out, x)
    assert fast.shape == shape[:-3] and fast.dtype == torch.float32
    assert torch.equal(out, kept)
    assert torch.allclose(fast.double(), ref, rtol=2e-6, atol=1e-4)
    slow = BernoulliLikelihood().log_prob(out.requires_grad_(), x)
    assert slow.requires_grad and torch.allclose(slow.detach().double(), ref, rtol=2e-6,
                                                 atol=1e-4)


def test_sample_chunks_are_balanced_and_bounded():
    from vae_train.api import sample_chunks

    for k, chunk in ((5000, 2048), (5000, 163), (7, 100), (100, 1), (10, 3)):
        sizes = sample_chunks(k, chunk)
        assert sum(sizes) == k and max(sizes) <= chunk and max(sizes) - min(sizes) <= 1
        assert len(sizes) == math.ceil(k / chunk)
    assert sample_chunks(5000, 2048) == [1667, 1667, 1666]


def test_fast_linears_give_the_same_outputs_and_are_undone():
    from vae_train.patches import fast_linears

    torch.manual_seed(0)
    model = VAE((1, 8, 8), latent_dim=3, hidden_dims=[16])
    x = torch.rand(20, 1, 8, 8)
    with torch.no_grad():
        ref_enc, ref_dec = model.encoder(x.flatten(1)), model.decoder(torch.randn(50, 3))
    torch.manual_seed(1)
    z = torch.randn(50, 3)
    with fast_linears(model) as patched, torch.no_grad():
        assert patched in (0, 4)                  # 0 only where this build has no oneDNN
        enc, dec = model.encoder(x.flatten(1)), model.decoder(z)
        dec3 = model.decoder(z.view(5, 10, 3))    # leading dims kept
        with torch.enable_grad():                 # gradients go through F.linear
            loss = model.encoder(x.flatten(1)).sum()
            loss.backward()
    assert torch.allclose(enc, ref_enc, atol=1e-5)
    assert torch.allclose(dec, model.decoder(z).detach(), atol=1e-5)
    assert torch.allclose(dec3, dec.view(5, 10, -1), atol=1e-5)
    assert model.encoder[0].weight.grad is not None
    assert all("forward" not in vars(m) for m in model.modules())   # restored
    assert ref_dec.shape == (50, 64)


def test_evaluate_one_example_at_a_time_matches_the_exact_likelihood(linear_gaussian):
    """max_batch < k: each call has one example and a chunk of its samples; the NLL is still
    the k-sample estimate (close to the exact value) and every example is counted once."""
    from vae_train.evaluate import evaluate

    model, x = linear_gaussian
    torch.manual_seed(0)
    exact = -model.exact_log_px(x).mean().item()
    res = evaluate(model, [(x[:100], None), (x[100:], None)], k=3000, max_batch=1000,
                   threshold=0.01, total=len(x), progress=False)
    assert res["n"] == 300 and abs(res["nll"] - exact) < 0.01, (res["nll"], exact)
