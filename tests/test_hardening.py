"""Issue 14's classes of hostile input, each tried where it starts: a finished run is never
trained over, a checkpoint must belong to its run, a stopped epoch continues exactly or says
why it restarts, a full or read-only disk is one line that loses nothing, sizes that cannot fit
are refused before they are allocated, locks at the edges, and run directories from someone
else build only vae-train's own classes."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, make_trainer, run_cli
from vae_train import files, lock, rundir, trust
from vae_train.errors import UserError
from vae_train.training import state

SMALL = ["dataset=synthetic", "dataset.num_train=600", "dataset.num_test=100",
         "trainer.batch_size=64", "trainer.progress=false", "device=cpu"]


def digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (but the lock) by its content."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run (1 epoch), and a copy of it for each test to harm."""
    base = tmp_path_factory.mktemp("finished")
    run_cli([*TINY, "trainer.epochs=1", f"hydra.run.dir={base / 'run'}"], base)
    return base / "run"


@pytest.fixture
def run_copy(finished, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(finished, dst)
    return dst


# -- 1. a finished run is never overwritten --------------------------------------------------
@pytest.mark.slow
def test_training_into_a_finished_run_is_refused_and_changes_nothing(run_copy, tmp_path):
    (run_copy / "eval.json").write_text('{"nll": 1.0, "epoch": 1}')
    before = digest(run_copy)
    proc = run_cli([*TINY, "trainer.epochs=1", "model.latent_dim=3",
                    f"hydra.run.dir={run_copy}"], tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "holds a finished run" in proc.stderr and "overwrite=true" in proc.stderr
    assert f"resume={run_copy}" in proc.stderr
    assert digest(run_copy) == before                       # not a byte changed, log included

    # asked for explicitly: the old results go, none is left to describe another model
    run_cli([*TINY, "trainer.epochs=1", "model.latent_dim=3", "overwrite=true",
             f"hydra.run.dir={run_copy}"], tmp_path)
    assert not (run_copy / "eval.json").exists()
    assert len(list(run_copy.glob("events.out.tfevents.*"))) == 1
    saved = torch.load(run_copy / "checkpoints" / "best.pt", weights_only=True)
    assert saved["config"]["model"]["latent_dim"] == 3
    assert "overwrite" not in " ".join(saved["overrides"])    # not kept for resume=


def test_a_fresh_start_is_refused_where_results_are_and_cleared_when_asked(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"x")
    (tmp_path / "eval.json").write_text("{}")
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "samples.png").write_bytes(b"png")
    (tmp_path / "train.log").write_text("old log\n")
    with pytest.raises(rundir.RunDirRefused, match="another run's results.*last.pt"):
        rundir.refuse_fresh_start(tmp_path, overwrite=False)
    assert (tmp_path / "checkpoints" / "last.pt").exists()
    rundir.refuse_fresh_start(tmp_path, overwrite=True)
    assert rundir.results(tmp_path, everything=True) == [] and (tmp_path / "train.log").exists()
    rundir.refuse_fresh_start(tmp_path, overwrite=False)     # an empty one is fine


@pytest.mark.slow
def test_a_checkpoint_of_another_run_copied_into_a_run_is_not_resumed(run_copy, tmp_path):
    other = tmp_path / "other"
    run_cli([*TINY, "trainer.epochs=1", "model.latent_dim=5", f"hydra.run.dir={other}"],
            tmp_path)
    shutil.copy(other / "checkpoints" / "last.pt", run_copy / "checkpoints" / "last.pt")
    before = digest(run_copy)
    proc = run_cli([f"resume={run_copy}", "trainer.epochs=2"], tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "was not written by run" in proc.stderr and "model.latent_dim is 5" in proc.stderr
    assert digest(run_copy) == before


def test_a_resume_that_trains_on_sets_old_evaluations_aside(tmp_path):
    (tmp_path / "eval.json").write_text('{"nll": 1}')
    (tmp_path / "eval_val.json").write_text('{"nll": 2}')
    rundir.set_evaluations_aside(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json.stale",
                                                          "eval_val.json.stale"]


# -- 2. resume in the middle of an epoch after the data or the batch changed -----------------
def _stopped_in_epoch_2(tmp_path, overrides=()):
    """A checkpoint of a run a signal stopped after batch 3 of epoch 2."""
    tr = make_trainer([*SMALL, "trainer.epochs=2", *overrides], tmp_path)
    tr.run_epoch(1)
    perm = torch.randperm(len(tr.data.train), generator=tr.shuffle_gen)
    state.save_partial(tr, 2, 3, perm, {"loss": torch.tensor(3 * 64 * 200.0)}, 1.0)
    return tmp_path / "checkpoints" / "last.pt", tr.step


@pytest.mark.parametrize("change,why", [
    (["trainer.batch_size=50"], "64 examples per step then, 50 now"),
    (["dataset.num_train=300"], "the training set has 270 examples now, 540 then"),
    (["dataset.num_train=1200"], "the training set has 1080 examples now, 540 then"),
])
def test_a_stopped_epoch_restarts_when_it_cannot_continue_and_says_why(tmp_path, change, why,
                                                                       caplog):
    ckpt, steps = _stopped_in_epoch_2(tmp_path)
    tr = make_trainer([*SMALL, "trainer.epochs=2", *change], tmp_path / "new")
    with caplog.at_level(logging.WARNING):
        tr.restore(ckpt)
    assert tr.partial is None
    text = caplog.text
    assert "epoch 2 stopped after batch 3" in text and why in text and "restarts" in text
    tr.fit()                                                  # no IndexError, no empty batch
    assert tr.epoch == 2
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in tr.history)
    assert tr.step == steps + tr.steps_per_epoch                # epoch 2 ran whole, once


def test_a_stopped_epoch_with_nothing_changed_continues_where_it_stopped(tmp_path):
    ckpt, _ = _stopped_in_epoch_2(tmp_path)
    tr = make_trainer([*SMALL, "trainer.epochs=2"], tmp_path / "new")
    tr.restore(ckpt)
    assert tr.partial is not None and int(tr.partial["batch"]) == 3


# -- 3. a full disk, a read-only folder ------------------------------------------------------
def test_a_full_disk_is_refused_before_writing_and_the_old_checkpoint_stays(tmp_path,
                                                                           monkeypatch):
    tr = make_trainer([*SMALL, "trainer.epochs=2"], tmp_path)
    tr.run_epoch(1)
    last = tmp_path / "checkpoints" / "last.pt"
    good = last.read_bytes()
    monkeypatch.setattr(files.shutil, "disk_usage",
                        lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 4096, 4096))
    with pytest.raises(files.DiskError) as err:
        tr.run_epoch(2)
    msg = str(err.value)
    assert msg.startswith(f"no space left on device while writing {last}; ")
    assert " MB needed" in msg and "\n" not in msg
    assert last.read_bytes() == good
    assert not list(tmp_path.rglob("*.tmp"))


def test_running_out_of_space_while_writing_removes_the_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "ckpt" / "last.pt"
    files.write_bytes(target, b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(files.DiskError, match="no space left on device while writing"):
        files.write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old" and not list(target.parent.glob(".*.tmp"))


@pytest.mark.parametrize("code,needle", [(errno.EROFS, "the file system is read-only"),
                                         (errno.EACCES, "permission denied")])
def test_a_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, code, needle):
    def refuse(*a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files.os, "replace", refuse)
    with pytest.raises(files.DiskError) as err:
        files.write_json(tmp_path / "metrics.json", {"a": 1})
    assert needle in str(err.value) and str(tmp_path / "metrics.json") in str(err.value)
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(lock.os, "open", refuse)
    with pytest.raises(UserError, match=needle):
        lock.RunLock(tmp_path).acquire()


DISK_FILLS_IN_EPOCH_2 = """
import shutil
import vae_train.files as files
_usage, _calls = files.shutil.disk_usage, [0]
def usage(path):
    _calls[0] += 1
    u = _usage(path)
    # from epoch 2 on: 200 KB left, room for metrics.json but not for a checkpoint
    return u if _calls[0] <= 2 else shutil._ntuple_diskusage(u.total, u.total - 204800, 204800)
files.shutil.disk_usage = usage
"""


@pytest.mark.slow
def test_a_disk_that_fills_up_during_training_is_recorded_and_loses_nothing(tmp_path):
    run = tmp_path / "run"
    args = [*TINY, "trainer.epochs=3", f"hydra.run.dir={run}"]
    code = (f"{DISK_FILLS_IN_EPOCH_2}\nimport sys\nfrom vae_train.train import main\n"
            f"sys.argv = ['vae_train', *{args!r}]\nmain()\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "no space left on device while writing" in proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "no space left" in metrics["error"]
    assert "no space left on device" in (run / "train.log").read_text()
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    assert not list(run.rglob("*.tmp"))


# -- 6. sizes that cannot fit ----------------------------------------------------------------
def test_the_memory_estimate_counts_parameters_without_allocating_them(tmp_path):
    from vae_train import memory
    from vae_train.models.vae import VAE

    est = memory.estimate(lambda: VAE(input_shape=(1, 28, 28), num_classes=10,
                                      hidden_dims=[10**9], latent_dim=20),
                          None, (2, 1, 28, 28), None, "adam", activations=False)
    assert est.params == 784 * 10**9 + 10**9 + 10**9 * 40 + 40 + 20 * 10**9 + 10**9 \
        + 10**9 * 784 + 784
    big = memory.Estimate(est.params, est.params * 16, 0)
    with pytest.raises(UserError, match=r"needs about .* TB of memory .* available on cpu"):
        memory.check_fits(big, torch.device("cpu"), 128, "make it smaller")


# -- 7. locks at the edges -------------------------------------------------------------------
def test_a_lock_that_is_a_folder_is_one_line_naming_it(tmp_path):
    (tmp_path / ".lock").mkdir()
    with pytest.raises(lock.RunDirInUse, match=r"\.lock is a folder, not a lock file; remove"):
        lock.RunLock(tmp_path).acquire()


@pytest.mark.parametrize("content", ["[1, 2]", "garbage", '{"pid": "me"}', "\xff\xfe", ""])
def test_a_lock_holding_something_else_is_taken_over_once_old(tmp_path, content):
    path = tmp_path / ".lock"
    path.write_text(content, errors="surrogateescape")
    old = time.time() - 60
    os.utime(path, (old, old))
    with lock.RunLock(tmp_path) as held:
        assert held.held and json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def test_a_stale_lock_whose_pid_was_reused_is_taken_over(tmp_path):
    import socket

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path = tmp_path / ".lock"
        # the lock of a process that started before this pid's current owner did
        start = lock.process_start(sleeper.pid)
        path.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(),
                                    "started": "then", "proc_start": start - 1}))
        with lock.RunLock(tmp_path) as held:
            assert held.held
        # the same pid, started when the lock says: alive, refused, and told how to clear it
        path.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(),
                                    "started": "now", "proc_start": start}))
        with pytest.raises(lock.RunDirInUse, match=rf"in use by process {sleeper.pid}.*delete"):
            lock.RunLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.slow
def test_ctrl_c_while_the_data_loads_is_one_line(tmp_path):
    prelude = ("import vae_train.data.synthetic as s\n"
               "def stop(self):\n    raise KeyboardInterrupt\n"
               "s.Synthetic.read = stop\n")
    args = [*TINY, f"hydra.run.dir={tmp_path / 'run'}"]
    code = (f"{prelude}import sys\nfrom vae_train.train import main\n"
            f"sys.argv = ['vae_train', *{args!r}]\nmain()\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("interrupted")
    assert not (tmp_path / "run" / ".lock").exists()


# -- 8. run directories from someone else ----------------------------------------------------
def test_only_vae_trains_own_classes_are_trusted():
    ok = {"model": {"_target_": "vae_train.models.vae.VAE"},
          "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True}}
    trust.check_config(ok, "run r", trusted=False)
    bad = {**ok, "dataset": {"_target_": "somemodule.Data", "inner": [{"_target_": "os.system"}]}}
    with pytest.raises(trust.UntrustedTarget,
                       match=r"run r names dataset._target_=somemodule.Data, .*trust_run_code=true"):
        trust.check_config(bad, "run r", trusted=False)
    assert list(trust.targets(bad))[-1] == ("dataset.inner[0]._target_", "os.system")
    trust.check_config(bad, "run r", trusted=True)
    assert not trust.allowed("vae_train..x") and not trust.allowed("torch.load")
    with pytest.raises(trust.UntrustedTarget, match="hydra.callbacks"):
        trust.check_overrides(["hydra.callbacks.x._target_=evil.Cb"], "ckpt", trusted=False)
    with pytest.raises(trust.UntrustedTarget, match="pkg://"):
        trust.check_overrides(["hydra.searchpath=[pkg://evil]"], "ckpt", trusted=False)
    trust.check_overrides(["hydra.searchpath=[file:///conf]", "model=cvae"], "ckpt", False)


EVIL = "import pathlib\npathlib.Path(__file__).with_name('imported').touch()\nclass Model: pass\n"


def _tamper(run: Path, target: str) -> None:
    """Name ``target`` as the model's class in the run's config and in its checkpoints."""
    cfg = run / ".hydra" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("_target_: vae_train.models.vae.VAE",
                                           f"_target_: {target}"))
    for ckpt in (run / "checkpoints").glob("*.pt"):
        s = torch.load(ckpt, weights_only=True)
        s["config"]["model"]["_target_"] = s["model_target"] = target
        torch.save(s, ckpt)


@pytest.mark.slow
def test_a_run_naming_a_foreign_class_is_not_built_without_the_flag(run_copy, tmp_path, call,
                                                                   monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "somemodule.py").write_text(EVIL)
    monkeypatch.syspath_prepend(str(home))
    _tamper(run_copy, "somemodule.Model")
    before = digest(run_copy)
    env = {**os.environ, "PYTHONPATH": str(home)}
    proc = subprocess.run([sys.executable, "-m", "vae_train", f"resume={run_copy}",
                           "trainer.epochs=2"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "model._target_=somemodule.Model" in proc.stderr
    assert "trust_run_code=true" in proc.stderr
    for module in ("vae_train.evaluate", "vae_train.sample"):
        res = call(module, [f"run={run_copy}", "n=10"], check=False)
        assert res.returncode == 2 and "somemodule.Model" in res.stderr, res.stderr
        assert "trust_run_code=true" in res.stderr
    assert not (home / "imported").exists()                 # its code never ran
    assert digest(run_copy) == before
    # trusted: it is imported (and, not being a model, refused as such)
    res = call("vae_train.evaluate", [f"run={run_copy}", "n=10", "trust_run_code=true"],
               check=False)
    assert (home / "imported").exists() and res.returncode == 2
