"""A model family and a data set of the user's own, in a folder outside vae_train with their
YAML in a config folder of the user's (docs/adding.md is the recipe): they train, refuse a bad
value before any data is read, resume, evaluate, sample and are benchmarked, and nothing
inside vae_train changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

MODEL = '''
"""A VAE of my own: one hidden layer each way, its width an option."""
import math

from torch import nn

from vae_train.checks import integer
from vae_train.models.gaussian import GaussianVAE


class TinyVAE(GaussianVAE):
    checks = {"width": integer(1)}

    def __init__(self, input_shape, latent_dim=4, width=32, num_classes=0, likelihood=None):
        super().__init__(input_shape, latent_dim, num_classes, likelihood)
        d = math.prod(self.input_shape)
        self.encoder = nn.Sequential(nn.Linear(d, width), nn.ReLU(),
                                     nn.Linear(width, 2 * self.latent_dim))
        self.decoder = nn.Sequential(nn.Linear(self.latent_dim, width), nn.ReLU(),
                                     nn.Linear(width, d))

    def encoder_forward(self, x, y):
        return self.encoder(x.flatten(1))

    def decoder_forward(self, z, y):
        return self.decoder(z)
'''

DATA = '''
"""A data set of my own: a bright bar, across (class 0) or down (class 1), anywhere."""
import torch

from vae_train.checks import integer
from vae_train.data import DataSet, ImageData


def bars(n, side, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    at = torch.randint(0, side - 2, (n,), generator=g)
    x = torch.zeros(n, 1, side, side, dtype=torch.uint8)
    for i in range(n):
        if y[i] == 0:
            x[i, 0, at[i]:at[i] + 2, :] = 255
        else:
            x[i, 0, :, at[i]:at[i] + 2] = 255
    return x, y


class Bars(DataSet):
    checks = {"num_train": integer(2), "num_test": integer(1), "side": integer(4)}

    def __init__(self, num_train=600, num_test=100, side=12, **common):
        super().__init__(**common)
        self.num_train, self.num_test, self.side = num_train, num_test, side

    def read(self):
        tx, ty = bars(self.num_train, self.side, 0)
        ex, ey = bars(self.num_test, self.side, 1)
        return ImageData(self.name, tx, ty, ex, ey, classes=["across", "down"])
'''


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """The user's folder: two modules and their config folder; nothing under vae_train."""
    home = tmp_path_factory.mktemp("user")
    (home / "my_vaes.py").write_text(textwrap.dedent(MODEL))
    (home / "my_data.py").write_text(textwrap.dedent(DATA))
    (home / "conf" / "model").mkdir(parents=True)
    (home / "conf" / "dataset").mkdir()
    (home / "conf" / "model" / "tiny.yaml").write_text(
        "_target_: my_vaes.TinyVAE\nlatent_dim: 4\nwidth: 32\n")
    (home / "conf" / "dataset" / "bars.yaml").write_text(
        "_target_: my_data.Bars\nname: bars\nnum_train: 600\nnum_test: 100\nside: 12\n")
    return home


def run(module, args, user, check=True, cwd=None):
    """``python -m module args`` with the user's folder on PYTHONPATH (in ``cwd``, or there)."""
    env = {**os.environ, "PYTHONPATH": str(user), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or user, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


COMMON = ["model=tiny", "dataset=bars", "hydra.searchpath=[file://conf]", "device=cpu",
          "optimizer.lr=0.01",
          "trainer.batch_size=50", "trainer.progress=false"]


@pytest.mark.slow
def test_a_users_model_and_data_set_train_resume_evaluate_and_sample(user):
    untrained, trained = user / "untrained", user / "trained"
    run("vae_train", [*COMMON, "trainer.epochs=0", f"hydra.run.dir={untrained}"], user)
    proc = run("vae_train", [*COMMON, "trainer.epochs=2", f"hydra.run.dir={trained}"], user)
    assert "TinyVAE on bars 1x12x12" in proc.stderr
    m0 = json.loads((untrained / "metrics.json").read_text())
    m = json.loads((trained / "metrics.json").read_text())
    assert m["test_loss"] < 0.7 * m0["test_loss"]        # it learns the bars
    assert {p.stem for p in trained.glob("*.png")} == {"reconstructions", "samples"}

    # a bad value of the user's own option: one line, before any data is read
    bad = run("vae_train", [*COMMON, "model.width=0", f"hydra.run.dir={user / 'bad'}"], user,
              check=False)
    assert bad.returncode == 2 and "model.width=0 is invalid: it must be a positive integer" \
        in bad.stderr and "Traceback" not in bad.stderr
    bad = run("vae_train", [*COMMON, "dataset.side=2", f"hydra.run.dir={user / 'bad2'}"], user,
              check=False)
    assert bad.returncode == 2 and "dataset.side=2 is invalid" in bad.stderr
    # the user's folder not on PYTHONPATH: one line that says where to look
    elsewhere = [a if not a.startswith("hydra.searchpath") else
                 f"hydra.searchpath=[file://{user / 'conf'}]" for a in COMMON]
    lost = subprocess.run([sys.executable, "-m", "vae_train", *elsewhere,
                           f"hydra.run.dir={user / 'lost'}"], cwd=user.parent, text=True,
                          capture_output=True, env={**os.environ, "PYTHONPATH": ""})
    assert lost.returncode == 2 and "Traceback" not in lost.stderr, lost.stderr
    assert "model._target_=my_vaes.TinyVAE" in lost.stderr and "PYTHONPATH" in lost.stderr

    # an opened run builds a class of the user's only when they say they trust it
    refused = run("vae_train", [f"resume={trained}", "trainer.epochs=3"], user, cwd=user.parent,
                  check=False)
    assert refused.returncode == 2 and "model._target_=my_vaes.TinyVAE" in refused.stderr
    assert "trust_run_code=true" in refused.stderr and "Traceback" not in refused.stderr
    # resume from another folder: the user's config folder is found again
    proc = run("vae_train", [f"resume={trained}", "trainer.epochs=3", "trust_run_code=true"],
               user, cwd=user.parent)
    assert "resumed from" in proc.stderr and "epoch 3/3" in proc.stderr
    assert json.loads((trained / "metrics.json").read_text())["epoch"] == 3

    run("vae_train.evaluate", [f"run={trained}", "k=10", "progress=false",
                               "trust_run_code=true"], user, cwd=user.parent)
    result = json.loads((trained / "eval.json").read_text())
    assert 0 < result["nll"] < -result["elbo"] and result["latent_dims_per_layer"] == [4]
    out = user / "pictures"
    run("vae_train.sample", [f"run={trained}", "n=16", "dims=2", f"out={out}",
                             "trust_run_code=true"], user, cwd=user.parent)
    assert {p.stem for p in out.glob("*.png")} == {"samples", "reconstructions", "traversals",
                                                   "interpolations"}


@pytest.mark.slow
def test_a_users_model_is_benchmarked_on_a_users_data_set(user, tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(user)}
    proc = subprocess.run(
        [sys.executable, str(script), "--models", "tiny", "--dataset", "bars", "--epochs", "1",
         "--peak-size", "64", "--threads", "1", "--out", str(out),
         "--override", f"hydra.searchpath=[file://{user / 'conf'}]"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert report["dataset"] == "bars" and "classic" not in report
    assert row["model"] == "tiny" and "errors" not in row, row.get("errors")
    assert row["vae_train"]["images_per_sec"] > 0 and row["bare"]["images_per_sec"] > 0
    assert row["bare"]["train_images"] == 540                  # 600 bars, a tenth validates
    # on the bars' 144 pixels: 144-32-(4+4) / 4-32-144, forward and backward (no input
    # gradient for the first layer)
    fwd = 2 * (144 * 32 + 32 * 8 + 4 * 32 + 32 * 144)
    assert row["train_flops_per_image"] == 3 * fwd - 2 * 144 * 32
