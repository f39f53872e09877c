"""``evaluate`` and ``sample`` on small trained runs, through their real command lines."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import TINY, run_cli, run_module

FIXTURE = Path(__file__).parent / "fixtures" / "run_v0_1"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A small trained VAE with a 2-D code (the kept fixture run, copied): for the tests that
    need any trained run, without training one."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    shutil.copytree(FIXTURE, run)
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for name, extra in (("vae2d", ["model.latent_dim=2"]), ("cvae", ["model=cvae"]),
                        ("hvae", ["model=hvae", "loss=iwae", "loss.k=3"])):
        out[name] = base / name
        run_cli([*TINY, "trainer.epochs=2", *extra, f"hydra.run.dir={out[name]}"], base)
    return out


@pytest.mark.parametrize("name", ["vae2d", "cvae", "hvae"])
@pytest.mark.slow
def test_evaluate_writes_eval_json(runs, name, tmp_path, call):
    run = runs[name]
    proc = (run_module if name == "vae2d" else call)("vae_train.evaluate", [f"run={run}", "k=50", "n=120", "batch_size=50",
                                             "max_batch=600", "progress=false"], tmp_path)
    assert "NLL (k=50)" in proc.stdout and "active units" in proc.stdout
    res = json.loads((run / "eval.json").read_text())
    for key in ("nll", "elbo", "k", "active_units", "kl_per_dim", "recon", "kl"):
        assert key in res
    assert res["k"] == 50 and res["n"] == 120 and res["split"] == "test"
    # the 50-sample bound is tighter than the ELBO: NLL estimate below -ELBO
    assert 0 < res["nll"] < -res["elbo"]
    assert res["elbo"] == pytest.approx(-(res["recon"] + res["kl"]), rel=1e-4)
    dims = {"vae2d": [2], "cvae": [20], "hvae": [100, 50]}[name]
    assert res["latent_dims_per_layer"] == dims and len(res["kl_per_dim"]) == sum(dims)
    assert 0 <= res["active_units"] <= sum(dims)
    assert res["conditional"] == (name == "cvae")

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(run)).Reload().Tags()["scalars"]
    assert "eval_test/nll_k50" in tags and "eval_test/active_units" in tags


def test_evaluate_other_split_and_last_checkpoint(tiny_run, tmp_path, call):
    run = tiny_run
    call("vae_train.evaluate", [f"run={run}", "k=5", "n=40", "split=val",
                                      "checkpoint=last", "progress=false"], tmp_path)
    res = json.loads((run / "eval_val.json").read_text())
    assert res["split"] == "val" and res["checkpoint"] == "last" and res["n"] == 40



@pytest.mark.slow
def test_evaluate_default_tiles_on_the_cpu_and_same_seed_same_nll(runs, tmp_path, call):
    """On a CPU the default max_batch is 2048 pairs (k=3000: one example per call, two chunks
    of 1500 samples each); eval.json records it, and the same seed gives the same NLL."""
    run = runs["hvae"]
    args = [f"run={run}", "k=3000", "n=6", "batch_size=4", "device=cpu", "progress=false"]
    call("vae_train.evaluate", args, tmp_path)
    first = json.loads((run / "eval.json").read_text())
    assert first["max_batch"] == 2048 and first["n"] == 6 and first["k"] == 3000
    call("vae_train.evaluate", args, tmp_path)
    again = json.loads((run / "eval.json").read_text())
    assert again["nll"] == first["nll"] and 0 < first["nll"] < -first["elbo"]

@pytest.mark.parametrize("name,expected", [
    ("vae2d", {"samples", "reconstructions", "traversals", "interpolations", "manifold"}),
    ("cvae", {"samples", "reconstructions", "traversals", "interpolations", "class_samples",
              "class_swap"}),
    ("hvae", {"samples", "reconstructions", "traversals", "interpolations", "layer_variations"}),
])
@pytest.mark.slow
def test_sample_writes_the_pictures(runs, name, expected, tmp_path, call):
    run = runs[name]
    out = tmp_path / "pics"
    proc = (run_module if name == "vae2d" else call)("vae_train.sample", [f"run={run}", "n=16", "dims=3", "steps=5", "pairs=2",
                                           "interp_steps=4", f"out={out}"], tmp_path)
    assert {p.stem for p in out.glob("*.png")} == expected
    with Image.open(out / "traversals.png") as im:      # 3 rows of image + 5 steps
        w, h = im.size
    assert w > h
    assert "traversed code dimensions" in proc.stderr
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(run), size_guidance={"images": 0}).Reload().Tags()["images"]
    assert "sample/traversals" in tags


def test_sample_is_seeded(tiny_run, tmp_path, call):
    run = tiny_run
    for name in ("a", "b"):
        call("vae_train.sample", [f"run={run}", "n=9", "seed=3", f"out={tmp_path / name}"],
                   tmp_path)
    assert (tmp_path / "a" / "samples.png").read_bytes() == (tmp_path / "b" / "samples.png").read_bytes()


@pytest.mark.parametrize("module,args,needle", [
    ("vae_train.evaluate", [], "run=... is required"),
    ("vae_train.evaluate", ["run=/no/such/run"], "not a vae-train run directory"),
    ("vae_train.evaluate", ["run=RUN", "k=0"], "k=0"),
    ("vae_train.evaluate", ["run=RUN", "kk=3"], "unknown option 'kk'"),
    ("vae_train.evaluate", ["run=RUN", "split=dev"], "split='dev'"),
    ("vae_train.evaluate", ["run=RUN", "n=1"], "n=1"),
    ("vae_train.evaluate", ["run=RUN", "dataset.root=/x"], "generated, not read"),
    ("vae_train.sample", ["run=RUN", "n=0"], "n=0"),
    ("vae_train.sample", ["run=RUN", "checkpoint=/no/such.pt"], "no checkpoint"),
    ("vae_train.sample", ["run=RUN", "dataset=mnist"], "unknown option 'dataset'"),
    ("vae_train.evaluate", ["run=RUN", "device=tpu"], "device='tpu' is invalid"),
    ("vae_train.evaluate", ["run=RUN", "progress=maybe"], "progress='maybe' is invalid"),
    ("vae_train.report", ["sweep="], "sweep=... is required"),
    ("vae_train.report", ["RUN", "extra"], "argument 'extra' is not key=value"),
])
def test_bad_arguments_are_one_line(tiny_run, module, args, needle, tmp_path, call):
    args = [a.replace("RUN", str(tiny_run)) for a in args]
    proc = call(module, args, tmp_path, check=False)
    assert proc.returncode == 2
    assert needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_bad_argument_from_the_command_line(tmp_path):
    proc = run_module("vae_train.evaluate", ["k=5"], tmp_path, check=False)
    assert proc.returncode == 2 and "run=... is required" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_evaluate_finds_the_data_from_anywhere(tmp_path, call, monkeypatch):
    """Training resolved dataset.root=data against its working directory; evaluate, run from
    elsewhere, still finds the data (and dataset.root= points at data that moved)."""
    from conftest import write_mnist_like

    work = tmp_path / "work"
    write_mnist_like(work / "data" / "MNIST" / "raw", 400, 100)
    run = work / "run"
    run_cli(["dataset=mnist", "dataset.root=data", "dataset.download=false", "trainer.epochs=1",
             "trainer.progress=false", "model.latent_dim=2", f"hydra.run.dir={run}"], work)
    monkeypatch.chdir(tmp_path)
    call("vae_train.evaluate", [f"run={run}", "k=5", "progress=false"])
    assert json.loads((run / "eval.json").read_text())["n"] == 100
    (work / "data").rename(tmp_path / "moved")
    proc = call("vae_train.evaluate", [f"run={run}", "k=5"], check=False)
    assert proc.returncode == 2 and "MNIST not found" in proc.stderr
    call("vae_train.evaluate", [f"run={run}", "k=5", f"dataset.root={tmp_path / 'moved'}"])


def test_the_commands_are_hydra_apps_with_help_and_completion(call, monkeypatch):
    """--help lists every option with its default, --cfg job prints the composed options,
    Hydra's shell completion answers, and a path holding '=' and ',' (a sweep's run directory)
    is taken as it is."""
    out = call("vae_train.evaluate", ["--help"]).stdout
    assert "vae-train-evaluate" in out and "run: ???" in out and "k: 5000" in out
    assert "== Configuration groups ==" not in out        # no training group is offered here
    out = call("vae_train.sample", ["--cfg", "job", "run=somewhere", "n=16"]).stdout
    assert "run: somewhere" in out and "'n': 16" in out and "interp_steps: 10" in out
    monkeypatch.setenv("COMP_LINE", "vae-train-evaluate spl")
    assert "split=" in call("vae_train.evaluate", ["-sc", "query=bash"]).stdout
    sweep_run = "outputs/multirun/2026-11-30/10-00-00/3_loss.beta=1,model.latent_dim=16"
    out = call("vae_train.report", ["--cfg", "job", sweep_run]).stdout
    assert f"sweep: {sweep_run}" in out


def test_a_command_over_several_runs_with_m(tiny_run, tmp_path, call, monkeypatch):
    """-m run=a,b evaluates each run; nothing is written where the command was started."""
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    call("vae_train.evaluate", ["-m", f"run={tiny_run},{other}", "k=5", "n=20",
                                "progress=false"])
    for run in (tiny_run, other):
        assert json.loads((run / "eval.json").read_text())["n"] == 20
    assert not list(work.iterdir())
