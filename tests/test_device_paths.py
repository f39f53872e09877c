"""The paths a GPU takes, exercised on the CPU: autocast loss curves against fp32,
``device.compile`` (traced by TorchDynamo; a compiler failure falls back to eager),
``device.channels_last`` and the choice of a rank's GPU."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from conftest import TINY, make_trainer, run_cli
from vae_train import distributed
from vae_train.training import forward as forward_mod
from vae_train.device import wants_channels_last

SMALL = ["dataset=synthetic", "dataset.num_train=1200", "dataset.num_test=200",
         "trainer.batch_size=64", "trainer.epochs=3"]


def curve(tmp_path, amp_dtype=None, extra=()):
    tr = make_trainer([*SMALL, *extra], tmp_path)
    tr.amp_dtype = amp_dtype
    tr.scaler = torch.amp.GradScaler("cpu", enabled=amp_dtype == torch.float16)
    tr.fit()
    return tr, [h["val_loss"] for h in tr.history]


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    return curve(tmp_path_factory.mktemp("fp32"))[1]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.slow
def test_autocast_follows_the_fp32_loss_curve(dtype, fp32, tmp_path):
    tr, amp = curve(tmp_path, dtype)
    assert fp32[-1] < 0.9 * fp32[0]      # (it learns)
    # fp16: the gradient scaler starts at 2^16 and skips the steps that overflow until it has
    # found its scale, so the first epoch lags; after that the curves agree
    assert tr.amp_skipped_steps == 0 if dtype == torch.bfloat16 else 0 < tr.amp_skipped_steps < 20
    assert amp[0] == pytest.approx(fp32[0], rel=0.02 if dtype == torch.bfloat16 else 0.2)
    for a, b in zip(amp[1:], fp32[1:]):
        assert a == pytest.approx(b, rel=0.02), (amp, fp32)


@pytest.mark.slow
def test_compile_traces_the_training_step_and_changes_nothing(fp32, tmp_path, monkeypatch):
    """TorchDynamo traces the step (the eager backend: no C++ compiler needed in the test);
    the run's numbers are those of the eager run."""
    eager = fp32
    traced = []
    real = torch.compile

    def compile_eager(module, **kw):
        traced.append(module)
        return real(module, backend="eager")

    monkeypatch.setattr(torch, "compile", compile_eager)
    tr, compiled = curve(tmp_path / "compiled", extra=["device.compile=true"])
    assert len(traced) == 1 and isinstance(tr.forward, forward_mod.CompiledOrEager)
    assert tr.forward.compiled is not None          # it did not fall back
    assert compiled == pytest.approx(eager, rel=1e-5)


def test_compile_failure_falls_back_to_eager_with_one_warning(fp32, tmp_path, monkeypatch,
                                                             caplog):
    eager = fp32

    def broken(module, **kw):
        def call(*args):
            raise RuntimeError("InductorError: no working C++ compiler found\nmore details")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level(logging.WARNING, logger="vae_train.training.forward"):
        tr, fallback = curve(tmp_path / "fallback", extra=["device.compile=true"])
    warnings = [r.getMessage() for r in caplog.records if "device.compile" in r.getMessage()]
    assert len(warnings) == 1 and "no working C++ compiler found" in warnings[0]
    assert "more details" not in warnings[0]
    assert fallback == eager                        # eager from the first step on


def test_channels_last_choice():
    conv = make_trainer(["model=conv_vae", "dataset=synthetic", "dataset.num_train=100"],
                        "/nonexistent").model
    mlp = make_trainer(["dataset=synthetic", "dataset.num_train=100"], "/nonexistent").model
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert wants_channels_last("auto", conv, cuda) and not wants_channels_last("auto", conv, cpu)
    assert wants_channels_last(True, conv, cpu) and not wants_channels_last(False, conv, cuda)
    assert not wants_channels_last("auto", mlp, cuda) and not wants_channels_last(True, mlp, cpu)


@pytest.mark.slow
def test_channels_last_run_trains_and_saves_that_layout(tmp_path):
    run = tmp_path / "run"
    run_cli([*TINY, "model=conv_vae", "dataset.channels=3", "model.channels=[8,16]",
             "trainer.epochs=2", "device.channels_last=true", f"hydra.run.dir={run}"], tmp_path)
    m = json.loads((run / "metrics.json").read_text())
    assert m["history"][-1]["val_loss"] < m["history"][0]["train_loss"]
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    convs = [v for v in state.values() if v.dim() == 4 and v.shape[1] > 1]
    assert convs and all(v.is_contiguous(memory_format=torch.channels_last) for v in convs)


def test_each_rank_takes_its_own_gpu(monkeypatch):
    """torchrun on a node of 4 GPUs: local rank 2 trains on cuda:2 (checked without a GPU)."""
    chosen = []
    monkeypatch.setattr(distributed, "is_initialized", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "6")
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert distributed.place(torch.device("cuda")) == torch.device("cuda", 2)
    assert chosen == [2]
    assert distributed.place(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(Exception, match="device=mps cannot train data-parallel"):
        distributed.place(torch.device("mps"))
