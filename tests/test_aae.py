"""The adversarial autoencoder and the trainer's several optimizers (named parameter groups)."""

import json
import math

import pytest
import torch
from PIL import Image

from conftest import TINY, compose_cfg, make_trainer, run_cli
from vae_train.errors import UserError
from vae_train.logging import TBLogger
from vae_train.models.aae import MixturePrior
from vae_train.build import build
from vae_train.training.trainer import Trainer

SMALL = ["dataset=synthetic", "dataset.num_train=200", "dataset.num_test=50", "model=aae"]


def _trainer(tmp_path, overrides=()):
    return make_trainer([*SMALL, *overrides], tmp_path)


def test_mixture_prior_puts_ten_components_on_a_circle():
    prior = MixturePrior()
    g = torch.Generator().manual_seed(0)
    for c in (0, 3, 7):
        z = prior.sample(4000, 3, g, component=torch.full((4000,), c))
        angle = 2 * math.pi * c / 10
        mean = torch.tensor([3 * math.cos(angle), 3 * math.sin(angle), 0.0])
        assert torch.allclose(z.mean(0), mean, atol=0.05)
        radial = z[:, :2] @ torch.tensor([math.cos(angle), math.sin(angle)])
        assert radial.std().item() == pytest.approx(0.5, rel=0.1)   # stretched along the radius
        assert z[:, 2].std().item() == pytest.approx(1.0, rel=0.1)  # further dims: N(0, 1)


def test_each_phase_moves_only_its_group(tmp_path):
    tr = _trainer(tmp_path)
    model, objective = tr.model, tr.objective
    assert tr.phases == ("autoencoder", "discriminator", "generator")
    assert set(tr.optim.optimizers) == {"autoencoder", "discriminator", "generator"}
    x, y = tr.data.train_batch(torch.arange(32))
    expect = {"autoencoder": {"encoder", "decoder"}, "discriminator": {"discriminator"},
              "generator": {"encoder", "discriminator"}}   # the generator's loss passes D
    for phase, nets in expect.items():
        model.zero_grad(set_to_none=True)
        terms = objective(model, x, y, step=0, phase=phase)
        terms["loss"].backward()
        got = {name for name in ("encoder", "decoder", "discriminator")
               if any(p.grad is not None and p.grad.abs().sum() > 0
                      for p in getattr(model, name).parameters())}
        assert got == nets, phase
    # ...but the generator's optimizer holds only the encoder: D is not updated by that step
    gen_params = {id(p) for g in tr.optim.optimizers["generator"].param_groups for p in g["params"]}
    assert gen_params == {id(p) for p in model.encoder.parameters()}


def test_discriminator_learns_to_tell_codes_from_the_prior(tmp_path):
    """With the encoder frozen far from the prior, D's accuracy must rise well above chance."""
    tr = _trainer(tmp_path, ["model.latent_dim=2"])
    model = tr.model
    x, y = tr.data.train_batch(torch.arange(64))
    opt = tr.optim.optimizers["discriminator"]
    with torch.no_grad():
        z = model.encode(x) + 4.0             # codes well off the prior
    for _ in range(150):
        opt.zero_grad()
        terms = model._disc_terms(z)
        terms["disc_loss"].backward()
        opt.step()
    assert model._disc_terms(z)["disc_acc"].item() > 0.9


def test_unknown_parameter_group_is_named(tmp_path):
    with pytest.raises(UserError, match="optimizer.groups.critic: .* its groups are "
                                        "autoencoder, discriminator, generator"):
        _trainer(tmp_path, ["+optimizer.groups.critic.lr=1e-4"])
    with pytest.raises(UserError, match="its groups are main"):
        cfg = compose_cfg(["dataset=synthetic", "dataset.num_train=100",
                           "+optimizer.groups.discriminator.lr=1e-4"])
        dm, objective, model = build(cfg, torch.device("cpu"))
        Trainer(cfg, model, objective, dm, torch.device("cpu"), None, tmp_path,
                TBLogger(tmp_path, enabled=False))


def test_aae_with_its_own_loss_refuses_another(tmp_path):
    with pytest.raises(UserError, match="trains its own objective"):
        build(compose_cfg([*SMALL, "loss=iwae"]), torch.device("cpu"))


@pytest.mark.slow
def test_aae_trains_evaluates_samples_and_resumes(tmp_path, call):
    run = tmp_path / "aae"
    run_cli([*TINY, "model=aae", "model.latent_dim=2", "model.prior=mixture", "trainer.epochs=2",
             "+optimizer.groups.discriminator.lr=2e-4", f"hydra.run.dir={run}"], tmp_path)
    m = json.loads((run / "metrics.json").read_text())
    for key in ("test_recon", "test_disc_acc", "test_disc_loss", "test_gen_loss"):
        assert math.isfinite(m[key]), key
    assert m["test_loss"] == m["test_recon"] and 0 <= m["test_disc_acc"] <= 1
    h = m["history"]
    assert h[1]["train_recon"] < h[0]["train_recon"]
    assert "train_disc_acc" in h[0] and "train_gen_loss" in h[0]
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert set(state["optimizers"]) == {"autoencoder", "discriminator", "generator"}
    assert state["optimizers"]["discriminator"]["param_groups"][0]["lr"] == 2e-4
    assert state["optimizers"]["autoencoder"]["param_groups"][0]["lr"] == 1e-3
    for png in ("reconstructions", "samples", "manifold", "latent_scatter"):
        with Image.open(run / f"{png}.png") as im:
            assert im.size[0] > 64
    call("vae_train.evaluate", [f"run={run}", "n=100", "progress=false"])
    ev = json.loads((run / "eval.json").read_text())
    assert ev["n"] == 100 and 0 <= ev["disc_acc"] <= 1 and ev["recon"] > 0
    assert "nll" not in ev                     # no likelihood bound for an AAE
    out = tmp_path / "pics"
    call("vae_train.sample", [f"run={run}", "n=16", "dims=2", "pairs=2", f"out={out}"])
    assert {p.stem for p in out.glob("*.png")} == {
        "samples", "reconstructions", "traversals", "interpolations", "latent_scatter",
        "manifold"}
    proc = run_cli([f"resume={run}", "trainer.epochs=3"], tmp_path)
    assert "resumed from" in proc.stderr and "epoch 3/3" in proc.stderr
    m = json.loads((run / "metrics.json").read_text())
    assert m["epoch"] == 3 and len(m["history"]) == 3
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["optimizers"]["discriminator"]["param_groups"][0]["lr"] == 2e-4


def test_three_optimizers_resume_to_the_same_weights(tmp_path):
    """Stopped after epoch 1 and resumed, the AAE ends with exactly the weights (and the three
    optimizers' states) of an uninterrupted 2-epoch run."""
    def fit(folder, epochs, resume=None):
        tr = _trainer(folder, [f"trainer.epochs={epochs}", "trainer.progress=false",
                               "trainer.image_every_epochs=0"])
        if resume:
            tr.restore(resume)
        tr.fit()
        return tr

    a = fit(tmp_path / "a", 2)
    fit(tmp_path / "b", 1)
    b = fit(tmp_path / "b", 2, resume=tmp_path / "b" / "checkpoints" / "last.pt")
    assert a.step == b.step
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    for name in a.optim.optimizers:
        sa = a.optim.optimizers[name].state_dict()["state"]
        sb = b.optim.optimizers[name].state_dict()["state"]
        assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa), name
