"""Non-finite losses and gradients: detected at the step, stop or skip, checkpoints kept."""

import json
import math

import pytest
import torch

from conftest import TINY, make_trainer, run_cli
from vae_train.errors import NonFiniteError

SMALL = ["dataset=synthetic", "dataset.num_train=400", "dataset.num_test=50",
         "trainer.batch_size=60", "trainer.progress=false", "trainer.image_every_epochs=0"]


def _poison(trainer, calls):
    """Make the objective's kl and loss NaN in the given training calls (1, 2, ...)."""
    forward = trainer.objective.forward
    count = {"n": 0}

    def poisoned(model, x, y=None, step=None, train=True, phase=None):
        terms = forward(model, x, y, step=step, train=train, phase=phase)
        if train:
            count["n"] += 1
            if count["n"] in calls:
                terms["kl"] = terms["kl"] * math.nan
                terms["loss"] = terms["loss"] + terms["kl"]
        return terms

    trainer.objective.forward = poisoned


# The guard's two paths: on the device (read at check points: the epoch's end, or every step
# with nonfinite_check_steps=1) and read back every step.
CHECKS = {"auto": 12, "auto_each": 9, "every_step": 8}   # -> the step count when it stops
CHECK_ARGS = {"auto": ["trainer.nonfinite_check=auto"],
              "auto_each": ["trainer.nonfinite_check=auto", "trainer.nonfinite_check_steps=1"],
              "every_step": ["trainer.nonfinite_check=every_step"]}


@pytest.mark.parametrize("check", list(CHECKS))
def test_a_nan_stops_at_its_step_naming_the_term_and_updates_nothing(tmp_path, check):
    tr = make_trainer([*SMALL, "trainer.epochs=3", *CHECK_ARGS[check]], tmp_path)  # 6 steps/epoch
    assert tr.device_guard == check.startswith("auto")
    _poison(tr, {9})
    tr.enter_stage(1)
    tr.run_epoch(1)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    with pytest.raises(NonFiniteError, match=r"non-finite loss term loss, kl at step 9 "
                                             r"\(epoch 2\).*checkpoints keep epoch 1") as e:
        tr.fit()
    assert e.value.step == 9
    # every step: steps 7 and 8 ran, step 9 was refused; on the device the bad step was
    # skipped there, and the run stopped when the host read the guard
    assert tr.step == CHECKS[check]
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step"] == 6
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    # the refused step changed nothing: the model differs from before only by steps 7 and 8
    assert any(not torch.equal(v, tr.model.state_dict()[k]) for k, v in before.items())
    assert all(torch.isfinite(v).all() for v in tr.model.state_dict().values())


def _overflow_on_backward(trainer, call):
    """The ``call``-th backward pass gives one weight an infinite gradient (finite loss)."""
    calls = {"n": 0}

    def hook(grad):
        calls["n"] += 1
        return grad * math.inf if calls["n"] == call else grad

    next(trainer.model.parameters()).register_hook(hook)


def test_a_non_finite_gradient_is_caught_too(tmp_path):
    tr = make_trainer([*SMALL, "trainer.epochs=1"], tmp_path)
    _overflow_on_backward(tr, 3)
    with pytest.raises(NonFiniteError, match="non-finite gradient at step 3"):
        tr.fit()


@pytest.mark.parametrize("check", ["auto", "every_step"])
def test_skip_mode_skips_counts_and_finishes(tmp_path, check):
    tr = make_trainer([*SMALL, "trainer.epochs=2", "trainer.nonfinite=skip",
                       *CHECK_ARGS[check]], tmp_path)
    _poison(tr, {3, 5})
    tr.fit()
    assert tr.skipped_steps == 2 and tr.epoch == 2
    # read back every step, a skipped step is not a step; on the device it is one whose
    # update was skipped (the step counter moves on)
    assert tr.step == (12 - 2 if check == "every_step" else 12)
    h = tr.history[-1]
    assert h["skipped_steps"] == 2 and math.isfinite(h["train_loss"])
    # ... up to a limit
    tr = make_trainer([*SMALL, "trainer.epochs=1", "trainer.nonfinite=skip",
                       "trainer.max_skipped_steps=1", *CHECK_ARGS[check]], tmp_path / "limit")
    _poison(tr, {1, 2})
    with pytest.raises(NonFiniteError, match="trainer.max_skipped_steps reached.*raise "
                                             "trainer.max_skipped_steps"):
        tr.fit()


def test_fp16_scaler_skips_are_counted_not_failures(tmp_path):
    tr = make_trainer([*SMALL, "trainer.epochs=1"], tmp_path)
    tr.amp_dtype = torch.float16
    tr.scaler = torch.amp.GradScaler("cpu", init_scale=1.0, enabled=True)  # no natural overflow
    _overflow_on_backward(tr, 3)   # as an fp16 gradient can overflow
    tr.fit()
    assert tr.amp_skipped_steps == 1 and tr.skipped_steps == 0
    assert tr.history[-1]["amp_skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in tr.model.state_dict().values())


@pytest.mark.slow
def test_divergence_from_the_command_line_keeps_checkpoints_and_records_it(tmp_path):
    run = tmp_path / "run"
    run_cli([*TINY, "trainer.epochs=1", f"hydra.run.dir={run}"], tmp_path)
    proc = run_cli([f"resume={run}", "trainer.epochs=3", "optimizer.lr=1e30"], tmp_path,
                   check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "non-finite" in err[0] and "(epoch 2" in err[0], proc.stderr
    assert "checkpoints keep epoch 1" in err[0]
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "failed" and m["failed_step"] > 0 and m["epoch"] == 1
    assert "non-finite" in m["error"]
    for name in ("last.pt", "best.pt"):
        state = torch.load(run / "checkpoints" / name, weights_only=True)
        assert state["epoch"] == 1
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


# -- crash and resume, one process per run directory ------------------------------------------
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402


def _start(args, cwd, prelude=""):
    """The real command line in a subprocess; ``prelude`` runs first (fault injection)."""
    code = f"{prelude}\nimport sys\nfrom vae_train.train import main\nsys.argv = ['vae_train', *{list(args)!r}]\nmain()\n"
    return subprocess.Popen([sys.executable, "-c", code], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_for(predicate, proc, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the process ended early:\n{proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("timed out")


@pytest.mark.slow
def test_a_second_process_is_refused_and_a_killed_ones_lock_is_taken_over(tmp_path):
    run = tmp_path / "run"
    first = _start([*TINY, "trainer.epochs=500", f"hydra.run.dir={run}"], tmp_path)
    try:
        _wait_for(lambda: (run / "checkpoints" / "last.pt").is_file(), first)
        assert json.loads((run / ".lock").read_text())["pid"] == first.pid
        config = (run / ".hydra" / "config.yaml").read_bytes()
        proc = run_cli([f"resume={run}", "trainer.epochs=2"], tmp_path, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert f"is in use by process {first.pid}" in proc.stderr
        assert (run / ".hydra" / "config.yaml").read_bytes() == config   # left as it was
        assert "in use by process" not in (run / "train.log").read_text()   # not its log
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (run / ".lock").is_file()                 # a killed process cannot clean up...
    done = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"]
    proc = run_cli([f"resume={run}", f"trainer.epochs={done + 1}"], tmp_path)
    assert "stale lock" in proc.stderr                # ...but its lock does not stay stuck
    assert json.loads((run / "metrics.json").read_text())["epoch"] == done + 1
    assert not (run / ".lock").exists()


SLOW_SECOND_SAVE = """
import time
import vae_train.checkpoint as checkpoint
_write, _calls = checkpoint.write_bytes, [0]
def slow(path, data):
    _calls[0] += 1
    if _calls[0] == 2:      # epoch 2's last.pt: write the temporary file, then stall
        with open(checkpoint.Path(path).with_name(".last.pt.tmp"), "wb") as f:
            f.write(data)
        open(checkpoint.Path(path).with_name("stalled"), "w").close()
        time.sleep(60)
    _write(path, data)
checkpoint.write_bytes = slow
"""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: the same 3-epoch run, never stopped."""
    base = tmp_path_factory.mktemp("full")
    run_cli([*KILL_ARGS, f"hydra.run.dir={base / 'run'}"], base)
    return base / "run"


KILL_ARGS = [*TINY, "trainer.epochs=3", "dataset.num_train=600", "trainer.batch_size=60"]


@pytest.mark.parametrize("when", ["writing a checkpoint", "in an epoch"])
@pytest.mark.slow
def test_killed_then_resumed_ends_like_an_uninterrupted_run(tmp_path, uninterrupted, when):
    crash = tmp_path / "crash"
    prelude, marker = ((SLOW_SECOND_SAVE, crash / "checkpoints" / "stalled")
                       if when == "writing a checkpoint" else (PAUSE_IN_EPOCH_2, crash / "paused"))
    proc = _start([*KILL_ARGS, f"hydra.run.dir={crash}"], tmp_path, prelude=prelude)
    try:
        _wait_for(marker.is_file, proc)
        if when == "writing a checkpoint":
            assert (crash / "checkpoints" / ".last.pt.tmp").stat().st_size > 1000
        os.kill(proc.pid, signal.SIGKILL)      # epoch 2: mid-checkpoint, or mid-epoch
    finally:
        proc.wait()
    state = torch.load(crash / "checkpoints" / "last.pt", weights_only=True)   # never unreadable
    assert state["epoch"] == 1
    run_cli([f"resume={crash}"], tmp_path)
    a = torch.load(uninterrupted / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(crash / "checkpoints" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3 and a["step"] == b["step"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (uninterrupted, crash))
    assert ma["test_loss"] == mb["test_loss"] and ma["best_val_loss"] == mb["best_val_loss"]
    assert [h["val_loss"] for h in ma["history"]] == [h["val_loss"] for h in mb["history"]]


PAUSE_IN_EPOCH_2 = """
import pathlib, time
from vae_train.training.trainer import Trainer
_step = Trainer.train_step
def paused(self, x, y, *rest):
    if self.step == self.steps_per_epoch + 3:   # the 4th step of epoch 2: wait for a signal
        pathlib.Path(self.run_dir, "paused").touch()
        for _ in range(600):
            if self.stopping.signal is not None:
                break
            time.sleep(0.05)
    return _step(self, x, y, *rest)
Trainer.train_step = paused
"""


VQ_TWO_STAGES = ["model=vqvae", "trainer.epochs=1", "model.prior_epochs=1", "model.channels=[8,8]",
                 "model.code_dim=4", "model.num_codes=8", "model.prior_channels=8",
                 "model.prior_layers=1"]


@pytest.mark.parametrize("sig,model", [(signal.SIGTERM, ["trainer.epochs=2"]),
                                       (signal.SIGINT, ["trainer.epochs=2"]),
                                       (signal.SIGTERM, VQ_TWO_STAGES)],   # first prior epoch
                         ids=["SIGTERM", "SIGINT", "SIGTERM-vqvae-stage-2"])
@pytest.mark.slow
def test_a_signal_saves_the_position_in_the_epoch_and_resume_continues_exactly(tmp_path, sig,
                                                                               model):
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    args = [*TINY, *model, "dataset.num_train=600", "trainer.batch_size=60"]
    proc = _start([*args, f"hydra.run.dir={stopped}"], tmp_path, prelude=PAUSE_IN_EPOCH_2)
    try:
        _wait_for(lambda: (stopped / "paused").is_file(), proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, err
    assert f"stopped by {sig.name} in epoch 2 after batch 4 of 9" in err   # it ends its step
    assert f"resume={stopped}" in err and "Traceback" not in err
    state = torch.load(stopped / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["partial_epoch"]["batch"] == 4
    assert not (stopped / ".lock").exists()                  # exited cleanly
    proc = run_cli([f"resume={stopped}"], tmp_path)
    assert "epoch 2/2" in proc.stderr and "epoch 1/2" not in proc.stderr
    run_cli([*args, f"hydra.run.dir={full}"], tmp_path)
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(stopped / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] and "partial_epoch" not in b
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (full, stopped))
    assert ma["test_loss"] == mb["test_loss"]
    assert ma["history"][-1]["train_loss"] == mb["history"][-1]["train_loss"]


# -- checkpoints from strangers, data, where files go ------------------------------------------
@pytest.mark.slow
def test_a_code_running_checkpoint_is_refused_by_resume_evaluate_and_sample(tmp_path, call):
    run = tmp_path / "run"
    run_cli([*TINY, "trainer.epochs=1", f"hydra.run.dir={run}"], tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "vae-train-checkpoint/1", "model": Evil()}, evil)
    proc = run_cli([f"resume={evil}"], tmp_path, check=False)
    assert proc.returncode == 2 and "refused" in proc.stderr and "Traceback" not in proc.stderr
    for module in ("vae_train.evaluate", "vae_train.sample"):
        res = call(module, [f"run={run}", f"checkpoint={evil}", "n=10"], check=False)
        assert res.returncode == 2 and "could run code" in res.stderr, res.stderr
    assert not marker.exists()                      # the code never ran


@pytest.mark.slow
def test_a_checkpoint_of_another_model_names_the_mismatch(tmp_path, call):
    run = tmp_path / "run"
    run_cli([*TINY, "trainer.epochs=1", f"hydra.run.dir={run}"], tmp_path)
    other = tmp_path / "other"
    run_cli([*TINY, "trainer.epochs=1", "model=cvae", f"hydra.run.dir={other}"], tmp_path)
    res = call("vae_train.evaluate", [f"run={run}", f"checkpoint={other}/checkpoints/last.pt",
                                      "n=10"], check=False)
    assert res.returncode == 2 and "holds a different model" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()[-1]) < 400      # one line, not every key


@pytest.mark.slow
def test_a_run_writes_only_inside_its_run_directory(tmp_path):
    before = {p for p in tmp_path.rglob("*")}
    run_cli([*TINY, "trainer.epochs=1"], tmp_path)
    new = [p for p in tmp_path.rglob("*") if p not in before and p.is_file()]
    runs = list((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 1 and new
    outside = [p for p in new if runs[0] not in p.parents]
    assert outside == [], outside


@pytest.mark.parametrize("check", ["auto", "every_step"])
def test_skip_in_a_later_phase_with_fp16_keeps_the_scaler_consistent(tmp_path, check):
    """AAE, three phases per step: a NaN in the generator phase after two optimizers stepped;
    the next steps must run (the scaler's iteration is closed) and training finishes."""
    tr = make_trainer([*SMALL, "model=aae", "trainer.epochs=1", "trainer.nonfinite=skip",
                       *CHECK_ARGS[check]], tmp_path)
    tr.amp_dtype = torch.float16
    tr.scaler = torch.amp.GradScaler("cpu", init_scale=1.0, enabled=True)
    forward, calls = tr.objective.forward, {"n": 0}

    def poisoned(model, x, y=None, step=None, train=True, phase=None):
        terms = forward(model, x, y, step=step, train=train, phase=phase)
        if phase == "generator":
            calls["n"] += 1
            if calls["n"] == 2:
                terms["loss"] = terms["loss"] * math.nan
        return terms

    tr.objective.forward = poisoned
    tr.fit()
    assert tr.skipped_steps == 1 and tr.epoch == 1
    assert tr.step == tr.steps_per_epoch - (check == "every_step")
    assert tr.amp_skipped_steps == 0   # the bad loss term is not a scaler overflow


def test_the_device_guard_skips_exactly_what_the_checked_step_skips(tmp_path):
    """Skipping on the device (the fused optimizer's found_inf) leaves the weights and the
    optimizer's state as if the bad steps never ran: the same weights as refusing them on
    the host."""
    weights = {}
    for check in ("auto", "every_step"):
        tr = make_trainer([*SMALL, "trainer.epochs=1", "trainer.nonfinite=skip",
                           f"trainer.nonfinite_check={check}"], tmp_path / check)
        _poison(tr, {2, 4})
        tr.fit()
        assert tr.skipped_steps == 2
        weights[check] = tr.model.state_dict()
        steps = [s["step"] for s in tr.optim["main"].state_dict()["state"].values()]
        assert all(int(s) == tr.steps_per_epoch - 2 for s in steps)   # Adam's own count
    assert all(torch.equal(v, weights["every_step"][k]) for k, v in weights["auto"].items())


def _host_reads(tr, epoch) -> int:
    """How often one training epoch reads a value back from the device."""
    reads = {"n": 0}
    names = ("item", "tolist", "__bool__", "__float__", "__int__")
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def counting(name):
        def read(self, *a, **k):
            reads["n"] += 1
            return saved[name](self, *a, **k)
        return read

    try:
        for n in names:
            setattr(torch.Tensor, n, counting(n))
        tr.train_epoch(epoch)
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)
    return reads["n"]


def test_the_device_guard_reads_nothing_back_per_step(tmp_path):
    """With the device guard, an epoch's host reads do not grow with its steps; checked
    every step, they do (one or more per step)."""
    quiet = ["trainer.log_every_steps=1000", "trainer.nonfinite_check_steps=1000"]
    reads = {}
    for check in ("auto", "every_step"):
        for n in (250, 490):   # 4 and 8 steps
            tr = make_trainer([*SMALL, f"dataset.num_train={n}", "dataset.val_size=10",
                               "trainer.epochs=1", f"trainer.nonfinite_check={check}", *quiet],
                              tmp_path / f"{check}{n}")
            reads[check, n] = _host_reads(tr, 1)
    assert reads["auto", 250] == reads["auto", 490], reads
    assert reads["every_step", 490] - reads["every_step", 250] >= 4, reads
