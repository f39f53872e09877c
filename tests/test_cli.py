"""The real command line, as a user runs it: run directory, resume, sweep, bad input."""

import glob
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import TINY, run_cli


def only_run_dir(cwd: Path) -> Path:
    runs = [Path(p) for p in glob.glob(str(cwd / "outputs" / "*" / "*")) if "multirun" not in p]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.slow
def test_a_run_writes_everything_a_user_needs(tmp_path):
    proc = run_cli([*TINY, "trainer.epochs=2", "model.latent_dim=2"], tmp_path)
    run = only_run_dir(tmp_path)                       # outputs/<date>/<time>
    assert "test loss" in proc.stderr and str(run.name) in proc.stderr
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        assert (run / ".hydra" / name).is_file()
    assert "epoch 2/2" in (run / "train.log").read_text()
    for name in ("last.pt", "best.pt"):
        state = torch.load(run / "checkpoints" / name, weights_only=True)
        assert state["epoch"] >= 1 and "main" in state["optimizers"] and "rng" in state
    assert not list(run.glob("checkpoints/.*tmp"))    # no temporary files left behind

    m = json.loads((run / "metrics.json").read_text())
    for key in ("test_loss", "test_recon", "test_kl", "best_val_loss", "epoch", "images_per_sec"):
        assert isinstance(m[key], (int, float)) and math.isfinite(m[key]), key
    assert m["epoch"] == 2 and m["images_per_sec"] > 0 and len(m["history"]) == 2
    assert m["test_loss"] == pytest.approx(m["test_recon"] + m["test_kl"], rel=1e-4)
    assert m["test_loss"] < 450                         # an untrained model is ~543

    for png in ("reconstructions", "samples", "manifold"):
        with Image.open(run / f"{png}.png") as im:
            assert im.size[0] > 50 and im.size[1] > 50

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = ea.Tags()
    for tag in ("train/loss", "train/recon", "train/kl", "val/loss", "val/recon", "val/kl",
                "test/loss", "test/recon", "test/kl", "opt/lr", "hparam/test_loss"):
        assert tag in tags["scalars"], tag
    for tag in ("images/reconstructions", "images/samples", "images/manifold",
                "images/best_samples"):
        assert any(t.startswith(tag) for t in tags["images"]), (tag, tags["images"])
    assert len(ea.Scalars("val/loss")) == 2
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = ea.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["model"].string_value == "vae" and hp["dataset"].string_value == "synthetic"
    assert hp["model.latent_dim"].number_value == 2 and hp["loss.beta"].number_value == 1


@pytest.mark.slow
def test_resume_continues_to_the_same_weights(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    run_cli([*TINY, "trainer.epochs=3", f"hydra.run.dir={full}"], tmp_path)
    run_cli([*TINY, "trainer.epochs=1", f"hydra.run.dir={part}"], tmp_path)
    # resume from the run directory, then from a checkpoint file, raising epochs each time
    proc = run_cli([f"resume={part}", "trainer.epochs=2"], tmp_path)
    assert "resumed from" in proc.stderr and "epoch 2/2" in proc.stderr
    assert "epoch 1/" not in proc.stderr
    run_cli([f"resume={part}/checkpoints/last.pt", "trainer.epochs=3"], tmp_path)
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(part / "checkpoints" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3 and a["step"] == b["step"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ma = json.loads((full / "metrics.json").read_text())
    mb = json.loads((part / "metrics.json").read_text())
    assert ma["test_loss"] == mb["test_loss"] and ma["best_val_loss"] == mb["best_val_loss"]
    assert [h["val_loss"] for h in ma["history"]] == [h["val_loss"] for h in mb["history"]]
    assert len(list(tmp_path.glob("outputs/*/*"))) == 0   # resume stayed in its directory


@pytest.mark.slow
def test_sweep_writes_one_run_per_combination(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli(["-m", "loss.beta=0.5,1,4", "model.latent_dim=2,16", *TINY, "trainer.epochs=1",
             f"hydra.sweep.dir={sweep}"], tmp_path)
    runs = sorted((p.parent for p in sweep.glob("*/metrics.json")), key=lambda p: p.name)
    assert len(runs) == 6
    seen = set()
    for run in runs:
        cfg = (run / ".hydra" / "config.yaml").read_text()
        beta = [line for line in cfg.splitlines() if line.strip().startswith("beta:")][0]
        latent = [line for line in cfg.splitlines() if "latent_dim:" in line][0]
        seen.add((float(beta.split()[-1]), int(latent.split()[-1])))
        assert "loss.beta=" in run.name and "model.latent_dim=" in run.name
        assert "dataset" not in run.name                   # only swept keys name a run
    assert seen == {(b, l) for b in (0.5, 1.0, 4.0) for l in (2, 16)}
    # the report reads the six runs back
    from vae_train.report import report

    result = report(sweep)
    assert result["keys"] == ["loss.beta", "model.latent_dim"]
    assert [r["status"] for r in result["runs"]] == ["ok"] * 6
    assert (sweep / "rate_distortion.png").is_file() and (sweep / "metrics.png").is_file()
    # a sweep's run directory (its name holds '=' and ',') resumes like any other
    one = runs[3]
    proc = run_cli([f"resume={one}", "trainer.epochs=2"], tmp_path)
    assert "epoch 2/2" in proc.stderr
    m = json.loads((one / "metrics.json").read_text())
    assert m["epoch"] == 2 and len(m["history"]) == 2


# Every kind of bad input is tried in-process in test_bad_input.py; two go through a real
# interpreter here, to prove the process itself ends in one line, not a traceback.
BAD = [
    (["model.latent_dim=0"], "model.latent_dim"),
    (["dataset=mnist", "dataset.root=DATA", "dataset.download=false"], "MNIST not found"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
@pytest.mark.slow
def test_bad_input_is_one_clear_line(args, needle, tmp_path):
    args = [a.replace("DATA", str(tmp_path / "empty")) for a in args]
    base = [a for a in TINY if not (a.startswith("dataset") and any(
        b.startswith("dataset=") for b in args))]
    proc = run_cli([*base, *args], tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert needle in out, out
    assert "Traceback" not in out, out
    assert not list(tmp_path.glob("outputs/*/*/metrics.json"))


@pytest.mark.slow
def test_resume_of_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "notarun").mkdir()
    proc = run_cli([f"resume={tmp_path / 'notarun'}"], tmp_path, check=False)
    assert proc.returncode == 2 and "not inside a vae-train run directory" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_console_script_and_zero_epochs(tmp_path):
    exe = shutil.which("vae-train") or str(Path(sys.executable).parent / "vae-train")
    import subprocess

    proc = subprocess.run([exe, *TINY, "trainer.epochs=0", f"hydra.run.dir={tmp_path / 'r'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["epoch"] == 0 and m["test_loss"] > 450          # the untrained model's loss
    assert m["best_val_loss"] is None                        # strict JSON: no NaN


@pytest.mark.slow
def test_a_failed_resume_leaves_the_run_as_it_was(tmp_path):
    run = tmp_path / "run"
    run_cli([*TINY, "trainer.epochs=1", f"hydra.run.dir={run}"], tmp_path)
    before = {f.name: f.read_text() for f in (run / ".hydra").glob("*.yaml")}
    for bad, needle in (("optimizer.lr=0", "optimizer.lr=0"),
                        ("model.latent_dim=5", "does not fit this model"),
                        ("optimizer=sgd", "trained with torch.optim.Adam")):
        proc = run_cli([f"resume={run}", bad], tmp_path, check=False)
        assert proc.returncode != 0 and needle in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        assert {f.name: f.read_text() for f in (run / ".hydra").glob("*.yaml")} == before
    proc = run_cli([f"resume={run}", "trainer.epochs=2"], tmp_path)
    assert json.loads((run / "metrics.json").read_text())["epoch"] == 2


@pytest.mark.slow
def test_resume_from_a_checkpoint_copied_elsewhere_opens_a_new_run(tmp_path):
    run = tmp_path / "run"
    run_cli([*TINY, "trainer.epochs=1", f"hydra.run.dir={run}"], tmp_path)
    lone = tmp_path / "lone.pt"
    shutil.copy(run / "checkpoints" / "last.pt", lone)
    run_cli([f"resume={lone}", "trainer.epochs=2"], tmp_path)
    new = only_run_dir(tmp_path)
    m = json.loads((new / "metrics.json").read_text())
    assert m["epoch"] == 2 and len(m["history"]) == 2
    assert "dataset=synthetic" in (new / ".hydra" / "overrides.yaml").read_text()


def test_corrupt_and_unsafe_checkpoints_are_refused(tmp_path):
    import os

    from vae_train import checkpoint
    from vae_train.errors import UserError

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": checkpoint.FORMAT, "model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refused.*could run code.*system"):
        checkpoint.load(tmp_path / "evil.pt")
    assert not marker.exists()
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(UserError, match="truncated or corrupt"):
        checkpoint.load(tmp_path / "text.pt")
    good = tmp_path / "good.pt"
    checkpoint.save_atomic({"format": checkpoint.FORMAT, "w": torch.ones(1000)}, good)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:500])
    with pytest.raises(UserError, match="truncated or corrupt"):
        checkpoint.load(tmp_path / "cut.pt")
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not a vae-train checkpoint"):
        checkpoint.load(tmp_path / "foreign.pt")


@pytest.mark.slow
def test_a_failed_sweep_job_does_not_lose_the_others(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "model.latent_dim=0,2", "loss.beta=1,-1", *TINY, "trainer.epochs=1",
                    f"hydra.sweep.dir={sweep}"], tmp_path, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "3 sweep job(s) failed" in proc.stderr and "Traceback" not in proc.stderr
    done = [p.parent.name for p in sweep.glob("*/metrics.json")]
    failed = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/failed.json")}
    assert done == ["2_loss.beta=1,model.latent_dim=2"]
    assert len(failed) == 3
    assert "model.latent_dim=0 is invalid" in failed["0_loss.beta=1,model.latent_dim=0"]["error"]
    assert "loss.beta=-1" in failed["3_loss.beta=-1,model.latent_dim=2"]["error"]


@pytest.mark.parametrize("preset", ["beta_latent", "beta", "models"])
def test_sweep_presets_set_the_sweepers_grid(preset):
    from hydra import compose, initialize_config_dir

    from vae_train.train import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"sweep={preset}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params and all("," in str(v) or k == "model.latent_dim" for k, v in params.items())


@pytest.mark.slow
def test_a_sweep_preset_runs_with_a_key_narrowed_on_the_command_line(tmp_path):
    sweep = tmp_path / "preset"
    run_cli(["-m", "sweep=beta_latent", "loss.beta=1,4", "model.latent_dim=2", *TINY,
             "trainer.epochs=1", "dataset.num_train=400", f"hydra.sweep.dir={sweep}"], tmp_path)
    names = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert names == ["0_loss.beta=1", "1_loss.beta=4"]   # the preset's latent sizes: narrowed
