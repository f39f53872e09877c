"""A run directory written by vae-train 0.1 (tests/fixtures/run_v0_1: a VAE on 8x8 synthetic
images, 3 epochs, with the eval.json that version wrote) still evaluates, samples and resumes
with this version, to the same numbers."""

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli

FIXTURE = Path(__file__).parent / "fixtures" / "run_v0_1"


@pytest.fixture
def old_run(tmp_path):
    run = tmp_path / "run_v0_1"
    shutil.copytree(FIXTURE, run)
    return run


def test_the_fixture_is_what_0_1_wrote():
    config = (FIXTURE / ".hydra" / "config.yaml").read_text()
    assert "_target_: vae_train.models.vae.VAE" in config
    assert "name: synthetic" in config and "_target_: vae_train.data" not in config


def test_an_old_run_evaluates_to_the_numbers_0_1_reported(old_run, call):
    before = json.loads((FIXTURE / "eval.json").read_text())
    call("vae_train.evaluate", [f"run={old_run}", "k=20", "progress=false"])
    after = json.loads((old_run / "eval.json").read_text())
    assert after["n"] == before["n"] == 100 and after["epoch"] == before["epoch"] == 3
    for key in ("nll", "elbo", "recon", "kl"):
        assert after[key] == pytest.approx(before[key], rel=1e-5, abs=1e-4), key
    assert after["active_units"] == before["active_units"]
    assert after["kl_per_dim"] == pytest.approx(before["kl_per_dim"], abs=1e-4)


def test_an_old_run_samples(old_run, call, tmp_path):
    out = tmp_path / "pictures"
    call("vae_train.sample", [f"run={old_run}", "n=16", "dims=2", "pairs=2", f"out={out}"])
    assert {p.stem for p in out.glob("*.png")} == {"samples", "reconstructions", "traversals",
                                                   "interpolations", "manifold"}


@pytest.mark.slow
def test_an_old_run_resumes_to_the_same_test_loss_and_trains_on(old_run, tmp_path):
    before = json.loads((FIXTURE / "metrics.json").read_text())
    # at its own epochs: nothing to train; the best weights, tested again
    proc = run_cli([f"resume={old_run}"], tmp_path)
    assert "already trained for 3 epochs" in proc.stderr
    again = json.loads((old_run / "metrics.json").read_text())
    for key in ("test_loss", "test_recon", "test_kl", "best_val_loss"):
        assert again[key] == before[key], key
    assert again["history"] == before["history"]
    # and further, in its own run directory, the saved config brought up to date
    run_cli([f"resume={old_run}", "trainer.epochs=4"], tmp_path)
    m = json.loads((old_run / "metrics.json").read_text())
    assert m["epoch"] == 4 and m["history"][:3] == before["history"]
    assert "_target_: vae_train.data.synthetic.Synthetic" in \
        (old_run / ".hydra" / "config.yaml").read_text()


def test_model_overrides_rebuild_the_saved_node():
    from vae_train.compat import model_overrides

    node = {"_target_": "vae_train.models.conv_vae.ConvVAE", "latent_dim": 32,
            "channels": [32, 64], "hidden_dim": 256, "activation": "relu"}
    assert model_overrides({"model": node}) == [
        "++model.latent_dim=32", "++model.channels=[32,64]", "++model.hidden_dim=256",
        "++model.activation='relu'", "++model.body=plain"]
    assert "++model.body=plain" not in model_overrides({"model": {**node, "body": "resnet"}})
    assert model_overrides({}) == [] and model_overrides(None) == []


@pytest.mark.slow
def test_a_conv_vae_run_of_the_strided_body_resumes_after_the_default_changed(tmp_path):
    """A conv_vae trained before the residual body became the default: its checkpoint's
    config has no ``body`` key and its overrides do not name the body. Resume rebuilds the
    model as it was saved (plain body, relu, 32 latents), not from today's YAML."""
    import torch

    run = tmp_path / "run"
    run_cli(["model=conv_vae", "model.body=plain", "model.activation=relu",
             "model.latent_dim=32", "dataset=synthetic", "dataset.num_train=300",
             "dataset.num_test=60", "trainer.epochs=1", "trainer.batch_size=50",
             "trainer.progress=false", "device=cpu", f"hydra.run.dir={run}"], tmp_path)
    for name in ("last.pt", "best.pt"):       # as an older version wrote it
        path = run / "checkpoints" / name
        state = torch.load(path, weights_only=True)
        del state["config"]["model"]["body"]
        state["overrides"] = [o for o in state["overrides"] if not o.startswith("model.")]
        torch.save(state, path)
    proc = run_cli([f"resume={run}", "trainer.epochs=2"], tmp_path)
    assert "resumed from" in proc.stderr and "epoch 2/2" in proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epoch"] == 2
