"""Each model learns real structure: a short epoch on the generated shapes lowers its loss."""

import pytest
import torch

from conftest import compose_cfg
from vae_train.logging import TBLogger
from vae_train.pictures import figures
from vae_train.train import build
from vae_train.trainer import Trainer

DATA = ["dataset=synthetic", "dataset.num_train=2400", "dataset.num_test=200",
        "trainer.batch_size=64", "trainer.progress=false", "trainer.epochs=1"]


def make_trainer(overrides, tmp_path, amp_dtype=None):
    cfg = compose_cfg([*DATA, *overrides])
    torch.manual_seed(0)
    dm, objective, model = build(cfg, torch.device("cpu"))
    return Trainer(cfg, model, objective, dm, torch.device("cpu"), amp_dtype, tmp_path,
                   TBLogger(tmp_path, enabled=False))


@pytest.mark.parametrize("model", ["vae", "conv_vae", "cvae"])
def test_one_epoch_lowers_the_loss(model, tmp_path):
    trainer = make_trainer([f"model={model}"], tmp_path)
    before = trainer.evaluate(trainer.data.val)
    trainer.fit()
    after = trainer.evaluate(trainer.data.val)
    # An untrained decoder outputs ~0.5 everywhere: about 784 * log 2 = 543 nats.
    assert before["loss"] > 450
    assert after["loss"] < 0.6 * before["loss"], (before, after)
    if model != "cvae":  # (a CVAE may lean on the label alone this early)
        assert after["kl"] > 0.5                   # the latent is in use
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
])
def test_figures_for_each_model(overrides, expected, tmp_path):
    trainer = make_trainer(overrides, tmp_path)
    rng_before = torch.get_rng_state()
    figs = figures(trainer.model, trainer.fig_x, trainer.fig_y, 16)
    assert torch.equal(rng_before, torch.get_rng_state())   # pictures never move the RNG
    assert set(figs) == expected
    for img in figs.values():
        assert img.dim() == 3 and img.shape[0] == 3 and 0 <= img.min() and img.max() <= 1
