"""The callbacks group: early stopping (and resume of a stopped run), the k best checkpoints,
the learning-rate monitor, a user's own callback, and the one-line refusals."""

from __future__ import annotations

import json
import math
import sys
import textwrap

import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY, make_trainer, run_cli
from vae_train.callbacks import TopK, better, build_callbacks
from vae_train.errors import UserError
from vae_train.logging import Loggers

SMALL = ["dataset=synthetic", "dataset.num_train=300", "dataset.num_test=50",
         "trainer.batch_size=60", "trainer.progress=false", "trainer.image_every_epochs=0"]
# 5 steps per epoch (270 training examples)
NO_GAIN = ["callbacks=[early_stopping]", "callbacks.early_stopping.min_delta=1e6"]


def _fit(overrides, folder, resume=False):
    tr = make_trainer([*SMALL, *overrides], folder)
    if resume:
        tr.restore(folder / "checkpoints" / "last.pt")
    tr.fit()
    return tr


# -- early stopping ---------------------------------------------------------------------------

def test_early_stopping_stops_at_first_epoch_plus_patience_and_records_why(tmp_path):
    # min_delta larger than any change: only the first epoch improves (on an infinite best)
    tr = _fit(["trainer.epochs=10", *NO_GAIN, "callbacks.early_stopping.patience=2"], tmp_path)
    assert tr.epoch == 3 and len(tr.history) == 3
    best = tr.history[0]["val_loss"]
    reason = (f"val_loss did not improve by more than 1e+06 for 2 epochs (best {best:.2f} at "
              "epoch 1)")
    assert tr.stopped_early == {"epoch": 3, "reason": reason, "callback": "early_stopping"}
    assert tr.history[-1]["stopped_early"] == reason
    assert all("stopped_early" not in r for r in tr.history[:-1])
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 3 and state["stopped_early"]["reason"] == reason
    assert state["callbacks"]["early_stopping"] == {
        "monitor": "val_loss", "mode": "min", "min_delta": 1e6, "best": best, "best_epoch": 1,
        "wait": 2, "stage": "train"}


def test_mode_max_on_a_falling_loss_stops_after_patience(tmp_path):
    tr = _fit(["trainer.epochs=8", "callbacks=[early_stopping]",
               "callbacks.early_stopping.mode=max", "callbacks.early_stopping.patience=3",
               "callbacks.early_stopping.monitor=train_loss"], tmp_path)
    losses = [r["train_loss"] for r in tr.history]
    assert losses == sorted(losses, reverse=True)   # training lowers it every epoch
    assert tr.epoch == 4
    assert tr.stopped_early["reason"].startswith("train_loss did not improve for 3 epochs")


def test_patience_counts_from_the_last_improvement():
    es = build_callbacks(OmegaConf.create({"es": {
        "_target_": "vae_train.callbacks.EarlyStopping", "patience": 2, "min_delta": 0.5}}))[0]

    class T:
        stages, stage, epoch, total_epochs = None, "train", 0, 10
        stopped_early = None

        def request_stop(self, reason, by):
            self.stopped_early = {"epoch": self.epoch, "reason": reason, "callback": by}

    tr = T()
    for epoch, value in enumerate([10.0, 9.8, 9.0, 8.9, 8.6, 8.7], start=1):
        tr.epoch = epoch
        es.on_epoch_end(tr, {"epoch": epoch, "val_loss": value})
        if tr.stopped_early:
            break
    # 9.8 is no gain (< 0.5), 9.0 is (best 9.0, epoch 3); 8.9 and 8.6 are not (by > 0.5)
    assert tr.stopped_early["epoch"] == 5 and es.best_epoch == 3 and es.best == 9.0
    assert tr.stopped_early["callback"] == "es"
    assert better(1.0, math.nan, "min") and not better(math.nan, 1.0, "max")


def test_a_staged_model_is_watched_per_stage_and_only_the_last_stage_stops(caplog):
    from vae_train.models.base import Stage
    from vae_train.training.trainer import Trainer

    es = build_callbacks(OmegaConf.create({"early_stopping": {
        "_target_": "vae_train.callbacks.EarlyStopping", "patience": 1, "min_delta": 1e6}}))[0]

    class T:
        stages = [Stage("autoencoder", 3, ("main",)), Stage("prior", 3, ("prior",))]
        total_epochs, epoch, stopped_early = 6, 0, None
        stage_index = Trainer.stage_index

        def request_stop(self, reason, by):
            self.stopped_early = {"epoch": self.epoch, "reason": reason, "callback": by}

    tr = T()
    caplog.set_level("INFO")
    for epoch in range(1, 7):
        tr.epoch, tr.stage = epoch, tr.stages[tr.stage_index(epoch)].name
        es.on_epoch_end(tr, {"epoch": epoch, "val_loss": 100.0 - epoch})
        if tr.stopped_early:
            break
    # autoencoder: patience spent at epoch 2, but it runs its 3 epochs; prior: afresh from 4
    assert "stage 'autoencoder' runs its epochs" in caplog.text
    assert tr.stopped_early["epoch"] == 5 and es.best_epoch == 4


def test_resuming_a_stopped_run_trains_nothing_unless_patience_is_raised(tmp_path, caplog):
    run = ["trainer.epochs=10", *NO_GAIN]
    _fit([*run, "callbacks.early_stopping.patience=2"], tmp_path)
    caplog.set_level("INFO")
    again = _fit([*run, "callbacks.early_stopping.patience=2"], tmp_path, resume=True)
    assert again.epoch == 3 and len(again.history) == 3
    assert again.stopped_early["epoch"] == 3 and "for 2 epochs" in again.stopped_early["reason"]
    assert "nothing more to train" in caplog.text
    # raised patience: it goes on, and stops 4 epochs after the best
    more = _fit([*run, "callbacks.early_stopping.patience=4"], tmp_path, resume=True)
    assert more.epoch == 5 and [r["epoch"] for r in more.history] == [1, 2, 3, 4, 5]
    assert more.stopped_early["reason"].endswith("for 4 epochs (best "
                                                 f"{more.history[0]['val_loss']:.2f} at epoch 1)")
    assert more.history[-1]["stopped_early"] == more.stopped_early["reason"]
    assert "training goes on" in caplog.text


def test_early_stopping_added_on_resume_counts_from_the_history(tmp_path):
    _fit(["trainer.epochs=3"], tmp_path)
    tr = _fit(["trainer.epochs=10", *NO_GAIN, "callbacks.early_stopping.patience=2"],
              tmp_path, resume=True)
    assert tr.epoch == 3 and tr.stopped_early["epoch"] == 3   # epochs 2, 3 gained nothing


def test_unknown_monitor_is_one_line_listing_the_keys(tmp_path):
    with pytest.raises(UserError, match=r"callbacks.early_stopping.monitor='loss' is invalid: "
                                        r"it must be a key of the epoch's history record"):
        make_trainer([*SMALL, "callbacks=[early_stopping]",
                      "callbacks.early_stopping.monitor=loss"], tmp_path)
    tr = make_trainer([*SMALL, "trainer.epochs=1", "callbacks=[top_k]",
                       "callbacks.top_k.monitor=val_nll"], tmp_path)
    with pytest.raises(UserError, match=r"callbacks.top_k.monitor=val_nll is not in the epoch's "
                                        r"record; the keys are: epoch, step, lr, .*val_loss"):
        tr.fit()


@pytest.mark.parametrize("override, message", [
    ("callbacks.early_stopping.patience=0", r"callbacks.early_stopping.patience=0 is invalid: "
                                            "it must be a positive integer"),
    ("callbacks.early_stopping.mode=lowest", r"mode='lowest' is invalid: it must be min or max"),
    ("+callbacks.early_stopping.patiense=3", r"callbacks.early_stopping.patiense is not an "
                                             r"option of vae_train.callbacks.EarlyStopping; its "
                                             r"options: monitor, mode, patience"),
])
def test_bad_options_are_one_line_naming_the_key(tmp_path, override, message):
    with pytest.raises(UserError, match=message):
        make_trainer([*SMALL, "callbacks=[early_stopping]", override], tmp_path)


# -- the k best checkpoints -----------------------------------------------------------------

def _top_files(folder):
    return sorted(p.name for p in (folder / "checkpoints" / "top").glob("*.pt"))


def _expected(history, k, monitor="val_loss", mode="min"):
    ranked = sorted(history, key=lambda r: r[monitor] if mode == "min" else -r[monitor])
    return sorted(f"epoch_{r['epoch']:03d}-{monitor}_{r[monitor]:.2f}.pt" for r in ranked[:k])


@pytest.mark.parametrize("mode", ["min", "max"])
def test_top_k_keeps_exactly_the_k_best_checkpoints(tmp_path, mode):
    tr = _fit(["trainer.epochs=5", "callbacks=[top_k]", "callbacks.top_k.k=2",
               f"callbacks.top_k.mode={mode}"], tmp_path)
    files = _top_files(tmp_path)
    assert files == _expected(tr.history, 2, mode=mode)
    for name in files:
        state = torch.load(tmp_path / "checkpoints" / "top" / name, weights_only=True)
        epoch = int(name[6:9])
        assert state["epoch"] == epoch and state["history"][-1]["epoch"] == epoch
        assert f"{state['history'][-1]['val_loss']:.2f}" in name
    assert not list((tmp_path / "checkpoints" / "top").glob(".*"))   # no temporary files left
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert sorted(e["file"] for e in state["callbacks"]["top_k"]["kept"]) == files


def test_top_k_on_resume_keeps_its_list_and_removes_what_does_not_belong(tmp_path, caplog):
    _fit(["trainer.epochs=3", "callbacks=[top_k]", "callbacks.top_k.k=2"], tmp_path)
    top = tmp_path / "checkpoints" / "top"
    (top / "epoch_009-val_loss_1.00.pt").write_bytes(b"not from this run")
    caplog.set_level("INFO")
    tr = _fit(["trainer.epochs=6", "callbacks=[top_k]", "callbacks.top_k.k=2"], tmp_path,
              resume=True)
    assert "removed 1 checkpoint(s)" in caplog.text and "epoch_009" in caplog.text
    assert _top_files(tmp_path) == _expected(tr.history, 2)
    # k lowered on resume, and the monitor changed: rescored from the history
    tr = _fit(["trainer.epochs=6", "callbacks=[top_k]", "callbacks.top_k.k=1",
               "callbacks.top_k.monitor=val_kl", "callbacks.top_k.mode=max"], tmp_path,
              resume=True)
    kept = tr.callbacks[0].kept
    assert len(kept) == 1 and len(_top_files(tmp_path)) == 1
    assert kept[0]["value"] == max(r["val_kl"] for r in tr.history
                                   if _top_files(tmp_path)[0].startswith(f"epoch_{r['epoch']:03d}"))


def test_top_k_every_epoch_and_a_fresh_start_clears_an_old_runs_files(tmp_path, caplog):
    top = tmp_path / "checkpoints" / "top"
    top.mkdir(parents=True)
    (top / "epoch_004-val_loss_3.00.pt").write_bytes(b"an overwritten run's")
    caplog.set_level("INFO")
    tr = _fit(["trainer.epochs=3", "callbacks=[top_k]", "callbacks.top_k.k=-1"], tmp_path)
    assert _top_files(tmp_path) == _expected(tr.history, 3)
    assert "that are not epochs of this run (epoch_004-val_loss_3.00.pt)" in caplog.text
    assert "all best" not in caplog.text


def test_top_k_added_on_resume_adopts_the_files_it_finds(tmp_path):
    _fit(["trainer.epochs=3", "callbacks=[top_k]", "callbacks.top_k.k=-1"], tmp_path)
    top = tmp_path / "checkpoints" / "top"
    for p in top.glob("*.pt"):   # other names: the epoch is read from the file itself
        p.rename(top / p.name.replace("epoch_", "e"))
    tr = make_trainer([*SMALL, "trainer.epochs=4", "callbacks=[top_k]", "callbacks.top_k.k=2",
                       "callbacks.top_k.filename='e{epoch:03d}-{monitor}_{value:.2f}'"],
                      tmp_path)
    tr.restore(tmp_path / "checkpoints" / "last.pt")
    tr.callbacks[0].loaded = False   # as if the run had had no top_k
    tr.fit()
    kept = tr.callbacks[0].kept
    ranked = sorted(tr.history, key=lambda r: r["val_loss"])[:2]
    assert [e["epoch"] for e in kept] == [r["epoch"] for r in ranked]
    assert len(list(top.glob("*.pt"))) == 2


def test_top_k_remakes_the_copy_a_stop_before_it_missed(tmp_path):
    _fit(["trainer.epochs=2", "callbacks=[top_k]", "callbacks.top_k.k=5"], tmp_path)
    top = tmp_path / "checkpoints" / "top"
    newest = [p for p in top.glob("*.pt") if p.name.startswith("epoch_002")][0]
    newest.unlink()   # as if the process died between last.pt and its copy
    tr = make_trainer([*SMALL, "trainer.epochs=2", "callbacks=[top_k]",
                       "callbacks.top_k.k=5"], tmp_path)
    tr.restore(tmp_path / "checkpoints" / "last.pt")
    tr.fit()
    assert newest.is_file()
    assert torch.load(newest, weights_only=True)["epoch"] == 2


@pytest.mark.parametrize("folder", [".", "./", "./.", "top/.."])
def test_top_k_folder_may_not_be_the_checkpoints_folder_itself(folder):
    """folder=. would make last.pt and best.pt strays of the top-k folder (review 17 #1)."""
    with pytest.raises(UserError, match=r"callbacks.top_k.folder=.* is invalid: it must be a "
                                        r"folder inside the run's checkpoints/ \(not checkpoints/"):
        build_callbacks(OmegaConf.create({"top_k": {"_target_": "vae_train.callbacks.TopK",
                                                    "folder": folder}}))


def test_top_k_never_deletes_files_it_did_not_make(tmp_path, caplog):
    """On resume the sweep of stale files removes only names of its own pattern, and never a
    last.pt/best.pt, even where the pattern would match them."""
    opts = ["callbacks=[top_k]", "callbacks.top_k.k=1", "callbacks.top_k.filename='{epoch}'"]
    _fit(["trainer.epochs=2", *opts], tmp_path)
    top = tmp_path / "checkpoints" / "top"
    for name in ("last.pt", "best.pt"):
        (top / name).write_bytes(b"the user's copy")
    (top / "9.pt").write_bytes(b"a stray of the pattern")
    caplog.set_level("INFO")
    _fit(["trainer.epochs=2", *opts], tmp_path, resume=True)
    assert (top / "last.pt").read_bytes() == (top / "best.pt").read_bytes() == b"the user's copy"
    assert not (top / "9.pt").exists() and "removed 1 checkpoint(s)" in caplog.text
    # the default pattern: a file of another name stays
    (tmp_path / "b").mkdir()
    _fit(["trainer.epochs=1", "callbacks=[top_k]"], tmp_path / "b")
    other = tmp_path / "b" / "checkpoints" / "top" / "mine.pt"
    other.write_bytes(b"mine")
    _fit(["trainer.epochs=2", "callbacks=[top_k]", "callbacks.top_k.k=-1"], tmp_path / "b",
         resume=True)
    assert other.read_bytes() == b"mine"
    assert len(_top_files(tmp_path / "b")) == 3


def test_top_k_ranks_only_the_current_stage(tmp_path, caplog):
    """vqvae's prior stage reports another quantity as val_loss than the autoencoder: its
    epochs are ranked among themselves and the earlier stage's files leave (review 17 #14)."""
    from vae_train.models.base import Stage
    from vae_train.training.trainer import Trainer

    topk = build_callbacks(OmegaConf.create({"top_k": {
        "_target_": "vae_train.callbacks.TopK", "k": 2}}))[0]

    class T:
        stages = [Stage("autoencoder", 3, ("main",)), Stage("prior", 3, ("prior",))]
        ckpt_dir, rank, epoch = tmp_path, 0, 0
        stage_index = Trainer.stage_index

    tr = T()
    caplog.set_level("INFO")
    for epoch, value in zip(range(1, 7), [30.0, 20.0, 10.0, 60.0, 50.0, 70.0]):
        tr.epoch, tr.stage = epoch, tr.stages[tr.stage_index(epoch)].name
        topk.on_epoch_end(tr, {"epoch": epoch, "step": epoch, "val_loss": value})
        (tmp_path / "last.pt").write_bytes(f"epoch {epoch}".encode())
        topk.on_checkpoint(tr, tmp_path / "last.pt")
        if epoch == 3:
            assert [e["epoch"] for e in topk.kept] == [3, 2]
    assert [e["epoch"] for e in topk.kept] == [5, 4]
    files = sorted(p.name for p in (tmp_path / "top").glob("*.pt"))
    assert files == ["epoch_004-val_loss_60.00.pt", "epoch_005-val_loss_50.00.pt"]
    assert "stage 'prior' ranks its own epochs" in caplog.text


def test_top_k_filename_rules():
    with pytest.raises(UserError, match=r"callbacks.top_k.filename='val_\{value\}' is invalid"):
        build_callbacks(OmegaConf.create({"top_k": {"_target_": "vae_train.callbacks.TopK",
                                                    "filename": "val_{value}"}}))
    with pytest.raises(UserError, match=r"callbacks.best.filename=.* without '/' or '='"):
        build_callbacks(OmegaConf.create({"best": {"_target_": "vae_train.callbacks.TopK",
                                                   "filename": "epoch={epoch}"}}))
    assert TopK(filename="e{epoch}_{step}").filename == "e{epoch}_{step}"


# -- learning rates ---------------------------------------------------------------------------

class FakeLogger:
    def __init__(self):
        self.calls = []

    def scalars(self, prefix, values, step):
        self.calls.append((prefix, dict(values), step))


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_lr_monitor_logs_at_its_interval(tmp_path, interval):
    tr = make_trainer([*SMALL, "trainer.epochs=2", "trainer.log_every_steps=2",
                       "callbacks=[lr_monitor]", f"callbacks.lr_monitor.logging_interval={interval}",
                       "callbacks.lr_monitor.log_momentum=true", "optimizer.lr=0.002",
                       "optimizer.lr_schedule.name=cosine"], tmp_path)
    fake = FakeLogger()
    tr.report.tb = Loggers({"fake": fake})
    tr.fit()
    lrs = [(step, values) for prefix, values, step in fake.calls if prefix == "lr"]
    momentum = [values for prefix, values, step in fake.calls if prefix == "momentum"]
    steps = [2, 4, 6, 8, 10] if interval == "step" else [5, 10]
    assert [s for s, _ in lrs] == steps
    assert all(set(v) == {"main"} for _, v in lrs)
    assert momentum == [{"main": 0.9}] * len(steps)
    first = lrs[0][1]["main"]
    # the cosine schedule, read after the step: lr(s) = 0.001 (1 + cos(pi s / 10))
    assert [v["main"] for _, v in lrs] == pytest.approx(
        [0.001 * (1 + math.cos(math.pi * s / 10)) for s in steps])
    assert 0 < first < 0.002


def test_lr_monitor_names_every_optimizer_and_group():
    from vae_train.callbacks import LearningRateMonitor

    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    sgd = torch.optim.SGD([{"params": a.weight}, {"params": a.bias, "lr": 0.5}], lr=0.1,
                          momentum=0.8, weight_decay=1e-4)
    adam = torch.optim.Adam(b.parameters(), lr=torch.tensor(3e-4), betas=(0.5, 0.99))

    class T:
        rank, step = 0, 7
        optim = type("O", (), {"optimizers": {"encoder": sgd, "disc": adam}})()

    mon = LearningRateMonitor(log_momentum=True, log_weight_decay=True)
    assert mon.values(T()) == {"lr": {"encoder/0": 0.1, "encoder/1": 0.5,
                                      "disc": pytest.approx(3e-4)},
                               "momentum": {"encoder/0": 0.8, "encoder/1": 0.8, "disc": 0.5},
                               "weight_decay": {"encoder/0": 1e-4, "encoder/1": 1e-4,
                                                "disc": 0.0}}


def test_lr_monitor_every_steps(tmp_path):
    tr = make_trainer([*SMALL, "trainer.epochs=1", "callbacks=[lr_monitor]",
                       "callbacks.lr_monitor.every_steps=3"], tmp_path)
    fake = FakeLogger()
    tr.report.tb = Loggers({"fake": fake})
    tr.fit()
    assert [(p, v, s) for p, v, s in fake.calls if p == "lr"] == [("lr", {"main": 1e-3}, 3)]


# -- your own callback ------------------------------------------------------------------------

RECORDER = '''
import json
from pathlib import Path


class Recorder:
    """Records every hook it sees (and keeps the count across a resume)."""

    def __init__(self, out="calls.jsonl", stop_at=0):
        self.out, self.stop_at, self.fits = out, stop_at, 0

    def write(self, trainer, *what):
        Path(trainer.run_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(trainer.run_dir) / self.out, "a") as f:
            f.write(json.dumps([*what, trainer.epoch, trainer.step, self.fits]) + "\\n")

    def on_fit_start(self, trainer):
        self.fits += 1
        self.write(trainer, "fit_start")

    def on_step_end(self, trainer):
        self.write(trainer, "step")

    def on_epoch_end(self, trainer, record):
        self.write(trainer, "epoch", record["epoch"])
        if record["epoch"] == self.stop_at:
            trainer.request_stop("asked to", self.name)

    def on_checkpoint(self, trainer, path):
        self.write(trainer, "checkpoint", Path(path).name)

    def on_fit_end(self, trainer):
        self.write(trainer, "fit_end")

    def state_dict(self):
        return {"fits": self.fits}

    def load_state_dict(self, state):
        self.fits = state["fits"]


class Hookless:
    pass
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "mycallbacks.py").write_text(textwrap.dedent(RECORDER))
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    sys.modules.pop("mycallbacks", None)


def _calls(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_users_callback_sees_every_hook_in_order(tmp_path, user_module):
    run = tmp_path / "run"
    tr = _fit(["trainer.epochs=3", "+callbacks.mine._target_=mycallbacks.Recorder",
               "+callbacks.mine.stop_at=2"], run)
    calls = _calls(run / "calls.jsonl")
    steps = 5
    expected = [["fit_start", 0, 0, 1]]
    for epoch in (1, 2):
        expected += [["step", epoch - 1, (epoch - 1) * steps + i, 1] for i in range(1, 6)]
        expected += [["epoch", epoch, epoch, epoch * steps, 1],
                     ["checkpoint", "last.pt", epoch, epoch * steps, 1]]
    expected += [["fit_end", 2, 10, 1]]
    assert calls == expected
    assert tr.stopped_early == {"epoch": 2, "reason": "asked to", "callback": "mine"}
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["callbacks"]["mine"] == {"fits": 1}


def test_a_callback_without_hooks_is_refused(user_module):
    with pytest.raises(UserError, match=r"^callbacks.mine: mycallbacks.Hookless has none of the "
                                        r"callback hooks \(on_fit_start, "):
        build_callbacks(OmegaConf.create({"mine": {"_target_": "mycallbacks.Hookless"}}))
    with pytest.raises(UserError, match=r"callbacks.x needs a _target_"):
        build_callbacks(OmegaConf.create({"x": {"patience": 1}}))
    assert build_callbacks(OmegaConf.create({"x": None})) == []


@pytest.mark.slow
def test_cli_user_callback_resume_needs_trust_and_an_unknown_target_is_one_line(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "mycallbacks.py").write_text(textwrap.dedent(RECORDER))
    env = {"PYTHONPATH": str(code)}
    run = tmp_path / "run"
    common = [*TINY, "trainer.image_every_epochs=0", "dataset.num_train=300"]
    run_cli([*common, "trainer.epochs=1", "+callbacks.mine._target_=mycallbacks.Recorder",
             f"hydra.run.dir={run}"], tmp_path, env=env)
    assert [c[0] for c in _calls(run / "calls.jsonl")][-3:] == ["epoch", "checkpoint", "fit_end"]
    proc = run_cli([f"resume={run}", "trainer.epochs=2"], tmp_path, check=False, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "callbacks.mine._target_=mycallbacks.Recorder, which is not one of vae-train's " \
           "classes" in proc.stderr and "trust_run_code=true" in proc.stderr
    run_cli([f"resume={run}", "trainer.epochs=2", "trust_run_code=true"], tmp_path, env=env)
    calls = _calls(run / "calls.jsonl")
    assert calls[-1] == ["fit_end", 2, 10, 2]   # fits=2: its state came back from the checkpoint
    proc = run_cli([*common, "+callbacks.mine._target_=mycallbacks.Nope",
                    f"hydra.run.dir={tmp_path / 'other'}"], tmp_path, check=False, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
    assert len(lines) == 1 and "callbacks.mine._target_=mycallbacks.Nope cannot be found" in lines[0]


# -- through the command line -----------------------------------------------------------------

@pytest.mark.slow
def test_cli_callbacks_together_then_evaluate_a_top_checkpoint(tmp_path, call):
    run = tmp_path / "run"
    common = [*TINY, "trainer.image_every_epochs=0", "dataset.num_train=300",
              "trainer.log_every_steps=2", f"hydra.run.dir={run}"]
    run_cli([*common, "trainer.epochs=8", "callbacks=[early_stopping,top_k,lr_monitor]",
             "callbacks.early_stopping.patience=2", "callbacks.early_stopping.min_delta=1e6",
             "callbacks.top_k.k=2"], tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epoch"] == 3
    assert metrics["history"][-1]["stopped_early"].startswith("val_loss did not improve")
    assert metrics["stopped_early"]["epoch"] == 3
    assert metrics["stopped_early"]["callback"] == "early_stopping"
    files = _top_files(run)
    assert files == _expected(metrics["history"], 2)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run), size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in ea.Scalars("lr/main")] == [2, 4, 6, 8, 10, 12, 14]
    assert all(e.value == pytest.approx(1e-3) for e in ea.Scalars("lr/main"))
    top = run / "checkpoints" / "top" / files[0]
    call("vae_train.evaluate", [f"run={run}", f"checkpoint={top}", "k=5", "n=20",
                                "progress=false"], tmp_path)
    result = json.loads((run / "eval.json").read_text())
    assert result["checkpoint"] == str(top) and result["n"] == 20
    proc = run_cli([f"resume={run}"], tmp_path)
    assert "nothing more to train" in proc.stderr + proc.stdout
    assert json.loads((run / "metrics.json").read_text())["epoch"] == 3
    assert (run / "eval.json").is_file()   # nothing trained: the evaluation still holds
