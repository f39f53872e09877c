"""The sweep report: runs read from a sweep directory, a CSV, a Markdown table and plots."""

import csv
import json

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
    assert "6 finished, 1 failed, 1 unfinished" in md
    assert "training diverged" in md and "still running, or killed" in md
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
    proc = call("vae_train.report", [str(sweep), "x=optimizer.lr"], check=False)
    assert proc.returncode == 2 and "x=optimizer.lr was not swept" in proc.stderr
    proc = call("vae_train.report", [str(sweep), "x=model.latent_dim", "lines=loss.beta"])
    assert "8 runs (6 finished)" in proc.stderr and "failed: 6_" in proc.stderr
