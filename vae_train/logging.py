"""Where a run's scalars, pictures and hyperparameters go: the ``logger`` config group.

``make_loggers`` builds every logger the ``logger`` node names (``logger=[tensorboard,csv]``:
one node per logger, each with the ``_target_`` of its class) and returns one :class:`Loggers`
that hands each call to all of them. TensorBoard (:class:`TBLogger`) lives here; the others
(csv, wandb, mlflow) are in :mod:`vae_train.loggers`. A logger is any class with
``scalars(prefix, values, step)``, ``images(figs, step, prefix)``, ``hparams(hparam_dict,
metrics, step)`` and ``close()`` (and optionally ``epoch(record, step)``: one epoch's whole
history record); its constructor takes the run directory and may take ``tags``, ``notes``,
``hparams`` and ``resume``.

A logger is a view of the run, not its record: when one fails (its event file cannot be written,
the run directory deleted under a running sweep, a full disk, a dropped connection), one warning
says so and the run goes on without it; the checkpoints and ``metrics.json`` report their own
failures. No logging library is imported before a logger that uses it is built."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import logging
import math
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vae_train.errors import UserError

log = logging.getLogger(__name__)

# A tag: what every logger accepts as a label (MLflow's tag keys are the narrowest).
TAG = re.compile(r"[A-Za-z0-9_.\-/ ]{1,64}")
# What a logger does: a class with none of these is refused (see Loggers).
METHODS = ("scalars", "images", "hparams", "epoch", "close")
# The arguments make_loggers passes to a logger class that takes them.
RUN_ARGS = ("tags", "notes", "hparams", "resume")


def _guarded(method):
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if self.writer is None:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - tensorboard's writer thread or file failed
            self.failed(e)
            return None

    return call


class TBLogger:
    """TensorBoard: ``<prefix>/<term>`` scalars, image grids, the HPARAMS row, and the run's
    tags and notes as text (``run/tags``, ``run/notes``) and HPARAMS columns."""

    def __init__(self, log_dir, enabled: bool = True, tags=(), notes: str | None = None):
        self.writer = None
        self.tags, self.notes = list(tags or ()), notes
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            try:
                self.writer = SummaryWriter(log_dir=str(log_dir))
            except OSError as e:
                from vae_train.files import disk_error

                raise disk_error(e, log_dir) from None
            self.text()

    def failed(self, e: BaseException) -> None:
        writer, self.writer = self.writer, None
        log.warning("TensorBoard logging stopped: %s: %s", type(e).__name__,
                    str(e).splitlines()[0] if str(e) else "")
        try:
            writer.close()
        except Exception:  # noqa: BLE001
            pass

    @_guarded
    def text(self) -> None:
        """The tags and notes on the TEXT tab (only when the run has them)."""
        if self.tags:
            self.writer.add_text("run/tags", ", ".join(self.tags), 0)
        if self.notes:
            self.writer.add_text("run/notes", self.notes, 0)

    @_guarded
    def scalars(self, prefix: str, values: dict, step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(f"{prefix}/{k}", float(v), step)

    @_guarded
    def images(self, figs: dict, step: int, prefix: str = "images") -> None:
        for name, img in figs.items():
            self.writer.add_image(f"{prefix}/{name}", img, step)

    @_guarded
    def hparams(self, hparam_dict: dict, metrics: dict, step: int) -> None:
        """The HPARAMS tab's row for this run, written into the run's own event file."""
        from torch.utils.tensorboard.summary import hparams

        metrics = {f"hparam/{k}": float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and math.isfinite(float(v))}
        hparam_dict = {**hparam_dict, **labels_as_hparams(self.tags, self.notes)}
        _, ssi, sei = hparams(hparam_dict, metrics)
        # No experiment summary: TensorBoard then builds the table from every run's session,
        # marks the hyperparameters whose values differ between runs (a sweep's swept keys)
        # and shows those columns first.
        fw = self.writer.file_writer   # (made when the writer is; public since torch 1.x)
        for summary in (ssi, sei):
            fw.add_summary(summary, step)
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception as e:  # noqa: BLE001
                log.warning("TensorBoard's event file could not be closed: %s", e)


def labels_as_hparams(tags, notes) -> dict:
    """The run's tags and notes as hyperparameter columns (only those it has)."""
    out = {}
    if tags:
        out["tags"] = ", ".join(tags)
    if notes:
        out["notes"] = notes
    return out


class Loggers:
    """The run's loggers as one: each call goes to every logger (by name, in config order). A
    logger whose call raises is warned about once and dropped; the run and the other loggers
    go on."""

    def __init__(self, loggers: dict | None = None):
        self.loggers = dict(loggers or {})

    def __len__(self) -> int:
        return len(self.loggers)

    def __contains__(self, name: str) -> bool:
        return name in self.loggers

    def __getitem__(self, name: str):
        return self.loggers[name]

    @property
    def names(self) -> list[str]:
        return list(self.loggers)

    def each(self, method: str, *args, **kwargs) -> None:
        """``logger.method(*args, **kwargs)`` on every logger that has ``method``."""
        for name, logger in list(self.loggers.items()):
            call = getattr(logger, method, None)
            if not callable(call):
                continue
            try:
                call(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - a view of the run failed; the run goes on
                self.drop(name, e)

    def drop(self, name: str, e: BaseException) -> None:
        logger = self.loggers.pop(name)
        log.warning("logger %s stopped: %s: %s", name, type(e).__name__,
                    str(e).splitlines()[0] if str(e) else "")
        try:
            logger.close()
        except Exception:  # noqa: BLE001
            pass

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        self.each("scalars", prefix, values, step)

    def images(self, figs: dict, step: int, prefix: str = "images") -> None:
        self.each("images", figs, step, prefix=prefix)

    def hparams(self, hparam_dict: dict, metrics: dict, step: int) -> None:
        self.each("hparams", hparam_dict, metrics, step)

    def epoch(self, record: dict, step: int) -> None:
        """One epoch's history record (the row ``metrics.json`` keeps), for the loggers that
        keep whole rows (csv)."""
        self.each("epoch", record, step)

    def close(self) -> None:
        loggers, self.loggers = self.loggers, {}
        for name, logger in loggers.items():
            try:
                logger.close()
            except Exception as e:  # noqa: BLE001
                log.warning("logger %s could not be closed: %s", name, e)


def labels_ok(tags, notes=None) -> bool:
    """Whether ``tags`` and ``notes`` are what :func:`run_labels` accepts."""
    try:
        run_labels({"tags": tags, "notes": notes})
    except UserError:
        return False
    return True


def label_rules() -> dict:
    """The rules of the top-level keys ``tags`` and ``notes`` (for the config check that runs
    before any data is read, ``vae_train.config``)."""
    from vae_train.checks import Rule

    return {"tags": Rule(lambda v: labels_ok(v), "a list of labels: tags=[baseline,v2] "
                         "(letters, digits, _ . - / and spaces, 1 to 64 characters each)"),
            "notes": Rule(lambda v: labels_ok([], v), "null or one string: "
                          "notes=\"a sentence\" (quoted for the shell)")}


def run_labels(cfg) -> tuple[list[str], str | None]:
    """The run's ``tags`` (a list of short labels) and ``notes`` (a sentence or null), checked:
    one line when they are of the wrong kind."""
    tags = cfg.get("tags") if cfg is not None else None
    notes = cfg.get("notes") if cfg is not None else None
    if OmegaConf.is_config(tags):
        tags = OmegaConf.to_container(tags, resolve=True)
    if tags is None:
        tags = []
    elif isinstance(tags, (str, int, float)) and not isinstance(tags, bool):
        tags = [tags]
    if not isinstance(tags, list):
        raise UserError(f"tags={tags!r} is invalid: it must be a list of labels, e.g. "
                        "tags=[baseline,v2]")
    out: list[str] = []
    for tag in tags:
        if isinstance(tag, bool) or not isinstance(tag, (str, int, float)):
            raise UserError(f"tags: {tag!r} is not a label; give tags=[word,word] (letters, "
                            "digits, _ . - / and spaces, at most 64 characters each)")
        tag = str(tag).strip()
        if not TAG.fullmatch(tag):
            raise UserError(f"tags: {tag!r} is not a label: use letters, digits, _ . - / and "
                            "spaces, 1 to 64 characters (several tags: tags=[a,b])")
        if tag not in out:
            out.append(tag)
    if OmegaConf.is_config(notes) or isinstance(notes, (list, dict)):
        raise UserError("notes is invalid: it must be one string, e.g. notes=\"beta 4, longer "
                        "warm-up\" (quoted for the shell)")
    if notes is not None:
        notes = str(notes).strip() or None
    return out, notes


def logger_specs(cfg) -> list[tuple[str, type, dict]]:
    """(name, class, options) of each logger the ``logger`` node selects, checked without
    building anything: each names a class that exists, its options are ones the class takes,
    and the package it needs is installed (one line otherwise)."""
    from vae_train.checks import check_values, keyword_options, locate, rules_of

    node = cfg.get("logger") if cfg is not None else None
    if node is None:
        return []
    if not OmegaConf.is_dict(node):
        raise UserError(f"logger={OmegaConf.to_container(node) if OmegaConf.is_config(node) else node}"
                        " is invalid: choose loggers by name, e.g. logger=csv or "
                        "logger=[tensorboard,csv] (logger=[]: none)")
    specs = []
    for name, sub in node.items():
        if sub is None:                        # logger.<name>=null: that one switched off
            continue
        if not OmegaConf.is_dict(sub) or not sub.get("_target_"):
            raise UserError(f"logger.{name} is invalid: a logger is a node with a _target_ "
                            "naming its class (configs/logger/*.yaml)")
        options = OmegaConf.to_container(sub, resolve=True)
        target = str(options.pop("_target_"))
        cls = locate(target, f"logger.{name}._target_")
        if not callable(cls):
            raise UserError(f"logger.{name}._target_={target} is not a class")
        needs = getattr(cls, "requires", None)
        if needs and importlib.util.find_spec(needs[0]) is None:
            raise UserError(f"logger={name} needs the {needs[0]} package: pip install "
                            f"'vae-train[{needs[1]}]'")
        known = keyword_options(cls, skip=1, exclude=(*RUN_ARGS, "enabled"))   # (run_dir)
        unknown = [k for k in options if known is not None and k not in known]
        if unknown:
            raise UserError(f"logger.{name}.{unknown[0]} is not an option of logger {name}; "
                            f"its options: {', '.join(known) or 'none'}")
        if isinstance(cls, type):
            check_values(f"logger.{name}", rules_of(cls), options)
            if not any(callable(getattr(cls, m, None)) for m in METHODS):
                raise UserError(f"logger.{name}: {target} has none of the logger methods "
                                f"({', '.join(METHODS)}); see docs/logging.md")
        check = getattr(cls, "check_options", None)
        if callable(check):                       # what involves two options (csv's files)
            check(options)
        check = getattr(cls, "check_labels", None)
        if callable(check):                       # the tags this logger cannot keep (mlflow)
            check(*run_labels(cfg), options)
        specs.append((name, cls, options))
    return specs


def make_loggers(cfg, run_dir, enabled: bool = True) -> Loggers:
    """The run's loggers (the ``logger`` node) as one :class:`Loggers`. Checked on every
    process (a bad option or a missing package is one line before training starts); built
    only where ``enabled`` (rank 0): elsewhere it holds no logger."""
    tags, notes = run_labels(cfg)
    specs = logger_specs(cfg)
    if not enabled or not specs:
        return Loggers()
    run_args = {"tags": tags, "notes": notes, "hparams": hparams_of(cfg),
                "resume": bool(cfg.get("resume"))}
    built: dict = {}
    try:
        for name, cls, options in specs:
            params = inspect.signature(cls).parameters
            takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
            extra = {k: v for k, v in run_args.items() if takes_any or k in params}
            built[name] = cls(Path(run_dir), **extra, **options)
    except BaseException:
        Loggers(built).close()
        raise
    return Loggers(built)


def hparams_of(cfg: DictConfig) -> dict:
    """The run's chosen options for the hyperparameter tables (TensorBoard's HPARAMS tab,
    W&B's config, MLflow's parameters): group choices, the usual knobs, and every key
    overridden on the command line (where the run's loggers go, its tags and notes aside)."""
    from hydra.core.hydra_config import HydraConfig

    from vae_train.argv import SWEEP_GROUPS, override_key

    out: dict = {}

    def not_a_hparam(key: str) -> bool:
        return key in ("resume", "dataset.root", "tags", "notes", "logger") \
            or key.startswith("logger.")

    try:
        hc = HydraConfig.get()
        out.update({g: c for g, c in hc.runtime.choices.items()
                    if not g.startswith("hydra") and g not in SWEEP_GROUPS
                    and not not_a_hparam(g) and isinstance(c, str)})
        keys = [override_key(o) for o in hc.overrides.task]
    except ValueError:
        keys = []
    keys = ["model.latent_dim", "loss.beta", "optimizer.lr", "trainer.batch_size",
            "trainer.epochs", "seed", "dataset.binarize", "device.precision", *keys]
    for key in keys:
        if not_a_hparam(key) or key in out:
            continue
        value = OmegaConf.select(cfg, key, default=None)
        if key == "device.precision":  # 32 and bf16 in one column: keep one type
            value = str(value)
        if isinstance(value, (bool, int, float, str)):
            out[key] = value
        elif value is not None:
            out[key] = str(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)
    return out
