"""Data-parallel training: ``torchrun --nproc_per_node=2 -m vae_train`` with the gloo backend on
the CPU, against a single process with the doubled batch; one run directory, one writer; a run
stopped by SIGTERM under torchrun resumes bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, run_cli
from vae_train import distributed
from vae_train.errors import UserError

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="this PyTorch has no torch.distributed")

# 5,400 training images: 84 steps of 2 x 32 per epoch
DATA = ["dataset=synthetic", "dataset.num_train=6000", "dataset.num_test=500",
        "trainer.progress=false", "device=cpu", "trainer.epochs=3"]


def torchrun(args, cwd, n=2, wait=True, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={n}", "-m", "vae_train", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """A 3-epoch run of 2 processes x batch 32, started in an empty folder."""
    cwd = tmp_path_factory.mktemp("ddp")
    proc = torchrun([*DATA, "trainer.batch_size=32"], cwd)
    runs = [p.parent for p in (cwd / "outputs").rglob("metrics.json")]
    assert len(runs) == 1, runs
    return cwd, runs[0], proc


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_doubled_batch(two_processes, tmp_path):
    cwd, run, proc = two_processes
    one = tmp_path / "one"
    run_cli([*DATA, "trainer.batch_size=64", f"hydra.run.dir={one}"], tmp_path)
    m2 = json.loads((run / "metrics.json").read_text())
    m1 = json.loads((one / "metrics.json").read_text())
    assert m2["processes"] == 2 and m1["processes"] == 1
    # the same optimizer steps over the same examples; the noise differs, so the losses agree
    # within a tolerance (the two runs here differ by about 0.5%)
    assert m2["steps"] == m1["steps"] == 3 * 85
    assert m2["test_loss"] == pytest.approx(m1["test_loss"], rel=0.03)
    for h2, h1 in zip(m2["history"], m1["history"]):
        assert h2["val_loss"] == pytest.approx(h1["val_loss"], rel=0.05)
    assert m2["test_loss"] < 0.6 * m2["history"][0]["train_loss"]   # it learnt

    # one run directory, written by one process: one event file, one log, one config
    top = sorted(p.relative_to(cwd) for p in cwd.rglob("*") if p.is_file())
    events = [p for p in top if p.name.startswith("events.out.tfevents")]
    assert len(events) == 1, top
    assert sorted(p.name for p in (run / ".hydra").iterdir()) == [
        "config.yaml", "hydra.yaml", "overrides.yaml"]
    assert {p.name for p in run.iterdir()} >= {"train.log", "metrics.json", "checkpoints",
                                               "reconstructions.png", "samples.png"}
    assert not (run / ".lock").exists()
    log = (run / "train.log").read_text()
    assert log.count("epoch 3/3") == 1 and "data-parallel over 2 processes" in log
    assert "[rank 1]" not in proc.stdout + proc.stderr   # rank 1 had nothing to warn about


@pytest.mark.slow
def test_sigterm_under_torchrun_then_resume_is_bit_identical(two_processes, tmp_path):
    _, reference, _ = two_processes
    run = tmp_path / "run"
    proc = torchrun([*DATA, "trainer.batch_size=32", f"hydra.run.dir={run}"], tmp_path,
                    wait=False)
    out = []
    for line in proc.stdout:      # stop it once epoch 1 is done: in epoch 2 (or later)
        out.append(line)
        if "epoch 1/3" in line:
            time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            break
    out.append(proc.communicate(timeout=120)[0])
    text = "".join(out)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    # stopped inside epoch 2, both ranks at the same batch: their sums and random states kept
    assert state["epoch"] < 3 and "partial_epoch" in state, text
    assert "stopped by SIGTERM" in text and text.count("stopped by SIGTERM") == 1, text
    assert "torchrun --nproc_per_node=2 -m vae_train resume=" in text
    assert len(state["rng"]["ranks"]) == 2 and state["world_size"] == 2
    assert len(state["partial_epoch"]["ranks"]) == 2
    torchrun([f"resume={run}"], tmp_path)
    final, ref = weights(run), weights(reference)
    assert all(torch.equal(final[k], ref[k]) for k in ref)
    history = json.loads((run / "metrics.json").read_text())["history"]
    ref_history = json.loads((reference / "metrics.json").read_text())["history"]
    assert [h["train_loss"] for h in history] == [h["train_loss"] for h in ref_history]


@pytest.mark.slow
def test_a_model_with_two_stages_trains_data_parallel(tmp_path):
    """vqvae trains its prior in a second stage, from the best weights of the first (read by
    every rank once rank 0 has written them); its prior's parameters have no gradient in the
    first stage, nor the autoencoder's in the second: DDP finds them."""
    run = tmp_path / "run"
    torchrun([*TINY, "model=vqvae", "model.prior_epochs=1", "model.prior_layers=2",
              "trainer.epochs=1", "trainer.batch_size=32", f"hydra.run.dir={run}"], tmp_path)
    m = json.loads((run / "metrics.json").read_text())
    assert m["processes"] == 2 and m["epoch"] == 2 and "test_prior_nll" in m
    assert len(list(run.glob("events.out.tfevents*"))) == 1


def test_shards_cover_every_example_once(monkeypatch):
    for world in (1, 2, 3, 8):
        for n in (8, 9, 100, 101):
            parts = []
            for r in range(world):
                monkeypatch.setattr(distributed, "rank", lambda r=r: r)
                monkeypatch.setattr(distributed, "world_size", lambda w=world: w)
                a, b = distributed.shard(n)
                parts.append((a, b))
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(p[1] == q[0] for p, q in zip(parts, parts[1:]))
            assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1


def test_process_layout_from_torchrun_and_slurm(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_STEP_NUM_TASKS", "SLURM_PROCID",
                "SLURM_LOCALID"):
        monkeypatch.delenv(key, raising=False)
    assert distributed._env_world() is None and not distributed.wanted()
    monkeypatch.setenv("SLURM_NTASKS", "8")     # a batch script's or salloc's: one process
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert distributed._env_world() is None
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "8")   # one task of an srun step of 8
    assert distributed._env_world() == (5, 1, 8)
    monkeypatch.setenv("WORLD_SIZE", "2")     # torchrun's variables win
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed._env_world() == (1, 1, 2)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed._env_world() is None
    assert distributed.slurm_master("gpu[07-09,12],cpu3") == "gpu07"
    assert distributed.slurm_master("node12") == "node12"
    assert distributed.slurm_master("a[3,5]") == "a3"


def test_a_sweep_under_torchrun_is_refused_in_one_line(monkeypatch):
    from vae_train.argv import join_processes as _join_processes

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match="sweep .-m. is started once, without torchrun"):
        _join_processes(["-m", "loss.beta=1,2"])


@pytest.mark.slow
def test_two_srun_tasks_train_one_run(tmp_path):
    """What ``srun --ntasks=2 python -m vae_train`` (or the submitit launcher with
    tasks_per_node=2) starts: two processes that know their rank from SLURM's variables. The
    model is aae: three phases per batch, each stepping one parameter group (the others get
    no gradient in that phase)."""
    import random

    run = tmp_path / "run"
    job = str(random.randint(1, 19999))
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
               "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank),
               "SLURM_JOB_ID": job, "SLURM_STEP_NODELIST": "localhost"}
        for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "vae_train", *TINY, "model=aae", "trainer.epochs=1",
             "trainer.batch_size=32", f"hydra.run.dir={run}"], cwd=tmp_path, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    m = json.loads((run / "metrics.json").read_text())
    assert m["processes"] == 2 and m["steps"] == 17   # 1,080 images in steps of 2 x 32
    assert "test_disc_acc" in m
    assert "data-parallel over 2 processes" in outs[0] and outs[1].strip() == ""
    assert len(list(run.glob("events.out.tfevents*"))) == 1


PRELUDE = '''
import os, sys
from vae_train.training import forward as forward_mod
forward = forward_mod.TrainingForward.forward
def nan_on_rank_1(self, x, y, step, phase):
    out = forward(self, x, y, step, phase)
    if step == 3 and os.environ["RANK"] == "1":
        out = {**out, "loss": out["loss"] * float("nan")}
    return out
forward_mod.TrainingForward.forward = nan_on_rank_1
from vae_train.train import main
sys.argv = ["vae_train", *sys.argv[1:]]
main()
'''


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_every_rank_at_that_step(tmp_path):
    """Rank 1 alone sees a non-finite loss: all ranks agree on it before the backward pass,
    so none waits forever for the others' gradients; rank 0 records the failure."""
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(PRELUDE)
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), *TINY, "trainer.epochs=1", "trainer.batch_size=32",
         f"hydra.run.dir={run}"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "non-finite loss term on another rank at step 4 (epoch 1)" in text, text
    assert "[rank 1] error: non-finite loss term loss at step 4" in text, text
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "failed" and m["failed_step"] == 4
