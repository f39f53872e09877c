"""Callbacks: objects the trainer calls at fixed points of a run (the ``callbacks`` node, one
``_target_`` per entry). A user's own class plugs in the same way (``+callbacks.mine._target_=
my_package.MyCallback``); it need not subclass :class:`Callback`, only have the methods it
uses.

Three come with vae-train (docs/callbacks.md): :class:`EarlyStopping` (``early_stopping``),
:class:`TopK` (``top_k``: the k best checkpoints by a metric) and :class:`LearningRateMonitor`
(``lr_monitor``)."""

from __future__ import annotations

import logging
import math
import os
import re
import string
from pathlib import Path

from vae_train.checks import BOOLEAN, Checked, Rule, check_values, integer, keyword_options, \
    number, one_of, optional, rules_of
from vae_train.errors import UserError, first_line

log = logging.getLogger(__name__)


class Callback:
    """The hooks, all optional. ``name`` is the callback's key in the ``callbacks`` node."""

    name: str = ""

    def on_fit_start(self, trainer) -> None:
        """Before the first epoch of this process (also on resume, after the state is
        restored); may call ``trainer.request_stop(reason, self.name)``."""

    def on_step_end(self, trainer) -> None:
        """After every optimizer step (``trainer.step`` already counts it). Keep it cheap: no
        reads from the device."""

    def on_epoch_end(self, trainer, record: dict) -> None:
        """After validation, before the epoch's checkpoint is written: ``record`` is the
        epoch's history record (epoch, step, lr, train_*, val_*). May call
        ``trainer.request_stop(reason, self.name)``; the checkpoint then records the stop."""

    def on_checkpoint(self, trainer, path: Path) -> None:
        """After the epoch's ``checkpoints/last.pt`` (``path``) is written."""

    def on_fit_end(self, trainer) -> None:
        """After the last epoch (or an early stop), before the test pass."""

    def state_dict(self) -> dict:
        """What resume needs (saved in every checkpoint)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` on resume."""


HOOKS = ("on_fit_start", "on_step_end", "on_epoch_end", "on_checkpoint", "on_fit_end")


def _class_of(name: str, target: str):
    """The class (or factory) ``callbacks.<name>._target_`` names; one line when it cannot be
    imported."""
    from vae_train.checks import locate

    try:
        return locate(str(target), f"callbacks.{name}._target_")
    except UserError as e:
        raise UserError(f"{e} (docs/callbacks.md#writing-your-own)") from None


def callback_rules(node) -> dict[str, dict[str, Rule]]:
    """``{"callbacks.<name>": rules}`` of every callback in the ``callbacks`` node whose class
    has value rules (:class:`vae_train.checks.Checked`), for checking a composed config before
    any data is read (``checks.validate(cfg, {**FIXED_RULES, **callback_rules(...)})``)."""
    from omegaconf import OmegaConf

    out: dict[str, dict[str, Rule]] = {}
    if not node:
        return out
    for name, spec in node.items():
        if OmegaConf.is_dict(spec) and "_target_" in spec:
            cls = _class_of(str(name), spec._target_)
            if isinstance(cls, type) and issubclass(cls, Checked):
                out[f"callbacks.{name}"] = rules_of(cls)
    return out


def _check_options(name: str, cls, spec) -> None:
    """Options the class does not take, and values its rules refuse: one line by full key."""
    from omegaconf import OmegaConf

    values = {k: v for k, v in OmegaConf.to_container(spec, resolve=True).items()
              if not str(k).startswith("_")}
    takes = keyword_options(cls)
    if takes is not None:
        unknown = [k for k in values if k not in takes]
        if unknown:
            raise UserError(f"callbacks.{name}.{unknown[0]} is not an option of "
                            f"{spec._target_}; its options: {', '.join(takes) or 'none'} "
                            "(docs/callbacks.md)")
    if isinstance(cls, type) and issubclass(cls, Checked):
        check_values(f"callbacks.{name}", rules_of(cls), values)


def build_callbacks(node) -> list:
    """The callbacks of the ``callbacks`` node (name -> ``{_target_: ..., options}``), in
    the node's order; a node that cannot be built is one line naming it."""
    if not node:
        return []
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if not OmegaConf.is_dict(node):
        raise UserError("callbacks must be a mapping of name -> {_target_: ..., options}, e.g. "
                        "callbacks=[early_stopping,top_k] (docs/callbacks.md)")
    built = []
    for name, spec in node.items():
        if spec is None:   # callbacks.<name>=null switches one off
            continue
        if not OmegaConf.is_dict(spec) or "_target_" not in spec:
            raise UserError(f"callbacks.{name} needs a _target_ naming the callback's class "
                            "(docs/callbacks.md)")
        cls = _class_of(str(name), spec._target_)
        _check_options(str(name), cls, spec)
        try:
            cb = instantiate(spec, _convert_="all")
        except Exception as e:  # noqa: BLE001 - a bad class or option, in one line
            cause = e.__cause__ or e
            if isinstance(cause, UserError):
                raise UserError(f"callbacks.{name}: {cause}") from None
            raise UserError(f"callbacks.{name}={spec._target_} cannot be built: "
                            f"{first_line(e)}") from None
        if not any(callable(getattr(cb, h, None)) for h in HOOKS):
            raise UserError(f"callbacks.{name}: {spec._target_} has none of the callback hooks "
                            f"({', '.join(HOOKS)}); see docs/callbacks.md")
        try:
            cb.name = str(name)
        except AttributeError:
            pass
        built.append(cb)
    return built


def hooks(callbacks: list, name: str) -> list:
    """The bound ``name`` hooks of ``callbacks`` that do something (the base class's empty
    ones are left out, so an unused per-step hook costs nothing)."""
    out = []
    for cb in callbacks:
        fn = getattr(cb, name, None)
        if callable(fn) and getattr(type(cb), name, None) is not getattr(Callback, name):
            out.append(fn)
    return out


# -- monitored metrics ----------------------------------------------------------------------

# Keys of every epoch's history record besides the train_* and val_* terms.
RECORD_KEYS = ("epoch", "step", "lr", "skipped_steps", "amp_skipped_steps", "epoch_seconds")

MONITOR = Rule(lambda v: isinstance(v, str) and (v in RECORD_KEYS or any(
    v.startswith(p) and len(v) > len(p) for p in ("train_", "val_"))),
    "a key of the epoch's history record: val_<term> or train_<term> (val_loss, val_kl, "
    "train_loss, ...), or one of " + ", ".join(RECORD_KEYS))


def monitored(record: dict, monitor: str, who: str) -> float:
    """The value of ``monitor`` in an epoch's history record; one line listing the keys that
    exist when it has none."""
    if monitor not in record:
        keys = ", ".join(k for k in record if isinstance(record[k], (int, float))
                         and not isinstance(record[k], bool))
        raise UserError(f"{who}.monitor={monitor} is not in the epoch's record; the keys are: "
                        f"{keys}")
    return float(record[monitor])


def better(value: float, than: float, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` improves on ``than`` by more than ``min_delta`` (NaN never does)."""
    if math.isnan(value):
        return False
    if math.isnan(than):
        return True
    return value < than - min_delta if mode == "min" else value > than + min_delta


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1 or abs(v) >= 1e5 else f"{v:.2f}"


# -- early stopping -------------------------------------------------------------------------

class EarlyStopping(Checked, Callback):
    """Stop the run when ``monitor`` (a key of the epoch's history record) has not improved by
    more than ``min_delta`` for ``patience`` epochs in a row. The stop is recorded in the
    epoch's checkpoint and history record (``stopped_early``) and in ``metrics.json``; a resume
    of the stopped run trains nothing more unless ``patience`` (or ``min_delta``, ``monitor``,
    ``mode``) is changed so that the run would not have stopped.

    A model that trains in stages (``vqvae`` with a prior) is watched per stage: the count
    starts afresh in each stage, and only the last stage can end the run (an earlier one runs
    its epochs; a line says when its patience ran out)."""

    config_group = "callbacks.early_stopping"
    checks = {"monitor": MONITOR, "mode": one_of("min", "max"), "patience": integer(1),
              "min_delta": number(0), "verbose": BOOLEAN}

    def __init__(self, monitor: str = "val_loss", mode: str = "min", patience: int = 5,
                 min_delta: float = 0.0, verbose: bool = False):
        self.monitor, self.mode = monitor, mode
        self.patience, self.min_delta = int(patience), float(min_delta)
        self.verbose = verbose
        self.name = "early_stopping"
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = 0
        self.wait = 0
        self.stage: str | None = None
        self.warned_stage: str | None = None
        self.saved: dict | None = None   # the checkpoint's state (resume)

    def state_dict(self) -> dict:
        return {"monitor": self.monitor, "mode": self.mode, "min_delta": self.min_delta,
                "best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stage": self.stage}

    def load_state_dict(self, state: dict) -> None:
        self.saved = dict(state)
        if self._settings(state) != self._settings():
            return   # other settings: on_fit_start recounts from the run's history
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])
        self.wait, self.stage = int(state["wait"]), state.get("stage")

    def _recount(self, trainer) -> None:
        """Best and wait from the run's history under the current settings (a resume that
        changed monitor, mode or min_delta, or that had no early stopping before)."""
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch, self.wait, self.stage = 0, 0, _stage_of(trainer)
        stage_start = _stage_first_epoch(trainer, self.stage)
        for record in trainer.history:
            epoch = int(record.get("epoch", 0))
            if epoch < stage_start or self.monitor not in record:
                continue
            self._update(epoch, float(record[self.monitor]))

    def _update(self, epoch: int, value: float) -> None:
        if better(value, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.wait = value, epoch, 0
        else:
            self.wait += 1

    def reason(self) -> str:
        delta = f"by more than {self.min_delta:g} " if self.min_delta else ""
        return (f"{self.monitor} did not improve {delta}for {self.wait} epoch"
                f"{'s' if self.wait != 1 else ''} (best {_fmt(self.best)} at epoch "
                f"{self.best_epoch})")

    def on_fit_start(self, trainer) -> None:
        if trainer.history and self.monitor not in trainer.history[-1]:
            monitored(trainer.history[-1], self.monitor, f"callbacks.{self.name}")
        saved = self.saved
        if trainer.history and (saved is None or self._settings(saved) != self._settings()):
            self._recount(trainer)
            log.info("callbacks.%s: %s counted from the run's history (%s): best %s at epoch "
                     "%d, %d epoch(s) since", self.name, self.monitor,
                     "no early stopping before" if saved is None else
                     "other settings than the checkpoint's", _fmt(self.best), self.best_epoch,
                     self.wait)
        if self.wait >= self.patience and self._last_stage(trainer):
            trainer.request_stop(self.reason(), self.name)
        elif self.wait and trainer.history:
            log.info("callbacks.%s: %s has not improved for %d of %d epochs (best %s at epoch "
                     "%d)", self.name, self.monitor, self.wait, self.patience, _fmt(self.best),
                     self.best_epoch)

    def _settings(self, state: dict | None = None) -> tuple:
        if state is None:
            return self.monitor, self.mode, self.min_delta
        return state.get("monitor"), state.get("mode"), float(state.get("min_delta", 0.0))

    def on_epoch_end(self, trainer, record: dict) -> None:
        value = monitored(record, self.monitor, f"callbacks.{self.name}")
        if self.stage is not None and trainer.stage != self.stage:   # a new stage: afresh
            self.best = math.inf if self.mode == "min" else -math.inf
            self.best_epoch, self.wait = 0, 0
        self.stage = trainer.stage
        self._update(int(record["epoch"]), value)
        if self.verbose:
            log.info("callbacks.%s: %s %s, best %s at epoch %d, %d of %d epochs without "
                     "improvement", self.name, self.monitor, _fmt(value), _fmt(self.best),
                     self.best_epoch, self.wait, self.patience)
        if self.wait >= self.patience:
            if self._last_stage(trainer):
                trainer.request_stop(self.reason(), self.name)
            elif self.warned_stage != trainer.stage:
                self.warned_stage = trainer.stage
                log.info("callbacks.%s: %s; stage %r runs its epochs (only the last stage can "
                         "end the run early)", self.name, self.reason(), trainer.stage)

    @staticmethod
    def _last_stage(trainer) -> bool:
        stages = getattr(trainer, "stages", None)
        return not stages or _stage_of(trainer) == stages[-1].name


def _stage_of(trainer) -> str | None:
    """The stage of the trainer's last finished epoch (its first stage before any)."""
    if not getattr(trainer, "stages", None):
        return getattr(trainer, "stage", None)
    return trainer.stages[trainer.stage_index(max(int(trainer.epoch), 1))].name


def _staged(trainer) -> bool:
    """Whether the trainer runs more than one stage (``vqvae`` with a prior)."""
    return len(getattr(trainer, "stages", None) or ()) > 1


def _stage_first_epoch(trainer, stage: str) -> int:
    first = 1
    for s in getattr(trainer, "stages", []):
        if s.name == stage:
            return first
        first += s.epochs
    return 1


# -- the k best checkpoints -----------------------------------------------------------------

RUN_FILES = ("last.pt", "best.pt")   # the trainer's own: never adopted nor deleted by top_k
FILENAME = Rule(lambda v: _filename_ok(v) == "", "a file name pattern with {epoch} (and "
                "optionally {step}, {monitor}, {value}), without '/' or '='")


def _filename_ok(pattern) -> str:
    if not isinstance(pattern, str) or "{epoch" not in pattern:
        return "no {epoch}"
    if "/" in pattern or "\\" in pattern or "=" in pattern:
        return "a '/' or '='"
    try:
        pattern.format(epoch=1, step=1, monitor="val_loss", value=1.0)
    except (KeyError, IndexError, ValueError) as e:
        return str(e)
    return ""


class TopK(Checked, Callback):
    """Keep the ``k`` best checkpoints by ``monitor`` as ``checkpoints/top/<filename>.pt``
    (default ``epoch_007-val_loss_123.45.pt``): each epoch that enters the top k gets a copy
    of its ``last.pt`` (a hard link where the file system allows), and the one it pushes out
    is deleted. ``k=-1`` keeps every epoch. Only rank 0 touches files. On resume the list comes
    from the checkpoint and is checked against the folder: a file the list names but the
    folder lacks is dropped (or made again from ``last.pt`` when it is that epoch), a file the
    folder holds but the list does not (a later epoch of a run resumed from an earlier
    checkpoint, an overwritten run's) is deleted."""

    config_group = "callbacks.top_k"
    checks = {"monitor": MONITOR, "mode": one_of("min", "max"),
              "k": Rule(lambda v: isinstance(v, int) and not isinstance(v, bool) and
                        (v >= 1 or v == -1), "a positive integer, or -1 (every epoch)"),
              "filename": FILENAME, "folder": Rule(lambda v: isinstance(v, str) and v != "" and
                                                   Path(v).parts != () and
                                                   ".." not in Path(v).parts and
                                                   not Path(v).is_absolute(),
                                                   "a folder inside the run's checkpoints/ "
                                                   "(not checkpoints/ itself)")}

    def __init__(self, monitor: str = "val_loss", mode: str = "min", k: int = 3,
                 filename: str = "epoch_{epoch:03d}-{monitor}_{value:.2f}",
                 folder: str = "top"):
        self.monitor, self.mode, self.k = monitor, mode, int(k)
        self.filename, self.folder = filename, folder
        self.name = "top_k"
        self.kept: list[dict] = []     # {"epoch", "value", "file"}, best first
        self.pending: tuple[dict | None, list[dict]] = (None, [])   # (new entry, dropped)
        self.loaded = False
        self.saved_monitor = None   # (monitor, mode) a resumed state was counted for

    def state_dict(self) -> dict:
        return {"monitor": self.monitor, "mode": self.mode,
                "kept": [dict(e) for e in self.kept]}

    def load_state_dict(self, state: dict) -> None:
        self.kept = [{"epoch": int(e["epoch"]), "value": float(e["value"]), "file": str(e["file"])}
                     for e in state.get("kept", [])]
        self.saved_monitor = (state.get("monitor"), state.get("mode"))
        self.loaded = True

    def top_dir(self, trainer) -> Path:
        return Path(trainer.ckpt_dir) / self.folder

    def pattern(self) -> re.Pattern:
        """The names ``filename`` makes (each field any text): the only files of the folder
        this callback adopts or deletes."""
        parts = []
        for literal, field, _, _ in string.Formatter().parse(self.filename):
            parts.append(re.escape(literal))
            if field is not None:
                parts.append(".+?")
        return re.compile("".join(parts) + re.escape(".pt"))

    def _sort(self) -> None:
        sign = 1.0 if self.mode == "min" else -1.0
        self.kept.sort(key=lambda e: (math.isnan(e["value"]), sign * e["value"]
                                      if not math.isnan(e["value"]) else 0.0, e["epoch"]))

    def _limit(self) -> list[dict]:
        """Trim the list to k; the entries that fell out."""
        self._sort()
        if self.k == -1 or len(self.kept) <= self.k:
            return []
        dropped, self.kept = self.kept[self.k:], self.kept[:self.k]
        return dropped

    def on_fit_start(self, trainer) -> None:
        history = {int(r["epoch"]): r for r in trainer.history if "epoch" in r}
        if trainer.history and self.monitor not in trainer.history[-1]:
            monitored(trainer.history[-1], self.monitor, f"callbacks.{self.name}")
        top = self.top_dir(trainer)
        ours = self.pattern()
        on_disk = {p.name: p for p in sorted(top.glob("*.pt"))
                   if ours.fullmatch(p.name) and p.name not in RUN_FILES} if top.is_dir() else {}
        if not self.loaded and trainer.epoch > 0:   # top_k added on resume: adopt the folder
            self.kept = self._adopt(on_disk, history, trainer.epoch)
        # settings changed on resume: the kept epochs rescored from the history
        if self.loaded and self.saved_monitor != (self.monitor, self.mode):
            self.kept = [{**e, "value": float(history[e["epoch"]][self.monitor])}
                         for e in self.kept if e["epoch"] in history
                         and self.monitor in history[e["epoch"]]]
        # a model trained in stages: only the current stage's epochs are ranked
        first = _stage_first_epoch(trainer, _stage_of(trainer)) if _staged(trainer) else 1
        stage = f" in stage {_stage_of(trainer)!r}" if _staged(trainer) else ""
        self.kept = [e for e in self.kept if first <= e["epoch"] <= trainer.epoch]
        last = Path(trainer.ckpt_dir) / "last.pt"
        for e in list(self.kept):
            if e["file"] in on_disk:
                continue
            if e["epoch"] == trainer.epoch and last.is_file() and trainer.rank == 0:
                _place(last, top / e["file"])   # a stop between last.pt and its copy
                on_disk[e["file"]] = top / e["file"]
            else:
                self.kept.remove(e)
        self._limit()   # (k lowered on resume: the files that fell out are strays below)
        if trainer.rank != 0:
            return
        names = {e["file"] for e in self.kept}
        stray = [p for n, p in on_disk.items() if n not in names]
        for p in stray:
            p.unlink(missing_ok=True)
        if stray:
            log.info("callbacks.%s: removed %d checkpoint(s) of %s that are not %s (%s)",
                     self.name, len(stray), top,
                     "epochs of this run" + stage if self.k == -1 else
                     f"among this run's {self.k} best by {self.monitor}{stage}",
                     ", ".join(p.name for p in stray[:3]) + (", ..." if len(stray) > 3 else ""))

    def _adopt(self, on_disk: dict, history: dict, epoch: int) -> list[dict]:
        """The list rebuilt from the folder's files (their epoch read from each checkpoint)
        and the run's history."""
        import torch

        kept = []
        for name, p in on_disk.items():
            try:
                state = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
                e = int(state["epoch"])
            except Exception:  # noqa: BLE001 - not one of ours: deleted as a stray
                continue
            if e <= epoch and e in history and self.monitor in history[e] and \
                    all(k["epoch"] != e for k in kept):   # (a second file of an epoch: a stray)
                kept.append({"epoch": e, "value": float(history[e][self.monitor]), "file": name})
        return kept

    def on_epoch_end(self, trainer, record: dict) -> None:
        value = monitored(record, self.monitor, f"callbacks.{self.name}")
        epoch = int(record["epoch"])
        if math.isnan(value):
            self.pending = (None, [])
            return
        entry = {"epoch": epoch, "value": value,
                 "file": self.filename.format(epoch=epoch, step=int(record.get("step", 0)),
                                              monitor=self.monitor, value=value) + ".pt"}
        self.kept = [e for e in self.kept if e["epoch"] != epoch]   # (a repeated epoch)
        earlier = []
        if _staged(trainer):   # a new stage ranks afresh: its losses are another quantity
            first = _stage_first_epoch(trainer, trainer.stage)
            earlier = [e for e in self.kept if e["epoch"] < first]
            self.kept = [e for e in self.kept if e["epoch"] >= first]
            if earlier:
                log.info("callbacks.%s: stage %r ranks its own epochs; the %d checkpoint(s) of "
                         "the earlier stage leave checkpoints/%s", self.name, trainer.stage,
                         len(earlier), self.folder)
        self.kept.append(entry)
        dropped = earlier + self._limit()
        if entry in dropped:
            dropped.remove(entry)
            entry = None
        self.pending = (entry, dropped)

    def on_checkpoint(self, trainer, path: Path) -> None:
        entry, dropped = self.pending
        self.pending = (None, [])
        if trainer.rank != 0:
            return
        top = self.top_dir(trainer)
        if entry is not None:
            _place(Path(path), top / entry["file"])
        keep = {e["file"] for e in self.kept}
        for e in dropped:
            if e["file"] not in keep and e["file"] not in RUN_FILES:
                (top / e["file"]).unlink(missing_ok=True)

    def best_path(self, trainer) -> Path | None:
        """The best kept checkpoint (None: none yet)."""
        return self.top_dir(trainer) / self.kept[0]["file"] if self.kept else None


def _place(src: Path, dst: Path) -> None:
    """``dst`` with ``src``'s bytes, atomically: a hard link (``last.pt`` is always replaced by
    a rename, never rewritten in place, so the link keeps this epoch's bytes), or a copy
    where the file system has no links."""
    from vae_train.files import atomic_copy, disk_error

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        os.link(src, tmp)
        os.replace(tmp, dst)
        return
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if not src.is_file():
            raise disk_error(e, dst) from None
    atomic_copy(src, dst)


# -- learning rates -------------------------------------------------------------------------

class LearningRateMonitor(Checked, Callback):
    """Every optimizer's learning rate to the loggers as ``lr/<optimizer>`` (a model with one
    optimizer: ``lr/main``; an optimizer with several parameter groups: ``lr/<optimizer>/<i>``),
    every ``every_steps`` optimizer steps (null: ``trainer.log_every_steps``) or at each
    epoch's end (``logging_interval``). It reads the Python numbers the optimizers hold: no
    read from the device."""

    config_group = "callbacks.lr_monitor"
    checks = {"logging_interval": one_of("step", "epoch"), "every_steps": optional(integer(1)),
              "log_momentum": BOOLEAN, "log_weight_decay": BOOLEAN}

    def __init__(self, logging_interval: str = "step", every_steps: int | None = None,
                 log_momentum: bool = False, log_weight_decay: bool = False):
        self.logging_interval, self.every_steps = logging_interval, every_steps
        self.log_momentum, self.log_weight_decay = log_momentum, log_weight_decay
        self.name = "lr_monitor"
        self.every = 1

    def on_fit_start(self, trainer) -> None:
        self.every = int(self.every_steps or trainer.t.log_every_steps)

    def values(self, trainer) -> dict[str, dict[str, float]]:
        """prefix (lr, momentum, weight_decay) -> {name: value} of every parameter group."""
        out: dict[str, dict[str, float]] = {"lr": {}}
        if self.log_momentum:
            out["momentum"] = {}
        if self.log_weight_decay:
            out["weight_decay"] = {}
        for opt_name, opt in trainer.optim.optimizers.items():
            groups = opt.param_groups
            for i, group in enumerate(groups):
                key = opt_name if len(groups) == 1 else f"{opt_name}/{i}"
                lr = _number(group.get("lr"))
                if lr is not None:
                    out["lr"][key] = lr
                if self.log_momentum:
                    m = group.get("betas", (group.get("momentum"),))[0]
                    if _number(m) is not None:
                        out["momentum"][key] = _number(m)
                if self.log_weight_decay and _number(group.get("weight_decay")) is not None:
                    out["weight_decay"][key] = _number(group.get("weight_decay"))
        return out

    def log(self, trainer) -> None:
        if trainer.rank != 0:
            return
        for prefix, values in self.values(trainer).items():
            if values:
                trainer.report.tb.scalars(prefix, values, trainer.step)

    def on_step_end(self, trainer) -> None:
        if self.logging_interval == "step" and trainer.step % self.every == 0:
            self.log(trainer)

    def on_epoch_end(self, trainer, record: dict) -> None:
        if self.logging_interval == "epoch":
            self.log(trainer)


def _number(v) -> float | None:
    """A Python number as a float; a tensor on the CPU too; one on a device is not read (that
    would wait for the device)."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if getattr(v, "device", None) is not None and getattr(v.device, "type", "") == "cpu" and \
            getattr(v, "numel", lambda: 0)() == 1:
        return float(v)
    return None
