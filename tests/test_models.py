"""Each model learns real structure: a short epoch on the generated shapes lowers its loss."""

import pytest
import torch

from conftest import compose_cfg
from vae_train.logging import TBLogger
from vae_train.pictures import training_figures as figures
from vae_train.build import build
from vae_train.training.trainer import Trainer

DATA = ["dataset=synthetic", "dataset.num_train=2400", "dataset.num_test=200",
        "trainer.batch_size=64", "trainer.progress=false", "trainer.epochs=1"]


def make_trainer(overrides, tmp_path, amp_dtype=None):
    cfg = compose_cfg([*DATA, *overrides])
    torch.manual_seed(0)
    dm, objective, model = build(cfg, torch.device("cpu"))
    return Trainer(cfg, model, objective, dm, torch.device("cpu"), amp_dtype, tmp_path,
                   TBLogger(tmp_path, enabled=False))


@pytest.mark.parametrize("model,loss", [
    ("vae", "elbo"), ("conv_vae", "elbo"), ("cvae", "elbo"), ("hvae", "elbo"),
    ("vae", "beta_vae"), ("vae", "iwae"), ("cvae", "iwae"), ("hvae", "iwae"),
    ("conv_vae", "iwae"), ("conv_vae", "beta_vae"),
])
def test_one_epoch_lowers_the_loss(model, loss, tmp_path):
    trainer = make_trainer([f"model={model}", f"loss={loss}"], tmp_path)
    before = trainer.evaluate(trainer.data.val)
    trainer.fit()
    after = trainer.evaluate(trainer.data.val)
    # An untrained decoder outputs ~0.5 everywhere: about 784 * log 2 = 543 nats.
    assert before["loss"] > 450
    assert after["loss"] < 0.6 * before["loss"], (before, after)
    if model != "cvae" and loss != "beta_vae":  # (a CVAE may lean on the label alone)
        assert after["kl"] > 0.5                   # the latent is in use
    if loss == "iwae":
        assert after["iwae"] >= after["elbo"]      # the k-sample bound is the tighter one
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    assert (tmp_path / "checkpoints" / "best.pt").is_file()


@pytest.mark.parametrize("precision", [torch.bfloat16, torch.float16])
def test_autocast_paths_train(precision, tmp_path):
    trainer = make_trainer(["model=vae", "dataset.num_train=600"], tmp_path, amp_dtype=precision)
    assert trainer.scaler.is_enabled() == (precision == torch.float16)
    before = trainer.evaluate(trainer.data.val)["loss"]
    trainer.fit()
    after = trainer.evaluate(trainer.data.val)["loss"]
    assert after < before


def test_cvae_uses_the_label(tmp_path):
    """Decoding one z with each label gives different images (the label is used)."""
    trainer = make_trainer(["model=cvae", "trainer.epochs=2"], tmp_path)
    trainer.fit()
    model = trainer.model.eval()
    z = torch.zeros(10, model.latent_dim)
    imgs = model.likelihood.mean(model.decode(z, torch.arange(10)))
    spread = (imgs - imgs.mean(0, keepdim=True)).abs().mean()
    assert spread > 0.02
    with pytest.raises(ValueError, match="needs class labels"):
        model.decode(z, None)


@pytest.mark.parametrize("overrides,expected", [
    (["model=vae"], {"reconstructions", "samples"}),
    (["model=vae", "model.latent_dim=2"], {"reconstructions", "samples", "manifold"}),
    (["model=cvae"], {"reconstructions", "samples", "class_samples"}),
    (["model=cvae", "model.latent_dim=2"], {"reconstructions", "samples", "class_samples",
                                            "manifold"}),
    (["model=hvae", "model.latent_dim2=2"], {"reconstructions", "samples", "manifold"}),
])
def test_figures_for_each_model(overrides, expected, tmp_path):
    trainer = make_trainer(overrides, tmp_path)
    rng_before = torch.get_rng_state()
    figs = figures(trainer.model, trainer.report.fig_x, trainer.report.fig_y, 16)
    assert torch.equal(rng_before, torch.get_rng_state())   # pictures never move the RNG
    assert set(figs) == expected
    for img in figs.values():
        assert img.dim() == 3 and img.shape[0] == 3 and 0 <= img.min() and img.max() <= 1


def test_capacity_and_warmup_continue_exactly_on_resume(tmp_path):
    """Stopped after epoch 1 and resumed, a run with a capacity schedule and KL warm-up sees the
    same C and warm-up values at every step, and ends with the same weights."""
    sched = ["loss=beta_vae", "loss.capacity=true", "loss.gamma=10", "loss.C_max=8",
             "loss.C_stop_steps=50", "loss.warmup_steps=20", "dataset.num_train=1200",
             "trainer.log_every_steps=1"]
    full = make_trainer([*sched, "trainer.epochs=2"], tmp_path / "full")
    full.fit()
    part = make_trainer([*sched, "trainer.epochs=1"], tmp_path / "part")
    part.fit()
    resumed = make_trainer([*sched, "trainer.epochs=2"], tmp_path / "resumed")
    resumed.restore(tmp_path / "part" / "checkpoints" / "last.pt")
    assert resumed.step == part.step == full.steps_per_epoch
    resumed.fit()
    for key in ("train_C", "train_warmup", "train_loss", "val_loss"):
        assert [h[key] for h in resumed.history] == [h[key] for h in full.history], key
    assert 0 < full.history[0]["train_C"] < full.history[1]["train_C"] <= 8
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_traversals_and_interpolations_show_what_they_promise(tmp_path):
    from torchvision.utils import make_grid

    from vae_train.pictures.grids import interpolations, traversals

    trainer = make_trainer(["model=vae", "model.latent_dim=4"], tmp_path)
    model = trainer.model.eval()
    x, y = trainer.report.fig_x[:4], trainer.report.fig_y[:4]
    grid = traversals(model, x[:1], y[:1], dims=[2, 0], steps=5, span=3.0)
    c = model.code(x[:1])
    rows = []
    for d in (2, 0):                     # rows in the order given; only dimension d moves
        codes = c.repeat(5, 1)
        codes[:, d] = c[0, d] + torch.linspace(-3, 3, 5)
        rows.append(torch.cat([x[:1], model.decode_code(codes)]))   # the image at the left
    assert torch.allclose(grid, make_grid(torch.cat(rows), nrow=6, pad_value=0.5), atol=1e-6)

    grid = interpolations(model, x, y, pairs=2, steps=4)
    rows = []
    for a, b in ((x[0:1], x[1:2]), (x[2:3], x[3:4])):
        ca, cb = model.code(a), model.code(b)
        line = torch.stack([ca[0] + t * (cb[0] - ca[0]) for t in torch.linspace(0, 1, 4)])
        rows.append(torch.cat([a, model.decode_code(line), b]))
    assert torch.allclose(grid, make_grid(torch.cat(rows), nrow=6, pad_value=0.5), atol=1e-5)


def test_conditional_and_plain_models_on_sequences_get_line_plots_with_their_labels():
    """Any model with a continuous code on sequence data (1 x T x 1) is drawn as line plots;
    a conditional one gets its labels there too (it cannot encode or decode without them)."""
    from vae_train.distributions import GaussianLikelihood
    from vae_train.models.cvae import CVAE
    from vae_train.pictures import SampleOptions, sample_figures

    torch.manual_seed(0)
    model = CVAE((1, 32, 1), num_classes=3, latent_dim=2, hidden_dims=[8],
                 likelihood=GaussianLikelihood()).eval()
    x, y = torch.rand(12, 1, 32, 1), torch.arange(12) % 3
    figs = figures(model, x, y, 9)
    assert set(figs) == {"reconstructions", "samples"}
    assert all(img.shape[1] > 100 and img.shape[2] > 100 for img in figs.values())  # plots
    figs, notes = sample_figures(model, x, y, SampleOptions(n=6, dims=2, steps=3, pairs=2,
                                                            interp_steps=3))
    assert set(figs) == {"samples", "reconstructions", "traversals", "interpolations"}
    assert "traversed code dimensions" in notes[0]


def test_a_model_with_only_the_base_capabilities_gets_reconstructions_and_samples():
    """A model of someone's own that classifies but has no code (no HasCode): the pictures
    every model can give, nothing that would need a code."""
    from vae_train.models.base import Classifier, Model, OwnsObjective
    from vae_train.pictures import SampleOptions, sample_figures

    class Plain(Model, OwnsObjective, Classifier):
        def __init__(self):
            super().__init__((1, 8, 8), 2)
            self.net = torch.nn.Linear(64, 64)

        def loss_terms(self, x, y=None, step=None, train=True, phase=None):
            return {"loss": self.net(x.flatten(1)).pow(2).mean()}

        def predict(self, x):
            return torch.zeros(len(x), dtype=torch.long)

        def reconstruct(self, x, y=None):
            return torch.sigmoid(self.net(x.flatten(1))).view_as(x)

        def sample(self, n, y=None, generator=None):
            return torch.rand(n, 1, 8, 8, generator=generator)

    x, y = torch.rand(6, 1, 8, 8), torch.zeros(6, dtype=torch.long)
    assert set(figures(Plain(), x, y, 4)) == {"reconstructions", "samples"}
    figs, _ = sample_figures(Plain(), x, y, SampleOptions(n=4))
    assert set(figs) == {"reconstructions", "samples"}
