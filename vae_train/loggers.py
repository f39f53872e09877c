"""The loggers besides TensorBoard: ``csv`` (``metrics.csv`` in the run directory), ``wandb``
(Weights & Biases, offline by default) and ``mlflow`` (a local file store by default).

Each is built by :func:`vae_train.logging.make_loggers` from its node of the ``logger`` group
and takes the calls of :class:`vae_train.logging.Loggers`. wandb and mlflow are optional
packages (the extras ``vae-train[wandb]``, ``vae-train[mlflow]``), imported when their logger is
built, never before. The ids of a run's W&B and MLflow runs are kept in ``loggers.json`` in
the run directory, so ``resume=`` continues the same W&B/MLflow run."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import posixpath
import time
import uuid
from pathlib import Path

from vae_train.checks import BOOLEAN, Checked, Rule, one_of, optional
from vae_train.errors import UserError
from vae_train.files import write_bytes, write_json

log = logging.getLogger(__name__)

IDS = "loggers.json"        # the W&B and MLflow run ids of this run directory
NAME = Rule(lambda v: isinstance(v, str) and v.strip() != "" and "/" not in v
            and "\\" not in v and v not in (".", ".."), "a file name (no folders)")
# What a run directory holds besides the csv logger's files: its name may be none of these.
RUN_FILES = ("metrics.json", "loggers.json", "train.log", "data_stats.json", "checkpoints",
             "wandb", "samples.png", "reconstructions.png")


def own_file(name: str) -> str:
    """Why a file name of the csv logger is a file the run itself writes ("" when it is not)."""
    if name in RUN_FILES or name.startswith("."):
        return f"the run's own {name}"
    if name.startswith("eval") and name.endswith(".json"):
        return f"a file of evaluate ({name})"
    if name.startswith("events.out.tfevents"):
        return "a TensorBoard event file"
    return ""


CSV_NAME = Rule(lambda v: NAME.ok(v) and own_file(v) == "",
                "a file name (no folders) that is not one of the run's own files (metrics.json, "
                "loggers.json, train.log, eval*.json, data_stats.json, a name starting with '.')")
TEXT = Rule(lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string")


def read_ids(run_dir: Path) -> dict:
    """The logger run ids kept in the run directory ({} when none or unreadable)."""
    try:
        ids = json.loads((Path(run_dir) / IDS).read_text())
    except (OSError, ValueError):
        return {}
    return ids if isinstance(ids, dict) else {}


def keep_id(run_dir: Path, name: str, value: dict) -> None:
    write_json(Path(run_dir) / IDS, {**read_ids(run_dir), name: value})


def hwc_uint8(img):
    """A (C, H, W) image tensor in [0, 1] (or uint8) as an (H, W[, C]) uint8 array."""
    import torch

    img = torch.as_tensor(img).detach().cpu()
    if img.dtype != torch.uint8:
        img = (img.float().clamp(0, 1) * 255).round().to(torch.uint8)
    array = img.permute(1, 2, 0).numpy()
    return array[:, :, 0] if array.shape[2] == 1 else array


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)             # every digit: the CSV reads back the value metrics.json has
    return str(v)


class CSVLogger(Checked):
    """``metrics.csv``: one row per epoch with every term of the history record (epoch, step,
    lr, skipped steps, ``train_*`` with seconds and speed, ``val_*``), then one row of the test
    metrics of the best weights (``epoch`` empty). A column that appears later (a term first
    reported in a later stage) is added to the header and the file rewritten, so the header
    is always the first line and complete. Resumed, the rows of the epochs that are run again
    are replaced. ``hparams.yaml`` beside it: tags, notes, hyperparameters, final metrics."""

    config_group = "logger.csv"
    checks = {"filename": CSV_NAME, "hparams_file": optional(CSV_NAME, "null or " + CSV_NAME.what)}

    @staticmethod
    def check_options(options: dict) -> None:
        """What the rules of one option cannot see: the two files are two."""
        filename = options.get("filename", "metrics.csv")
        if options.get("hparams_file", "hparams.yaml") == filename:
            raise UserError(f"logger.csv.hparams_file={filename} is invalid: it is "
                            "logger.csv.filename too; give the two files different names")

    def __init__(self, run_dir, tags=(), notes: str | None = None, resume: bool = False,
                 filename: str = "metrics.csv", hparams_file: str | None = "hparams.yaml"):
        self.path = Path(run_dir) / filename
        self.hparams_path = Path(run_dir) / hparams_file if hparams_file else None
        self.tags, self.notes = list(tags or ()), notes
        self.columns: list[str] = []
        self.rows: list[dict] = []
        if resume and self.path.is_file():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or [])
                self.rows = [dict(r) for r in reader]
        else:
            self.rewrite()
        self.write_hparams({}, {})

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        """Per-step scalars are TensorBoard's; the table has one row per epoch (see epoch)."""

    def images(self, figs: dict, step: int, prefix: str = "images") -> None:
        """A table holds no pictures (every run writes its PNGs into the run directory)."""

    def epoch(self, record: dict, step: int) -> None:
        epoch = int(record["epoch"])
        kept = [r for r in self.rows if str(r.get("epoch", "")).strip().isdigit()
                and int(r["epoch"]) < epoch]
        self.add(record, replace=len(kept) != len(self.rows), rows=kept)

    def hparams(self, hparam_dict: dict, metrics: dict, step: int) -> None:
        """The last row: the run's final metrics (test terms, best validation loss)."""
        self.add({"epoch": None, "step": step, **metrics}, replace=False, rows=self.rows)
        self.write_hparams(hparam_dict, metrics)

    def add(self, row: dict, replace: bool, rows: list[dict]) -> None:
        new = [k for k in row if k not in self.columns]
        self.columns += new
        self.rows = [*rows, {k: _cell(v) for k, v in row.items()}]
        if new or replace or not self.path.is_file():
            self.rewrite()
            return
        buf = io.StringIO()
        csv.DictWriter(buf, self.columns, lineterminator="\n").writerow(self.rows[-1])
        with open(self.path, "a", newline="") as f:
            f.write(buf.getvalue())

    def rewrite(self) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, self.columns, lineterminator="\n", restval="")
        if self.columns:
            w.writeheader()
        w.writerows(self.rows)
        write_bytes(self.path, buf.getvalue().encode())

    def write_hparams(self, hparam_dict: dict, metrics: dict) -> None:
        if self.hparams_path is None:
            return
        import yaml

        record = {"tags": self.tags, "notes": self.notes, "hparams": dict(hparam_dict),
                  "metrics": {k: (float(v) if math.isfinite(float(v)) else None)
                              for k, v in metrics.items() if isinstance(v, (int, float))}}
        write_bytes(self.hparams_path, yaml.safe_dump(record, sort_keys=False).encode())

    def close(self) -> None:
        """Every row is on disk when it is added: nothing to flush."""


def _settings(wandb, **wanted):
    """wandb.Settings with the fields this version of wandb knows."""
    known = getattr(wandb.Settings, "model_fields", None)
    return wandb.Settings(**{k: v for k, v in wanted.items() if known is None or k in known})


class WandbLogger(Checked):
    """Weights & Biases: scalars as ``<prefix>/<term>`` at the optimizer step, image grids,
    the hyperparameters as the run's config, the final metrics in its summary, the tags and
    notes as W&B's own. Offline (the default) the run is written under ``<run dir>/wandb/``
    (``wandb sync`` uploads it later); online needs ``wandb login``."""

    config_group = "logger.wandb"
    requires = ("wandb", "wandb")    # (module, extra)
    checks = {"mode": one_of("offline", "online", "disabled"), "project": TEXT,
              "entity": optional(TEXT, "null or a team/user name"),
              "name": optional(TEXT, "null or a run name"),
              "group": optional(TEXT, "null or a group name"), "job_type": optional(TEXT),
              "images": BOOLEAN}

    def __init__(self, run_dir, tags=(), notes: str | None = None, hparams: dict | None = None,
                 resume: bool = False, mode: str = "offline", project: str = "vae-train",
                 entity: str | None = None, name: str | None = None, group: str | None = None,
                 job_type: str | None = "train", images: bool = True):
        import wandb

        run_dir = Path(run_dir)
        self.wandb, self.send_images, self.finished = wandb, images, False
        previous = read_ids(run_dir).get("wandb") if resume else None
        run_id = previous.get("id") if isinstance(previous, dict) else None
        try:
            self.run = wandb.init(
                dir=str(run_dir), mode=mode, project=project, entity=entity,
                name=name or run_dir.name, group=group, job_type=job_type, tags=list(tags or ()),
                notes=notes, config=dict(hparams or {}), id=run_id or uuid.uuid4().hex[:12],
                resume="allow", settings=_settings(wandb, console="off", silent=True,
                                                   x_disable_stats=True, save_code=False))
        except Exception as e:  # noqa: BLE001 - wandb's own errors (login, network, files)
            raise UserError(f"logger=wandb could not start a run (mode={mode}): "
                            f"{(str(e).strip().splitlines() or [type(e).__name__])[0]}"
                            + ("; run `wandb login` first, or use logger.wandb.mode=offline"
                               if mode == "online" else "")) from None
        keep_id(run_dir, "wandb", {"id": self.run.id, "project": project, "mode": mode,
                                   "dir": str(self.run.dir)})
        if mode == "offline":
            log.info("wandb: offline run %s; upload it with: wandb sync %s", self.run.id,
                     Path(self.run.dir).parent)

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        self.run.log({f"{prefix}/{k}": float(v) for k, v in values.items()}, step=int(step))

    def images(self, figs: dict, step: int, prefix: str = "images") -> None:
        if self.send_images and figs:
            self.run.log({f"{prefix}/{k}": self.wandb.Image(hwc_uint8(v))
                          for k, v in figs.items()}, step=int(step))

    def hparams(self, hparam_dict: dict, metrics: dict, step: int) -> None:
        self.run.config.update(dict(hparam_dict), allow_val_change=True)
        self.run.summary.update({k: float(v) for k, v in metrics.items()
                                 if isinstance(v, (int, float))})
        self.finished = True

    def close(self) -> None:
        run, self.run = self.run, None
        if run is not None:
            run.finish(exit_code=0 if self.finished else 1)


def kept_old(run_id: str, logged: dict, hparams: dict) -> None:
    """One line naming the parameters a resumed MLflow run keeps at their first values
    (MLflow's parameters cannot change; metrics.json and hparams.yaml have the new ones)."""
    changed = [f"{k} {logged[str(k)]} (now {str(v)[:500]})" for k, v in hparams.items()
               if str(k) in logged and logged[str(k)] != str(v)[:500]]
    if changed:
        log.info("logger mlflow: run %s keeps the first values of %d changed parameter(s), "
                 "as MLflow parameters cannot change: %s", run_id, len(changed),
                 "; ".join(changed[:5]) + ("; ..." if len(changed) > 5 else ""))


def store_uri(uri: str | None) -> str | None:
    """``file:outputs/mlruns`` (or a bare path) as an absolute ``file:`` URI; others as
    given (a server, ``sqlite:///...``; None: MLflow's own default)."""
    if uri is None:
        return None
    uri = str(uri)
    if uri.startswith("file:") and not uri.startswith("file://"):
        return Path(uri[len("file:"):]).expanduser().resolve().as_uri()
    if "://" not in uri and not uri.startswith(("sqlite:", "databricks", "postgresql:",
                                                "mysql:", "mssql:")):
        return Path(uri).expanduser().resolve().as_uri()
    return uri


class MLflowLogger(Checked):
    """MLflow: scalars as ``<prefix>/<term>`` metrics at the optimizer step, image grids as
    artifacts, the hyperparameters as parameters, the final metrics, each tag as a run tag
    (``tags.<tag> = 'true'``) and the notes as the run's description (``mlflow.note.content``).
    The default store is the folder ``outputs/mlruns`` of the working directory, shared by the
    runs started there (MLflow >= 3 calls file stores deprecated; this logger allows it with
    ``MLFLOW_ALLOW_FILE_STORE=true`` for its own process)."""

    config_group = "logger.mlflow"
    requires = ("mlflow", "mlflow")

    @staticmethod
    def check_labels(tags: list, notes: str | None, options: dict) -> None:
        """Tags MLflow cannot hold as tag keys, refused before the run starts: MLflow's own
        (``mlflow.*``), this logger's, a key that is not a clean path, and (a file store keeps
        each tag as a file) one tag that is a folder of another."""
        for tag in tags:
            if tag.startswith("mlflow.") or tag == "vae_train.run_dir":
                raise UserError(f"tags: {tag!r} is a tag MLflow or vae-train sets itself; "
                                "logger=mlflow needs another name for it")
            if posixpath.normpath(tag) != tag or tag.startswith(("/", "..")):
                raise UserError(f"tags: {tag!r} is not a tag logger=mlflow can keep: no "
                                "leading, trailing or doubled '/', no '.' or '..' parts")
            uri = store_uri(options.get("tracking_uri", "file:outputs/mlruns"))
            if uri is None or uri.startswith("file:"):
                clash = [t for t in tags if t.startswith(tag + "/")]
                if clash:
                    raise UserError(f"tags: {tag!r} and {clash[0]!r}: MLflow's file store "
                                    f"keeps a tag as a file, so {tag!r} cannot also be a folder; "
                                    "rename one of them (e.g. with '-' for '/')")
    checks = {"tracking_uri": optional(TEXT, "null or a tracking URI (file:outputs/mlruns)"),
              "experiment_name": TEXT, "run_name": optional(TEXT, "null or a run name"),
              "images": BOOLEAN}

    def __init__(self, run_dir, tags=(), notes: str | None = None, hparams: dict | None = None,
                 resume: bool = False, tracking_uri: str | None = "file:outputs/mlruns",
                 experiment_name: str = "vae-train", run_name: str | None = None,
                 images: bool = True):
        uri = store_uri(tracking_uri)
        if uri is not None and uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        run_dir = Path(run_dir)
        self.send_images, self.finished, self.run_id = images, False, None
        try:
            self.client = MlflowClient(tracking_uri=uri)
            experiment = self.client.get_experiment_by_name(experiment_name)
            if experiment is None:
                try:
                    experiment_id = self.client.create_experiment(experiment_name)
                except Exception:  # noqa: BLE001 - another job of the sweep made it first
                    experiment = self.client.get_experiment_by_name(experiment_name)
                    if experiment is None:
                        raise
                    experiment_id = experiment.experiment_id
            else:
                experiment_id = experiment.experiment_id
            previous = read_ids(run_dir).get("mlflow") if resume else None
            run_tags = {str(t): "true" for t in tags or ()}
            if notes:
                run_tags["mlflow.note.content"] = notes
            if (isinstance(previous, dict) and previous.get("tracking_uri") == uri
                    and previous.get("experiment_id") == experiment_id):
                self.run_id = str(previous["run_id"])
                self.client.update_run(self.run_id, status="RUNNING")
                for key, value in run_tags.items():   # tags and notes given on resume
                    self.client.set_tag(self.run_id, key, value)
                before = dict(self.client.get_run(self.run_id).data.params)
                self.params = self.log_params(hparams or {}, before)
                kept_old(self.run_id, before, hparams or {})
            else:
                run_tags["vae_train.run_dir"] = str(run_dir.resolve())
                self.run_id = self.client.create_run(
                    experiment_id, tags=run_tags, run_name=run_name or run_dir.name).info.run_id
                self.params = self.log_params(hparams or {})
        except Exception as e:  # noqa: BLE001 - the store is unreachable or unreadable
            if self.run_id is not None:   # started half-way: not left RUNNING for ever
                try:
                    self.client.set_terminated(self.run_id, status="FAILED")
                except Exception:  # noqa: BLE001 - the store is what failed
                    pass
            raise UserError(f"logger=mlflow could not start a run in {uri or 'the default store'}"
                            f": {(str(e).strip().splitlines() or [type(e).__name__])[0]}"
                            ) from None
        keep_id(run_dir, "mlflow", {"run_id": self.run_id, "experiment_id": experiment_id,
                                    "tracking_uri": uri})

    def log_params(self, hparams: dict, logged: dict | None = None) -> dict:
        """Parameters not logged before (MLflow refuses to change one); returns all logged."""
        from mlflow.entities import Param

        logged = dict(logged or {})
        new = [Param(str(k), str(v)[:500]) for k, v in hparams.items() if str(k) not in logged]
        if new:
            self.client.log_batch(self.run_id, params=new)
            logged.update({p.key: p.value for p in new})
        return logged

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            Metric(f"{prefix}/{k}", float(v), now, int(step)) for k, v in values.items()])

    def images(self, figs: dict, step: int, prefix: str = "images") -> None:
        if not self.send_images:
            return
        for name, img in figs.items():
            self.client.log_image(self.run_id, hwc_uint8(img),
                                  artifact_file=f"{prefix}/{name}/step_{int(step):08d}.png")

    def hparams(self, hparam_dict: dict, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        self.params = self.log_params(hparam_dict, self.params)
        now = int(time.time() * 1000)
        final = [Metric(str(k), float(v), now, int(step)) for k, v in metrics.items()
                 if isinstance(v, (int, float))]
        if final:
            self.client.log_batch(self.run_id, metrics=final)
        self.finished = True

    def close(self) -> None:
        run_id, self.run_id = self.run_id, None
        if run_id is not None:
            self.client.set_terminated(run_id, status="FINISHED" if self.finished else "FAILED")
