"""Sweeps beyond one machine: the launcher= and search= presets over Hydra's joblib, submitit
and Optuna plugins (optional extras; each test skips when its plugin is not installed)."""

import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import TINY, run_cli
from vae_train import launchers, patches
from vae_train.train import CONFIG_DIR

ONE_EPOCH = [*TINY, "trainer.epochs=1"]
# optuna 2.x imports SQLAlchemy 2's deprecated declarative_base (harmless; not ours to fix)
pytestmark = pytest.mark.filterwarnings("ignore:.*declarative_base:DeprecationWarning")


def need(plugin: str):
    return pytest.importorskip(f"hydra_plugins.{plugin}", reason=f"{plugin} is not installed")


def compose_all(overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


def overrides_of(run: Path) -> dict:
    return dict(o.split("=", 1) for o in yaml.safe_load((run / ".hydra" / "overrides.yaml")
                                                        .read_text()))


def sweep_cli(args, cwd):
    """``python -m vae_train -m ARGS`` in ``cwd``: (exit status, stdout + stderr, its pid)."""
    proc = subprocess.Popen([sys.executable, "-m", "vae_train", "-m", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out + err, proc.pid


def event_pid(run: Path) -> int:
    """The process that trained a run: TensorBoard names its event file ...<host>.<pid>.0."""
    (events,) = run.glob("events.out.tfevents.*")
    return int(events.name.split(".")[-2])


# -- the presets compose onto Hydra's plugin configs and touch nothing but Hydra -------------
PRESETS = {
    "launcher=joblib": ("hydra_joblib_launcher", "launcher", "JoblibLauncher",
                        {"n_jobs": 2}),
    "launcher=submitit_local": ("hydra_submitit_launcher", "launcher", "LocalLauncher",
                                {"gpus_per_node": 1, "timeout_min": 1440}),
    "launcher=slurm": ("hydra_submitit_launcher", "launcher", "SlurmLauncher",
                       {"partition": None, "timeout_min": 240, "gpus_per_node": 1,
                        "tasks_per_node": 1, "cpus_per_task": 8, "mem_gb": 32}),
    "search=optuna": ("hydra_optuna_sweeper", "sweeper", "OptunaSweeper",
                      {"direction": "minimize", "n_trials": 20, "n_jobs": 1,
                       "max_failure_rate": 1.0}),
}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_a_preset_sets_hydras_plugin_and_leaves_the_run_config_alone(preset):
    plugin, slot, target, expected = PRESETS[preset]
    need(plugin)
    cfg = compose_all([preset])
    node = cfg.hydra[slot]
    assert node._target_.endswith(target)
    assert {k: node[k] for k in expected} == expected
    def run_config(c):
        return {k: v for k, v in OmegaConf.to_container(c).items() if k != "hydra"}

    assert run_config(cfg) == run_config(compose_all([]))   # evaluate, sample, resume: the same
    if preset == "launcher=slurm":   # the README's keys reach the plugin
        cfg = compose_all([preset, "hydra.launcher.partition=gpu",
                           "hydra.launcher.timeout_min=30"])
        assert (cfg.hydra.launcher.partition, cfg.hydra.launcher.timeout_min) == ("gpu", 30)


def test_the_optuna_preset_searches_lr_and_latent_size_with_a_seeded_sampler():
    need("hydra_optuna_sweeper")
    cfg = compose_all(["search=optuna", "seed=7"])
    assert cfg.hydra.sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert cfg.hydra.sweeper.sampler.seed == 7
    assert set(cfg.hydra.sweeper.params) == {"optimizer.lr", "model.latent_dim",
                                             "trainer.batch_size"}
    assert "loss.beta" not in cfg.hydra.sweeper.params   # the test loss falls with beta alone
    assert "MendOptunaSweeper" in str(cfg.hydra.callbacks)


# -- a preset that cannot work says so in one line, before Hydra starts ------------------------
def run_main(argv, monkeypatch, tmp_path, capsys):
    from vae_train import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["vae-train", *argv])
    with pytest.raises(SystemExit) as e:
        train.main()
    err = capsys.readouterr().err.strip()
    return e.value.code, err


def test_a_missing_extra_is_named_and_a_grid_does_not_mix_with_optuna(monkeypatch, tmp_path,
                                                                      capsys):
    monkeypatch.setattr(launchers, "installed", lambda plugin, library: False)
    code, err = run_main(["-m", "launcher=joblib", *ONE_EPOCH], monkeypatch, tmp_path, capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert 'launcher=joblib needs the joblib extra' in err and 'pip install -e ".[joblib]"' in err
    code, err = run_main(["-m", "search=optuna"], monkeypatch, tmp_path, capsys)
    assert code == 2 and 'pip install -e ".[optuna]"' in err
    monkeypatch.setattr(launchers, "installed", lambda plugin, library: True)
    code, err = run_main(["-m", "search=optuna", "sweep=beta_latent"], monkeypatch, tmp_path,
                         capsys)
    assert code == 2 and "sweep=beta_latent sets a grid" in err and len(err.splitlines()) == 1


def test_a_launcher_without_m_and_slurm_without_slurm_are_one_line(monkeypatch, tmp_path,
                                                                    capsys):
    need("hydra_submitit_launcher")
    code, err = run_main(["launcher=submitit_local", *ONE_EPOCH], monkeypatch, tmp_path, capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "launcher=submitit_local only acts on a sweep: add -m" in err
    monkeypatch.setenv("PATH", str(tmp_path))   # no sbatch, no srun
    code, err = run_main(["-m", "launcher=slurm", *ONE_EPOCH], monkeypatch, tmp_path, capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "launcher=slurm: no SLURM on this machine" in err
    assert not (tmp_path / "outputs").exists()


# -- joblib: jobs in parallel worker processes; a failed one sets the exit status -------------
@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory):
    need("hydra_joblib_launcher")
    tmp = tmp_path_factory.mktemp("joblib")
    sweep = tmp / "sweep"
    code, output, pid = sweep_cli(["launcher=joblib", *ONE_EPOCH, "model.latent_dim=0,2,3",
                                   f"hydra.sweep.dir={sweep}"], tmp)
    return code, output, pid, sweep


@pytest.mark.slow
def test_joblib_runs_the_sweep_in_worker_processes(joblib_sweep):
    _, output, pid, sweep = joblib_sweep
    runs = [sweep / "1_model.latent_dim=2", sweep / "2_model.latent_dim=3"]
    for run in runs:
        assert (run / "metrics.json").is_file(), output
        metrics = json.loads((run / "metrics.json").read_text())
        assert math.isfinite(metrics["test_loss"]) and metrics["epoch"] == 1
        assert (run / ".hydra" / "config.yaml").is_file() and (run / "train.log").is_file()
        assert event_pid(run) != pid    # trained in a joblib worker, not the main process


def test_a_failed_joblib_job_is_recorded_and_sets_the_exit_status(joblib_sweep):
    # Needs the SweepFailures callback (train.py): the worker cannot tell the main process.
    code, output, _, sweep = joblib_sweep
    failed = json.loads((sweep / "0_model.latent_dim=0" / "failed.json").read_text())
    assert "model.latent_dim=0 is invalid" in failed["error"]
    assert not (sweep / "0_model.latent_dim=0" / "metrics.json").exists()
    assert code == 1, output
    assert "1 sweep job(s) failed" in output and "0_model.latent_dim=0" in output
    assert "Traceback" not in output


# -- submitit: one job, pickled and run in its own process; its logs -------------------------
@pytest.mark.slow
def test_submitit_local_runs_a_job_in_its_own_process(tmp_path):
    need("hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    code, output, pid = sweep_cli(["launcher=submitit_local", *ONE_EPOCH,
                                   "hydra.launcher.timeout_min=5", f"hydra.sweep.dir={sweep}"],
                                  tmp_path)
    assert code == 0, output
    (run,) = [p.parent for p in sweep.glob("*/metrics.json")]
    assert event_pid(run) != pid                  # trained in submitit's process
    # submitit's logs: <sweep dir>/.submitit/<job id>/<job id>_0_log.{out,err}
    (err_log,) = sweep.glob(".submitit/*/*_0_log.err")
    assert f"wrote {run / 'metrics.json'}" in err_log.read_text()
    assert "completed successfully" in err_log.with_name(err_log.name.replace(".err", ".out")
                                                         ).read_text()


@pytest.mark.slow
def test_the_slurm_preset_submits_the_sbatch_script_it_promises(tmp_path):
    need("hydra_submitit_launcher")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = tmp_path / "submitted.sh"
    # A stand-in for SLURM: sbatch keeps the script it was given and refuses the job.
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {script}\n'
                                    'echo "sbatch: error: test stand-in" >&2\nexit 1\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    proc = run_cli(["-m", "launcher=slurm", "hydra.launcher.partition=gpu",
                    "hydra.launcher.timeout_min=30", "+hydra.launcher.additional_parameters"
                    ".mail-type=END", *ONE_EPOCH, "model.latent_dim=2,3",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, check=False,
                   env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert proc.returncode != 0 and "test stand-in" in proc.stderr
    text = script.read_text()
    for line in ["--partition=gpu", "--time=30", "--gpus-per-node=1", "--cpus-per-task=8",
                 "--mem=32GB", "--ntasks-per-node=1", "--array=0-1%2", "--mail-type=END",
                 "--job-name=vae-train"]:
        assert f"#SBATCH {line}\n" in text, line
    assert f"{sys.executable} -u -m submitit.core._submit" in text


# -- Optuna: a search over the preset's space, and failed trials --------------------------------
@pytest.mark.slow
def test_optuna_search_runs_trials_and_reports_the_best(tmp_path):
    need("hydra_optuna_sweeper")
    sweep = tmp_path / "search"
    run_cli(["-m", "search=optuna", "hydra.sweeper.n_trials=3", *ONE_EPOCH,
             f"hydra.sweep.dir={sweep}"], tmp_path)
    runs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(runs) == 3
    losses = {}
    for run in runs:
        o = overrides_of(run)
        assert 1e-4 <= float(o["optimizer.lr"]) <= 1e-2
        assert int(o["model.latent_dim"]) in (8, 16, 32, 64)
        assert o["trainer.batch_size"] == "64"     # fixed on the command line: not searched
        losses[run] = json.loads((run / "metrics.json").read_text())["test_loss"]
    assert len({overrides_of(r)["optimizer.lr"] for r in runs}) == 3
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = min(losses, key=losses.get)
    assert result["best_value"] == pytest.approx(losses[best], rel=1e-6)
    assert result["best_params"]["optimizer.lr"] == pytest.approx(
        float(overrides_of(best)["optimizer.lr"]))


class ReturnsOf:
    """A launcher stand-in: trial n returns values[n]; NaN, as a failed vae-train job does."""

    def __init__(self, values):
        self.values, self.seen = list(values), []

    def launch(self, job_overrides, initial_job_idx):
        from hydra.core.utils import JobReturn, JobStatus

        out = []
        for overrides in job_overrides:
            self.seen.append(int(dict(o.split("=") for o in overrides)["x"]))
            ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
            ret.return_value = self.values[len(self.seen) - 1]
            out.append(ret)
        return out


def optuna_search(tmp_path, values, grid=False):
    need("hydra_optuna_sweeper")
    import optuna
    from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

    target = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    patches.MendOptunaSweeper().on_multirun_start(
        config=OmegaConf.create({"hydra": {"sweeper": {"_target_": target}}}))
    sweeper = OptunaSweeperImpl(
        sampler=(functools.partial(optuna.samplers.GridSampler) if grid
                 else optuna.samplers.RandomSampler(seed=0)), direction="minimize", storage=None,
        study_name=None, n_trials=len(values), n_jobs=1, max_failure_rate=1.0,
        search_space=None, custom_search_space=None,
        params=OmegaConf.create({"x": f"choice({','.join(map(str, range(len(values))))})"
                                 if grid else "range(0,100)"}))
    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    sweeper.launcher, sweeper.hydra_context, sweeper.job_idx = ReturnsOf(values), object(), 0
    sweeper.sweep([])
    return sweeper.launcher.seen


def test_a_failed_trial_does_not_end_an_optuna_search(tmp_path):
    # hydra-optuna-sweeper 1.3.0 re-tells a NaN trial as FAIL with its values, which Optuna
    # refuses: unmended, the first failed trial ended the search with a traceback.
    seen = optuna_search(tmp_path, [math.nan, 5.0, 3.0, math.nan])
    assert len(seen) == 4                            # the search went on after each failure
    result = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert result == {"name": "optuna", "best_params": {"x": seen[2]}, "best_value": 3.0}


def test_a_grid_search_whose_last_trial_failed_ends_normally(tmp_path):
    # The grid sampler stops the study when the grid is done; on a failed last trial the
    # plugin did not expect that either.
    seen = optuna_search(tmp_path, [4.0, math.nan, math.nan], grid=True)
    assert sorted(seen) == [0, 1, 2]
    result = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert result["best_value"] == 4.0 and result["best_params"] == {"x": seen[0]}


def test_a_search_whose_every_trial_failed_ends_without_a_traceback(tmp_path, caplog):
    assert len(optuna_search(tmp_path, [math.nan, math.nan])) == 2
    assert not (tmp_path / "optimization_results.yaml").exists()
    assert "no trial of the search finished" in caplog.text
