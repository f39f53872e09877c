"""The ``logger=`` group: TensorBoard, csv, wandb (offline) and mlflow (a file store), one or
several at once or none; the run's tags and notes in every logger, metrics.json and the sweep
report; a missing package or a bad option is one line; a logger that fails mid-run is dropped
with one warning and the run goes on."""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf, open_dict

from conftest import TINY, compose_cfg, run_cli
from vae_train.errors import UserError
from vae_train.logging import Loggers, make_loggers, run_labels

HAS_WANDB = importlib.util.find_spec("wandb") is not None
HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None
needs_wandb = pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed "
                                 "(pip install -e '.[wandb]')")
needs_mlflow = pytest.mark.skipif(not HAS_MLFLOW, reason="mlflow is not installed "
                                  "(pip install -e '.[mlflow]')")
LABELS = ["tags=[baseline,beta 4]", "notes='longer warm-up, same data'"]


def train(run_dir: Path, overrides) -> tuple[dict, object]:
    """What ``python -m vae_train`` does, in this process (no interpreter start-up): build,
    fit, test, report through the loggers ``make_loggers`` builds; (metrics, cfg)."""
    from vae_train.build import build
    from vae_train.training import state
    from vae_train.training.trainer import Trainer

    cfg = compose_cfg([*TINY, "dataset.num_train=400", "dataset.num_test=100",
                       "trainer.epochs=2", *overrides])
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    dm, objective, model = build(cfg, cpu)
    run_dir.mkdir(parents=True, exist_ok=True)
    loggers = make_loggers(cfg, run_dir)
    try:
        tr = Trainer(cfg, model, objective, dm, cpu, None, run_dir, loggers)
        tr.fit()
        best = state.load_best(tr)
        test = tr.evaluate(dm.test)
        metrics = tr.report.run_end(tr, cfg, run_dir, model, test, best,
                                    sum(p.numel() for p in model.parameters()), cpu, 1)
    finally:
        loggers.close()
    return metrics, cfg


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


@pytest.fixture(scope="module")
def tb_csv_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("loggers") / "tb_csv"
    metrics, _ = train(run, ["logger=[tensorboard,csv]", *LABELS])
    return run, metrics


# -- csv ---------------------------------------------------------------------------------------
def test_csv_has_one_row_per_epoch_with_every_term_then_the_test_row(tb_csv_run):
    run, metrics = tb_csv_run
    columns, rows = read_csv(run / "metrics.csv")
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert len(history) == 2 and len(rows) == 3
    assert columns[:3] == ["epoch", "step", "lr"]
    assert set(history[0]) <= set(columns), set(history[0]) - set(columns)
    for rec, row in zip(history, rows):          # every value as metrics.json has it
        for key, value in rec.items():
            assert float(row[key]) == value or (math.isnan(value) and row[key] == "nan"), key
    assert {"train_loss", "train_seconds", "train_images_per_sec", "val_loss", "val_kl"} \
        <= set(columns)
    last = rows[-1]                               # the test metrics of the best weights
    assert last["epoch"] == "" and int(last["step"]) == metrics["steps"]
    assert float(last["test_loss"]) == metrics["test_loss"]
    assert float(last["best_val_loss"]) == metrics["best_val_loss"]
    assert all(r["test_loss"] == "" for r in rows[:-1])
    text = (run / "metrics.csv").read_text()
    assert text.count("epoch,step,lr") == 1       # the header once, at the top
    info = yaml.safe_load((run / "hparams.yaml").read_text())
    assert info["tags"] == ["baseline", "beta 4"] and info["notes"].startswith("longer warm")
    assert info["hparams"]["model.latent_dim"] == 20 and info["hparams"]["trainer.epochs"] == 2
    assert info["metrics"]["test_loss"] == pytest.approx(metrics["test_loss"])


def test_csv_adds_a_late_column_to_the_header_and_replaces_rows_run_again(tmp_path):
    from vae_train.loggers import CSVLogger

    lg = CSVLogger(tmp_path, hparams_file=None)
    lg.epoch({"epoch": 1, "step": 10, "val_loss": 5.0}, 10)
    lg.epoch({"epoch": 2, "step": 20, "val_loss": 4.0}, 20)
    lg.epoch({"epoch": 3, "step": 30, "val_loss": 3.0, "val_kl_1": 0.5}, 30)   # a new term
    columns, rows = read_csv(tmp_path / "metrics.csv")
    assert columns == ["epoch", "step", "val_loss", "val_kl_1"]
    assert [r["val_kl_1"] for r in rows] == ["", "", "0.5"]
    assert not (tmp_path / "hparams.yaml").exists()
    # resumed from the checkpoint of epoch 1: epochs 2 and 3 are run again and replace theirs
    lg = CSVLogger(tmp_path, resume=True, hparams_file=None)
    lg.epoch({"epoch": 2, "step": 20, "val_loss": 3.5}, 20)
    columns, rows = read_csv(tmp_path / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[1]["val_loss"] == "3.5"
    assert columns == ["epoch", "step", "val_loss", "val_kl_1"]
    # a fresh start in the same folder starts a new table
    lg = CSVLogger(tmp_path, hparams_file=None)
    lg.epoch({"epoch": 1, "step": 10, "loss": 1.0}, 10)
    assert read_csv(tmp_path / "metrics.csv") == (["epoch", "step", "loss"],
                                                  [{"epoch": "1", "step": "10", "loss": "1.0"}])


# -- TensorBoard -------------------------------------------------------------------------------
def test_tensorboard_beside_csv_has_scalars_images_hparams_tags_and_notes(tb_csv_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = tb_csv_run
    ea = EventAccumulator(str(run), size_guidance={"tensors": 0, "scalars": 0}).Reload()
    tags = ea.Tags()
    for tag in ("train/loss", "val/loss", "test/loss", "opt/lr", "hparam/test_loss"):
        assert tag in tags["scalars"], tag
    assert len(ea.Scalars("val/loss")) == 2
    assert any(t.startswith("images/") for t in tags["images"])
    text = {t: ea.Tensors(t)[0].tensor_proto.string_val[0].decode() for t in tags["tensors"]
            if t.startswith("run/")}
    assert text == {"run/tags/text_summary": "baseline, beta 4",
                    "run/notes/text_summary": "longer warm-up, same data"}
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = ea.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["tags"].string_value == "baseline, beta 4"
    assert start.hparams["model.latent_dim"].number_value == 20
    assert start.hparams["notes"].string_value == "longer warm-up, same data"


# -- tags and notes in metrics.json and the sweep report ---------------------------------------
def test_tags_and_notes_reach_metrics_json_and_the_sweep_report(tb_csv_run, tmp_path):
    from vae_train.report import report

    run, _ = tb_csv_run
    m = json.loads((run / "metrics.json").read_text())
    assert m["tags"] == ["baseline", "beta 4"] and m["notes"] == "longer warm-up, same data"
    sweep = run.parent
    # a run that failed before metrics.json: its labels come from its composed config
    failed = sweep / "failed_run"
    (failed / ".hydra").mkdir(parents=True)
    (failed / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
        {"tags": ["ablation"], "notes": "a | pipe"}))
    (failed / "failed.json").write_text(json.dumps({"status": "failed", "error": "diverged"}))
    (run / ".hydra").mkdir(exist_ok=True)
    result = report(sweep, out=tmp_path / "all")
    with open(tmp_path / "all" / "report.csv", newline="") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert rows["tb_csv"]["tags"] == "baseline, beta 4"
    assert rows["tb_csv"]["notes"] == "longer warm-up, same data"
    assert rows["failed_run"]["tags"] == "ablation" and rows["failed_run"]["status"] == "failed"
    md = (tmp_path / "all" / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| run"))
    assert header.endswith("| tags | notes |")
    assert "| baseline, beta 4 | longer warm-up, same data |" in md
    assert len(result["runs"]) == 2
    # filtered by a tag: only the runs that carry it
    only = report(sweep, out=tmp_path / "ablation", tag="ablation")
    assert [r["run"] for r in only["runs"]] == ["failed_run"]
    with pytest.raises(UserError, match="tag=nothing: no run .* its tags: ablation, "
                                        "baseline, beta 4"):
        report(sweep, out=tmp_path / "none", tag="nothing")


def test_tags_and_notes_are_checked():
    assert run_labels(OmegaConf.create({"tags": "solo", "notes": None})) == (["solo"], None)
    assert run_labels(OmegaConf.create({"tags": [1, "a", "a"], "notes": 3})) == (["1", "a"], "3")
    with pytest.raises(UserError, match="tags: 'a,b' is not a label"):
        run_labels(OmegaConf.create({"tags": ["a,b"]}))
    with pytest.raises(UserError, match="tags: .* is not a label"):
        run_labels(OmegaConf.create({"tags": [["nested"]]}))
    with pytest.raises(UserError, match="notes is invalid: it must be one string"):
        run_labels(OmegaConf.create({"notes": ["x"]}))


# -- choosing loggers --------------------------------------------------------------------------
def test_no_logger_writes_no_events_file(tmp_path):
    metrics, cfg = train(tmp_path / "run", ["logger=[]"])
    assert "logger" not in cfg
    assert metrics["test_loss"] > 0 and (tmp_path / "run" / "metrics.json").is_file()
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_only_rank_zero_builds_loggers(tmp_path):
    cfg = compose_cfg(["logger=[tensorboard,csv]"])
    loggers = make_loggers(cfg, tmp_path, enabled=False)
    assert len(loggers) == 0 and not list(tmp_path.iterdir())
    loggers.scalars("train", {"loss": 1.0}, 1)          # calls are harmless
    loggers.close()
    loggers = make_loggers(cfg, tmp_path)
    assert loggers.names == ["tensorboard", "csv"]
    loggers.close()


def test_a_missing_package_is_one_line(monkeypatch, tmp_path):
    for name in ("wandb", "mlflow"):
        monkeypatch.setitem(sys.modules, name, None)    # as if it were not installed
        with pytest.raises(UserError) as e:
            make_loggers(compose_cfg([f"logger=[csv,{name}]"]), tmp_path, enabled=False)
        assert str(e.value) == (f"logger={name} needs the {name} package: pip install "
                                f"'vae-train[{name}]'")
    assert not list(tmp_path.iterdir())                 # refused before anything was built


@pytest.mark.parametrize("override, message", [
    ("+logger.csv.colour=red", "logger.csv.colour is not an option of logger csv; its "
                               "options: filename, hparams_file"),
    ("logger.csv.filename=a/b.csv", "logger.csv.filename='a/b.csv' is invalid: it must be a "
                                    "file name"),
    ("logger.wandb.mode=sometimes", "logger.wandb.mode='sometimes' is invalid: it must be one "
                                    "of offline, online, disabled"),
    ("+logger.mine._target_=no.such.Logger", "logger.mine._target_=no.such.Logger cannot be "
                                             "found"),
    ("+logger.mine=3", "logger.mine is invalid: a logger is a node with a _target_"),
])
def test_a_bad_logger_option_is_one_line(override, message, tmp_path):
    cfg = compose_cfg(["logger=[csv,wandb]", override])
    with pytest.raises(UserError) as e:
        make_loggers(cfg, tmp_path, enabled=False)
    assert str(e.value).startswith(message.split(" one of")[0]), str(e.value)
    assert "\n" not in str(e.value)


class Recorder:
    """A user's own logger (selected by _target_ like ours); fails on ``val`` scalars when
    told to."""

    calls: list = []

    def __init__(self, run_dir, tags=(), fail: bool = False):
        self.fail, self.tags = fail, list(tags)
        Recorder.calls.append(("init", self.tags))

    def scalars(self, prefix, values, step):
        if self.fail and prefix == "val":
            raise OSError("connection lost")
        Recorder.calls.append((prefix, step))

    def images(self, figs, step, prefix="images"):
        Recorder.calls.append((prefix, sorted(figs)))

    def hparams(self, hparam_dict, metrics, step):
        Recorder.calls.append(("hparams", sorted(metrics)))

    def close(self):
        Recorder.calls.append(("close",))


def test_a_failing_logger_is_dropped_with_one_warning_and_the_run_goes_on(tmp_path, caplog):
    Recorder.calls = []
    cfg = compose_cfg(["logger=[csv]", "tags=[mine]"])
    with open_dict(cfg):
        cfg.logger.broken = {"_target_": "test_loggers.Recorder", "fail": True}
    loggers = make_loggers(cfg, tmp_path)
    assert loggers.names == ["csv", "broken"] and Recorder.calls == [("init", ["mine"])]
    with caplog.at_level(logging.WARNING, logger="vae_train.logging"):
        loggers.scalars("train", {"loss": 1.0}, 5)
        loggers.scalars("val", {"loss": 2.0}, 5)          # raises: dropped
        loggers.scalars("val", {"loss": 2.0}, 6)
        loggers.epoch({"epoch": 1, "step": 6, "val_loss": 2.0}, 6)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["logger broken stopped: OSError: connection lost"]
    assert Recorder.calls == [("init", ["mine"]), ("train", 5), ("close",)]
    assert loggers.names == ["csv"]
    assert read_csv(tmp_path / "metrics.csv")[1] == [{"epoch": "1", "step": "6",
                                                      "val_loss": "2.0"}]
    loggers.close()


def test_a_single_logger_given_to_the_reporter_is_wrapped(tmp_path):
    from vae_train.logging import TBLogger
    from vae_train.training.reporting import Reporter

    rep = Reporter(TBLogger(tmp_path, enabled=False), OmegaConf.create({}), 0, None, None)
    assert isinstance(rep.tb, Loggers) and rep.tb.names == ["tensorboard"]
    rep.tb.scalars("train_step", {"loss": 1.0}, 1)      # the trainer's call
    rep.tb.close()


# -- wandb (offline) ---------------------------------------------------------------------------
def wandb_records(path: Path):
    """The records of an offline run's ``run-<id>.wandb`` file (W&B's own protobuf messages,
    in the block format of its transaction log)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:                      # the rest of a block is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        buf = chunk if kind in (1, 2) else buf + chunk   # full, first | middle, last
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec


@needs_wandb
def test_wandb_offline_run_holds_scalars_config_summary_tags_and_notes(tmp_path):
    run = tmp_path / "run"
    metrics, _ = train(run, ["logger=[wandb]", *LABELS])
    import wandb

    wandb.teardown()     # the W&B service writes the file out (as at the end of a process)
    ids = json.loads((run / "loggers.json").read_text())["wandb"]
    (offline,) = (run / "wandb").glob(f"offline-run-*-{ids['id']}")
    records = list(wandb_records(offline / f"run-{ids['id']}.wandb"))
    kinds = [r.WhichOneof("record_type") for r in records]
    start = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert list(start.tags) == ["baseline", "beta 4"] and start.notes.startswith("longer")
    assert start.project == "vae-train" and start.display_name == "run"
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    val = [h["val/loss"] for h in history if "val/loss" in h]
    logged = json.loads((run / "metrics.json").read_text())["history"]
    assert val == pytest.approx([h["val_loss"] for h in logged])
    assert any(k.startswith("images/") for h in history for k in h)
    config = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
              for r in records if r.WhichOneof("record_type") == "config" for i in r.config.update}
    assert config["model.latent_dim"] == 20 and config["trainer.epochs"] == 2
    summary = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
               for r in records if r.WhichOneof("record_type") == "summary"
               for i in r.summary.update}
    assert summary["test_loss"] == pytest.approx(metrics["test_loss"])
    assert "exit" in kinds                              # finished
    assert list((offline / "files" / "media").rglob("*.png"))


# -- mlflow (a file store) ---------------------------------------------------------------------
@needs_mlflow
def test_mlflow_file_store_holds_metrics_params_tags_notes_and_images(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)                         # the default store: ./outputs/mlruns
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)   # the logger allows it
    run = tmp_path / "run"
    metrics, _ = train(run, ["logger=[mlflow]", *LABELS])
    ids = json.loads((run / "loggers.json").read_text())["mlflow"]
    assert ids["tracking_uri"] == (tmp_path / "outputs" / "mlruns").as_uri()
    client = MlflowClient(tracking_uri=ids["tracking_uri"])
    got = client.get_run(ids["run_id"])
    assert got.info.status == "FINISHED" and got.info.run_name == "run"
    assert client.get_experiment(got.info.experiment_id).name == "vae-train"
    tags = got.data.tags
    assert tags["baseline"] == "true" and tags["beta 4"] == "true"
    assert tags["mlflow.note.content"] == "longer warm-up, same data"
    assert got.data.params["model.latent_dim"] == "20"
    assert got.data.params["trainer.epochs"] == "2"
    assert got.data.metrics["test_loss"] == pytest.approx(metrics["test_loss"])
    logged = json.loads((run / "metrics.json").read_text())["history"]
    val = client.get_metric_history(ids["run_id"], "val/loss")
    assert [m.value for m in sorted(val, key=lambda m: m.step)] == \
        pytest.approx([h["val_loss"] for h in logged])
    assert [m.step for m in sorted(val, key=lambda m: m.step)] == [h["step"] for h in logged]
    images = [a.path for a in client.list_artifacts(ids["run_id"], "images")]
    assert "images/reconstructions" in images


# -- the command line --------------------------------------------------------------------------
@pytest.mark.slow
def test_the_command_line_with_several_loggers_tags_and_notes(tmp_path):
    loggers = ["tensorboard", "csv", *(["wandb"] if HAS_WANDB else []),
               *(["mlflow"] if HAS_MLFLOW else [])]
    proc = run_cli([*TINY, "trainer.epochs=1", f"logger=[{','.join(loggers)}]",
                    "tags=[cli,v2]", "notes='from the shell'", "hydra.run.dir=run"], tmp_path)
    run = tmp_path / "run"
    assert json.loads((run / "metrics.json").read_text())["tags"] == ["cli", "v2"]
    assert list(run.glob("events.out.tfevents.*")) and (run / "metrics.csv").is_file()
    if HAS_WANDB:
        assert list((run / "wandb").glob("offline-run-*/run-*.wandb"))
        assert "wandb sync" in proc.stderr
    if HAS_MLFLOW:
        assert (tmp_path / "outputs" / "mlruns").is_dir()
    proc = run_cli([*TINY, "trainer.epochs=1", "logger=[csv]", "+logger.csv.colour=red",
                    "hydra.run.dir=bad"], tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: logger.csv.colour is not an option of logger csv" in proc.stderr


@pytest.mark.slow
def test_resume_continues_the_table_and_the_mlflow_and_wandb_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")   # reading the file store here
    loggers = ["csv", *(["wandb"] if HAS_WANDB else []), *(["mlflow"] if HAS_MLFLOW else [])]
    args = [*TINY, "dataset.num_train=600", "dataset.num_test=100", f"logger=[{','.join(loggers)}]"]
    run_cli([*args, "trainer.epochs=1", "hydra.run.dir=run"], tmp_path)
    run = tmp_path / "run"
    before = json.loads((run / "loggers.json").read_text()) if len(loggers) > 1 else {}
    run_cli(["resume=run", "trainer.epochs=3"], tmp_path)
    columns, rows = read_csv(run / "metrics.csv")
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in rows] == ["1", "2", "3", ""]      # the old test row is gone
    assert [float(r["val_loss"]) for r in rows[:3]] == [h["val_loss"] for h in history]
    after = json.loads((run / "loggers.json").read_text()) if len(loggers) > 1 else {}
    for name in ("wandb", "mlflow"):
        if name in before:
            key = "id" if name == "wandb" else "run_id"
            assert after[name][key] == before[name][key], name
    if HAS_MLFLOW:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=after["mlflow"]["tracking_uri"])
        assert [m.step for m in client.get_metric_history(after["mlflow"]["run_id"],
                                                           "val/loss")] == [h["step"] for h in history]
        assert client.get_run(after["mlflow"]["run_id"]).info.status == "FINISHED"


# -- review 17: the run's own files, loggers without methods, mlflow tags and resume -----------
@pytest.mark.parametrize("override, message", [
    ("logger.csv.filename=metrics.json", "logger.csv.filename='metrics.json' is invalid: it "
                                         "must be a file name (no folders) that is not one of "
                                         "the run's own files"),
    ("logger.csv.filename=loggers.json", "logger.csv.filename='loggers.json' is invalid"),
    ("logger.csv.filename=.lock", "logger.csv.filename='.lock' is invalid"),
    ("logger.csv.filename=train.log", "logger.csv.filename='train.log' is invalid"),
    ("logger.csv.filename=eval_dev.json", "logger.csv.filename='eval_dev.json' is invalid"),
    ("logger.csv.hparams_file=data_stats.json", "logger.csv.hparams_file='data_stats.json' is "
                                                "invalid: it must be null or a file name"),
    ("logger.csv.hparams_file=metrics.csv", "logger.csv.hparams_file=metrics.csv is invalid: "
                                            "it is logger.csv.filename too"),
    ("logger.csv.filename=checkpoints", "logger.csv.filename='checkpoints' is invalid"),
])
def test_csv_may_not_name_a_file_the_run_owns(override, message, tmp_path):
    with pytest.raises(UserError) as e:
        make_loggers(compose_cfg(["logger=csv", override]), tmp_path, enabled=False)
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value) and not list(tmp_path.iterdir())


class NoMethods:
    def __init__(self, run_dir, x=1):
        self.x = x


def test_a_logger_with_none_of_the_methods_is_refused(tmp_path):
    cfg = compose_cfg(["logger=[]"])
    with open_dict(cfg):
        cfg.logger = {"x": {"_target_": "test_loggers.NoMethods"}}
    with pytest.raises(UserError, match=r"^logger.x: test_loggers.NoMethods has none of the "
                                        r"logger methods \(scalars, images, hparams, epoch, "
                                        r"close\)"):
        make_loggers(cfg, tmp_path, enabled=False)


@needs_mlflow
@pytest.mark.parametrize("tags, message", [
    ("[a,a/b]", "tags: 'a' and 'a/b': MLflow's file store keeps a tag as a file"),
    ("[mlflow.runName]", "tags: 'mlflow.runName' is a tag MLflow or vae-train sets itself"),
    ("[a//b]", "tags: 'a//b' is not a tag logger=mlflow can keep"),
])
def test_mlflow_refuses_tags_it_cannot_keep_before_the_run(tags, message, tmp_path):
    cfg = compose_cfg(["logger=mlflow", f"tags={tags}",
                       f"logger.mlflow.tracking_uri=file:{tmp_path / 'store'}"])
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(")):
        make_loggers(cfg, tmp_path, enabled=False)
    assert not (tmp_path / "store").exists()
    compose_cfg(["logger=csv", f"tags={tags}"])          # other loggers keep them


@needs_mlflow
def test_mlflow_run_failing_half_way_through_its_start_ends_failed(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from vae_train.loggers import MLflowLogger

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file:{tmp_path / 'store'}"

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(MlflowClient, "log_batch", broken)
    with pytest.raises(UserError, match="logger=mlflow could not start a run in .*: disk full"):
        MLflowLogger(tmp_path / "run", hparams={"a": 1}, tracking_uri=uri)
    client = MlflowClient(tracking_uri=(tmp_path / "store").as_uri())
    runs = client.search_runs([client.get_experiment_by_name("vae-train").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


@needs_mlflow
def test_mlflow_resume_says_which_params_stay_and_sets_the_new_tags(tmp_path, monkeypatch,
                                                                      caplog):
    from mlflow.tracking import MlflowClient

    from vae_train.loggers import MLflowLogger

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri, run = f"file:{tmp_path / 'store'}", tmp_path / "run"
    run.mkdir()
    first = MLflowLogger(run, tags=["r"], hparams={"trainer.epochs": 2, "seed": 0},
                         tracking_uri=uri)
    run_id = first.run_id
    first.close()
    caplog.set_level("INFO", logger="vae_train.loggers")
    again = MLflowLogger(run, tags=["new"], notes="changed", resume=True,
                         hparams={"trainer.epochs": 4, "seed": 0, "loss.beta": 2},
                         tracking_uri=uri)
    assert again.run_id == run_id
    again.close()
    assert ("keeps the first values of 1 changed parameter(s), as MLflow parameters cannot "
            "change: trainer.epochs 2 (now 4)") in caplog.text
    got = MlflowClient(tracking_uri=(tmp_path / "store").as_uri()).get_run(run_id)
    assert got.data.tags["new"] == "true" and got.data.tags["mlflow.note.content"] == "changed"
    assert got.data.params == {"trainer.epochs": "2", "seed": "0", "loss.beta": "2"}
