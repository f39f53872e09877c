"""The sweep report: every job a sweep launched (from its multirun.yaml) with what is known of
it, read from the sweep directory; a CSV, a Markdown table and plots."""

import csv
import json
import os

import pytest
import yaml
from PIL import Image

from vae_train.report import report


def _run(sweep, name, overrides, metrics=None, failed=None, eval_=None):
    d = sweep / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps({**metrics, "history": [], "device": "cpu"}))
    if failed is not None:
        (d / "failed.json").write_text(json.dumps({"status": "failed", "error": failed}))
    if eval_ is not None:
        (d / "eval.json").write_text(json.dumps(eval_))


@pytest.fixture
def sweep(tmp_path):
    s = tmp_path / "sweep"
    n = 0
    for beta in (1, 4, 16):
        for latent in (2, 10):
            kl, recon = 20.0 / beta + latent, 200.0 + 5 * beta - latent
            _run(s, f"{n}_loss.beta={beta},model.latent_dim={latent}",
                 [f"loss.beta={beta}", f"model.latent_dim={latent}", "trainer.epochs=3"],
                 metrics={"test_loss": recon + beta * kl, "test_recon": recon, "test_kl": kl,
                          "epoch": 3},
                 eval_={"nll": recon + kl - 1, "mig": 0.1 * beta, "kl_per_dim": [1.0, 2.0]})
            n += 1
    _run(s, f"{n}_loss.beta=64,model.latent_dim=2",
         ["loss.beta=64", "model.latent_dim=2", "trainer.epochs=3"],
         failed="training diverged: the mean train loss of epoch 1 is nan")
    _run(s, f"{n + 1}_loss.beta=64,model.latent_dim=10",
         ["loss.beta=64", "model.latent_dim=10", "trainer.epochs=3"])
    return s


def test_report_has_a_row_per_run_and_lists_failures(sweep):
    result = report(sweep)
    assert result["keys"] == ["loss.beta", "model.latent_dim"]   # trainer.epochs did not vary
    with open(sweep / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    assert [r["status"] for r in rows].count("ok") == 6
    assert {r["status"] for r in rows} == {"ok", "failed", "unfinished"}
    row = next(r for r in rows if r["loss.beta"] == "4" and r["model.latent_dim"] == "10")
    assert float(row["test_recon"]) == pytest.approx(210.0)
    assert float(row["eval_mig"]) == pytest.approx(0.4) and "eval_kl_per_dim" not in row
    assert "trainer.epochs" not in row
    failed = next(r for r in rows if r["status"] == "failed")
    assert "training diverged" in failed["error"]
    md = (sweep / "report.md").read_text()
    assert "8 jobs: 6 finished, 1 failed, 1 unfinished, 0 running, 0 corrupt, 0 missing" in md
    assert "training diverged" in md and "killed or stopped before its first checkpoint" in md
    # no multirun.yaml (a sweep folder copied without it): the runs found, and it says so
    assert "there is no multirun.yaml" in md and "does not appear" in md
    assert "![Rate-distortion plane](rate_distortion.png)" in md
    # rows are ordered by the swept values (numerically: 16 after 4)
    betas = [r["loss.beta"] for r in rows if r["status"] == "ok"]
    assert betas == ["1", "1", "4", "4", "16", "16"]


def test_report_plots_are_pictures(sweep, tmp_path):
    out = tmp_path / "elsewhere"
    report(sweep, out=out)
    for name in ("metrics.png", "rate_distortion.png"):
        with Image.open(out / name) as im:
            im.load()
            w, h = im.size
            colours = len(im.convert("RGB").getcolors(1 << 20))
        assert w > 400 and h > 300 and colours > 20, name       # drawn, not blank
    assert (out / "report.csv").is_file() and not (sweep / "report.csv").exists()


def test_report_errors_name_the_problem(sweep, tmp_path, call):
    proc = call("vae_train.report", [str(tmp_path / "nope")], check=False)
    assert proc.returncode == 2 and "no such directory" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = call("vae_train.report", [str(tmp_path / "empty")], check=False)
    assert proc.returncode == 2 and "no runs found" in proc.stderr
    (tmp_path / "afile").write_text("x")
    proc = call("vae_train.report", [str(tmp_path / "afile")], check=False)
    assert proc.returncode == 2 and "is a file, not a directory" in proc.stderr
    proc = call("vae_train.report", [str(sweep), "x=optimizer.lr"], check=False)
    assert proc.returncode == 2 and "x=optimizer.lr was not swept" in proc.stderr
    proc = call("vae_train.report", [str(sweep), "x=model.latent_dim", "lines=loss.beta"])
    assert "8 jobs: 6 finished, 1 failed, 1 unfinished" in proc.stderr
    assert "failed: 6_" in proc.stderr


# -- every job Hydra launched --------------------------------------------------------------------
def _multirun(sweep, task, params=None, sweeper=None, exclude=("trainer.epochs",)):
    """The parts of Hydra's multirun.yaml the report reads (as Hydra writes them: the sweeper
    preset's params, the command line, how job folders are named)."""
    sweep.mkdir(parents=True, exist_ok=True)
    cfg = {"hydra": {
        "sweep": {"dir": str(sweep), "subdir": "${hydra.job.num}_${hydra.job.override_dirname}"},
        "sweeper": {"_target_": sweeper or "hydra._internal.core_plugins.basic_sweeper."
                                           "BasicSweeper", "max_batch_size": None,
                    "params": params},
        "overrides": {"hydra": [f"hydra.sweep.dir={sweep}"], "task": list(task)},
        "job": {"name": "train", "num": "???", "override_dirname": "???",
                "config": {"override_dirname": {"kv_sep": "=", "item_sep": ",",
                                                "exclude_keys": list(exclude)}}},
        "mode": "MULTIRUN"}, "seed": 0}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _lock(run_dir, pid, host=None, **extra):
    import socket

    (run_dir / ".lock").write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                               "started": "2026-01-01 10:00:00", **extra}))


@pytest.fixture
def launched(tmp_path):
    """A 2 x 3 sweep (model.latent_dim from a sweep preset's params, loss.beta on the command
    line replacing the preset's values): every status a job can have."""
    from vae_train.lock import process_start

    s = tmp_path / "sweep"
    _multirun(s, ["loss.beta=1,4,16", "trainer.epochs=3"],
              params={"model.latent_dim": "2,10", "loss.beta": "0.5,1"})
    name = "{}_loss.beta={},model.latent_dim={}".format
    ov = lambda lat, beta: [f"model.latent_dim={lat}", f"loss.beta={beta}", "trainer.epochs=3"]
    good = {"test_loss": 100.0, "test_recon": 90.0, "test_kl": 10.0, "epoch": 3}
    _run(s, name(0, 1, 2), ov(2, 1), metrics=good)                                   # ok
    # job 1 (beta=4, latent 2): its folder was deleted
    _run(s, name(2, 16, 2), ov(2, 16))                                                # killed
    (s / name(2, 16, 2) / "checkpoints").mkdir()
    (s / name(2, 16, 2) / "checkpoints" / "last.pt").write_bytes(b"weights")
    _lock(s / name(2, 16, 2), _dead_pid())
    _run(s, name(3, 1, 10), ov(10, 1))                                                # corrupt
    (s / name(3, 1, 10) / "metrics.json").write_text('{"test_loss": 100.0, "history": [1, 2')
    _run(s, name(4, 4, 10), ov(10, 4))                                                # running
    _lock(s / name(4, 4, 10), os.getpid(), proc_start=process_start(os.getpid()))
    # job 5 (beta=16, latent 10) never started: no folder, though multirun.yaml launched it
    return s


def test_report_accounts_for_every_launched_job(launched):
    result = report(launched)
    by_job = {r["job"]: r for r in result["runs"]}
    assert sorted(by_job) == [0, 1, 2, 3, 4, 5]
    status = {j: r["status"] for j, r in by_job.items()}
    assert status == {0: "ok", 1: "missing", 2: "unfinished", 3: "corrupt", 4: "running",
                      5: "missing"}
    assert by_job[1]["run"] == "1_loss.beta=4,model.latent_dim=2"
    assert by_job[5]["run"] == "5_loss.beta=16,model.latent_dim=10"
    assert by_job[1]["error"] == "directory missing: deleted, or the job never started"
    assert by_job[2]["error"].startswith("killed or stopped: no metrics.json; resume with "
                                         "python -m vae_train resume=")
    assert str(launched / "2_loss.beta=16,model.latent_dim=2") in by_job[2]["error"]
    assert by_job[3]["error"].startswith("metrics.json is not valid JSON (")
    assert "truncated or damaged" in by_job[3]["error"]
    assert by_job[4]["error"] == f"running: process {os.getpid()} since 2026-01-01 10:00:00"
    with open(launched / "report.csv") as f:
        rows = {r["job"]: r for r in csv.DictReader(f)}
    assert rows["5"]["status"] == "missing"                  # the swept values of a missing job
    assert (rows["5"]["loss.beta"], rows["5"]["model.latent_dim"]) == ("16", "10")
    md = (launched / "report.md").read_text()
    assert ("6 jobs: 1 finished, 0 failed, 1 unfinished, 1 running, 1 corrupt, 2 missing"
            in md)
    assert "6 jobs launched (from `multirun.yaml`)" in md
    assert "`5_loss.beta=16,model.latent_dim=10` (missing): directory missing" in md


def test_report_expands_the_grid_as_hydra_does(launched):
    """The jobs, their overrides and order, are those of Hydra's own basic sweeper."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from vae_train.report import expected_jobs

    args = ["model.latent_dim=2,10", "loss.beta=0.5,1", "loss.beta=1,4,16", "trainer.epochs=3"]
    hydra_jobs = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args),
                                              None)[0]
    jobs = expected_jobs(launched)
    assert [j.overrides for j in jobs] == hydra_jobs and len(jobs) == 6
    assert [j.num for j in jobs] == list(range(6))


def test_a_stale_lock_of_a_pid_now_used_by_another_process_is_not_running(launched):
    """The lock's pid is alive (this process) but started after the lock's owner did."""
    from vae_train.lock import process_start

    run = launched / "4_loss.beta=4,model.latent_dim=10"
    _lock(run, os.getpid(), proc_start=process_start(os.getpid()) - 1)
    rec = next(r for r in report(launched)["runs"] if r["job"] == 4)
    assert rec["status"] == "unfinished"
    assert rec["error"].startswith("killed or stopped before its first checkpoint")


def test_a_lock_of_another_host_is_unknown(launched):
    run = launched / "4_loss.beta=4,model.latent_dim=10"
    _lock(run, 12345, host="elsewhere-node-7")
    rec = next(r for r in report(launched)["runs"] if r["job"] == 4)
    assert rec["status"] == "unknown"
    assert "locked by process 12345 on host elsewhere-node-7" in rec["error"]


@pytest.mark.parametrize("content,reason", [
    ("", "metrics.json is empty (truncated"),
    ('[1, 2, 3]', "metrics.json holds a list, not an object of metrics"),
    ('"done"', "metrics.json holds a str"),
    ('{"test_loss": 1.0,', "metrics.json is not valid JSON ("),
    (b"\xff\xfe\x00garbage", "metrics.json is not text (damaged)"),
    (None, "metrics.json is a folder, not a file"),
])
def test_a_corrupt_metrics_json_is_corrupt_never_running(launched, content, reason):
    run = launched / "0_loss.beta=1,model.latent_dim=2"
    (run / "metrics.json").unlink()
    if content is None:
        (run / "metrics.json").mkdir()
    elif isinstance(content, bytes):
        (run / "metrics.json").write_bytes(content)
    else:
        (run / "metrics.json").write_text(content)
    rec = next(r for r in report(launched)["runs"] if r["job"] == 0)
    assert rec["status"] == "corrupt" and rec["error"].startswith(reason), rec["error"]


def test_a_renamed_or_resumed_job_is_found_by_its_overrides(launched):
    """A job folder renamed, whose overrides.yaml holds what a resume adds (the model pinned
    with ++, resume=): found as its job, not missing and not an extra run."""
    old = launched / "0_loss.beta=1,model.latent_dim=2"
    new = launched / "renamed"
    old.rename(new)
    (new / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        ["model.latent_dim=2", "loss.beta=1", "trainer.epochs=3", "++model.hidden_dims=[400]",
         f"resume={new}/checkpoints/last.pt"]))
    result = report(launched)
    rec = next(r for r in result["runs"] if r["job"] == 0)
    assert rec["run"] == "renamed" and rec["status"] == "ok"
    assert len(result["runs"]) == 6 and not any(r["note"] for r in result["runs"])


def test_a_run_the_sweep_did_not_launch_is_listed_with_a_note(launched):
    _run(launched, "9_loss.beta=64,model.latent_dim=2",
         ["model.latent_dim=2", "loss.beta=64", "trainer.epochs=3"],
         metrics={"test_loss": 1.0, "test_recon": 0.5, "test_kl": 0.5})
    result = report(launched)
    extra = next(r for r in result["runs"] if r["run"].startswith("9_"))
    assert extra["job"] == "" and extra["status"] == "ok"
    assert "not one of the 6 jobs multirun.yaml lists" in extra["note"][0]
    assert "7 jobs:" in (launched / "report.md").read_text()


def test_a_sweep_with_only_multirun_yaml_lists_every_job_missing(tmp_path):
    s = tmp_path / "sweep"
    _multirun(s, ["loss.beta=1,2,4"])
    result = report(s)
    assert [r["status"] for r in result["runs"]] == ["missing"] * 3
    assert [r["run"] for r in result["runs"]] == ["0_loss.beta=1", "1_loss.beta=2",
                                                  "2_loss.beta=4"]
    assert "3 jobs: 0 finished" in (s / "report.md").read_text()


@pytest.mark.parametrize("setup,needle", [
    (lambda s: _multirun(s, ["optimizer.lr=tag(log,interval(1e-4,1e-2))"],
                         sweeper="hydra_plugins.hydra_optuna_sweeper.optuna_sweeper."
                                 "OptunaSweeper"),
     "the sweep was run by hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper, "
     "which chooses its jobs as it runs"),
    (lambda s: (s / "multirun.yaml").write_text("hydra: [unclosed\n  - {"),
     "multirun.yaml cannot be read"),
    (lambda s: (s / "multirun.yaml").write_text("- just\n- a list\n"),
     "multirun.yaml holds no hydra: section"),
    (lambda s: _multirun(s, ["loss.beta=range(0,1000000000)"]),
     "loss.beta=range(0,1000000000) has 1000000000 values (more than 100000)"),
    (lambda s: _multirun(s, ["loss.beta=1,2,3,4,5,6,7,8,9,10", "model.latent_dim=range(0,100)",
                             "seed=range(0,101)"]),
     "its grid has 101000 jobs (more than 100000)"),
    (lambda s: _multirun(s, ["model=glob(*)"]), "model=glob(*) cannot be expanded here"),
    (lambda s: _multirun(s, ["loss.beta=1,,,=2"]), "its overrides cannot be parsed"),
])
def test_sweeps_that_cannot_be_expanded_fall_back_to_the_runs_found(sweep, setup, needle):
    """A search (optuna), a damaged or hostile multirun.yaml: the runs found, and report.md
    says why the launched jobs cannot be listed."""
    setup(sweep)
    result = report(sweep)
    assert len(result["runs"]) == 8
    md = (sweep / "report.md").read_text()
    assert "The jobs Hydra launched cannot be listed: " + needle in md, md
    assert "Listed are the 8 run folders found" in md


def test_report_refuses_an_unwritable_out_in_one_line(sweep, tmp_path, call):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile, afile / "sub"):
        proc = call("vae_train.report", [str(sweep), f"out={out}"], check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert f"out={out}: cannot write" in proc.stderr and "is a file, not a folder" \
            in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not (sweep / "report.md").exists()


@pytest.mark.slow
def test_report_of_a_real_sweep_with_a_deleted_and_a_never_started_job(tmp_path):
    """A real Hydra sweep of two jobs; one folder deleted, and multirun.yaml made to say a
    third job was launched (a sweep killed before it started): all three listed, the folder
    names those Hydra gives."""
    import shutil

    from conftest import run_cli

    s = tmp_path / "sweep"
    run_cli(["-m", "dataset=synthetic", "dataset.num_train=200", "dataset.num_test=50",
             "dataset.image_size=8", "model.hidden_dims=[16]", "trainer.epochs=1",
             "trainer.progress=false", "device=cpu", "loss.beta=1,2",
             f"hydra.sweep.dir={s}"], tmp_path)
    assert sorted(p.name for p in s.iterdir() if p.is_dir()) == ["0_loss.beta=1",
                                                                "1_loss.beta=2"]
    shutil.rmtree(s / "1_loss.beta=2")
    text = (s / "multirun.yaml").read_text()
    assert "- loss.beta=1,2\n" in text
    (s / "multirun.yaml").write_text(text.replace("- loss.beta=1,2\n", "- loss.beta=1,2,4\n"))
    result = report(s)
    got = [(r["job"], r["run"], r["status"]) for r in sorted(result["runs"],
                                                              key=lambda r: r["job"])]
    assert got == [(0, "0_loss.beta=1", "ok"), (1, "1_loss.beta=2", "missing"),
                   (2, "2_loss.beta=4", "missing")]


@pytest.fixture
def labelled(tmp_path):
    """Three runs whose tags and notes differ (one note with a '|'), tags given per job."""
    s = tmp_path / "labelled"
    for n, (beta, tag, note) in enumerate([(1, "a", "x | y"), (4, "b", "plain"),
                                           (16, "a", "second a")]):
        _run(s, f"{n}_job", [f"loss.beta={beta}", f"tags=[{tag}]", f"notes='{note}'"],
             metrics={"test_loss": 100.0 + beta, "test_recon": 90.0, "test_kl": 10.0 + beta,
                      "tags": [tag], "notes": note})
    return s


def _md_row_cells(line: str) -> int:
    """The cells of a Markdown table row ('\\|' is inside a cell)."""
    return len(line.replace("\\|", "").strip().strip("|").split("|"))


def test_tags_and_notes_are_one_column_each_and_cells_are_escaped(labelled):
    """Review 17 #6: tags/notes given per job are not also swept-key columns; a '|' in a
    cell does not split the Markdown row."""
    result = report(labelled)
    assert result["keys"] == ["loss.beta"]
    with open(labelled / "report.csv") as f:
        header = next(csv.reader(f))
    assert header.count("tags") == 1 and header.count("notes") == 1
    md = (labelled / "report.md").read_text().splitlines()
    table = [line for line in md if line.startswith("| ")]
    assert table[0].split(" | ")[-2:] == ["tags", "notes |"]
    assert len({_md_row_cells(line) for line in table}) == 1
    assert any("x \\| y" in line for line in table)


def test_a_tag_filtered_report_has_its_own_files(labelled):
    """Review 17 #18: report(sweep, tag=...) (a str path too) writes report_<tag>.* and leaves
    the full report as it was."""
    report(labelled)
    full = {name: (labelled / name).read_bytes()
            for name in ("report.md", "report.csv", "metrics.png", "rate_distortion.png")}
    result = report(str(labelled), tag="a")
    assert [r["run"] for r in result["runs"]] == ["0_job", "2_job"]
    for name, data in full.items():
        assert (labelled / name).read_bytes() == data, name
    with open(labelled / "report_a.csv") as f:
        assert [r["run"] for r in csv.DictReader(f)] == ["0_job", "2_job"]
    md = (labelled / "report_a.md").read_text()
    assert "Only the 2 of 3 runs tagged `a`" in md and "(metrics_a.png)" in md
    assert {p.name for p in result["files"]} == {"report_a.md", "report_a.csv", "metrics_a.png",
                                                 "rate_distortion_a.png"}
    assert all(p.is_file() for p in result["files"])
