"""The ``launcher=`` and ``search=`` presets run sweeps through Hydra's plugins (joblib,
submitit, Optuna), which are optional extras. :func:`check` looks at the command line before
Hydra composes anything, so a preset whose plugin is missing, or one that cannot do anything
in the command it was given, ends in one line that says what to do.

It also mends one defect of the Optuna sweeper plugin (hydra-optuna-sweeper 1.3.0 with the
optuna 2.x it requires): a trial that returns NaN, as a failed vae-train sweep job does, makes
it call ``study.tell(state=FAIL, values=[nan])``, which Optuna rejects, so one failed trial
aborted the whole search with a traceback (Hydra issue #2237, fixed upstream after that
release). With the mend the trial is recorded as failed and the search goes on.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import shutil

from hydra.experimental.callback import Callback

from vae_train.errors import UserError

log = logging.getLogger("vae_train")

# preset (group, option) -> (extra, Hydra plugin package, library it drives)
PLUGINS = {
    ("launcher", "joblib"): ("joblib", "hydra_joblib_launcher", "joblib"),
    ("launcher", "submitit_local"): ("submitit", "hydra_submitit_launcher", "submitit"),
    ("launcher", "slurm"): ("submitit", "hydra_submitit_launcher", "submitit"),
    ("search", "optuna"): ("optuna", "hydra_optuna_sweeper", "optuna"),
    # Hydra's own groups, for a command line that picks a plugin directly
    ("hydra/launcher", "joblib"): ("joblib", "hydra_joblib_launcher", "joblib"),
    ("hydra/launcher", "submitit_local"): ("submitit", "hydra_submitit_launcher", "submitit"),
    ("hydra/launcher", "submitit_slurm"): ("submitit", "hydra_submitit_launcher", "submitit"),
    ("hydra/sweeper", "optuna"): ("optuna", "hydra_optuna_sweeper", "optuna"),
}
# Flags that only print or inspect (they take no -m): a preset there is fine without a sweep.
_INSPECT = ("--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help",
            "--shell-completion", "-sc")


def installed(plugin: str, library: str) -> bool:
    """Whether Hydra's plugin package and the library it drives can be imported."""
    try:
        return (importlib.util.find_spec(f"hydra_plugins.{plugin}") is not None
                and importlib.util.find_spec(library) is not None)
    except (ImportError, ValueError):
        return False


def chosen(argv: list[str]) -> list[tuple[str, str]]:
    """The (group, option) pairs of the command line that need a plugin."""
    out = []
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            continue
        key, value = arg.split("=", 1)
        if key.startswith("~"):  # a deletion needs no plugin
            continue
        key = key.lstrip("+")
        value = value.strip().strip("'\"")
        if (key, value) in PLUGINS:
            out.append((key, value))
    return out


def check(argv: list[str]) -> None:
    """Raise a one-line :class:`UserError` when a launcher/search preset on the command line
    cannot work: its extra is not installed, it is given without ``-m`` (a single run ignores
    launchers and sweepers), ``launcher=slurm`` where there is no SLURM, or a ``sweep=`` grid
    together with an Optuna search."""
    picks = chosen(argv)
    grid = [a.split("=", 1) for a in argv if a.split("=", 1)[0].lstrip("+") == "sweep"
            and "=" in a and not a.startswith("-")]
    if grid and any(g in ("search", "hydra/sweeper") for g, _ in picks):
        raise UserError(
            f"sweep={grid[-1][1]} sets a grid for the plain sweeper and does not mix with an "
            "Optuna search; drop it and give the keys to search on the command line, e.g. "
            "'loss.beta=choice(1,4)' or 'optimizer.lr=tag(log,interval(1e-4,1e-2))'")
    multirun = any(a in ("-m", "--multirun") for a in argv)
    inspect = any(a == f or a.startswith(f + "=") for a in argv for f in _INSPECT)
    for group, option in picks:
        extra, plugin, library = PLUGINS[(group, option)]
        if not installed(plugin, library):
            raise UserError(
                f"{group}={option} needs the {extra} extra, which is not installed: "
                f'pip install -e ".[{extra}]" in the repository (or pip install '
                f"{plugin.replace('_', '-')})")
        if not multirun and not inspect:
            raise UserError(
                f"{group}={option} only acts on a sweep: add -m (python -m vae_train -m "
                f"{group}={option} ...; a sweep of one job is fine)")
        if option in ("slurm", "submitit_slurm") and not inspect and not (
                shutil.which("sbatch") and shutil.which("srun")):
            raise UserError(
                f"{group}={option}: no SLURM on this machine (sbatch/srun not on PATH); run "
                "the command on the cluster's login node, or launcher=submitit_local to run "
                "the same jobs here")


# -- the Optuna sweeper's failed trials --------------------------------------------------------
def _tell_failed_without_values(tell):
    """Optuna's ``Study.tell``, but a FAIL/PRUNED state drops the values given with it (which
    Optuna would reject), and the grid sampler's end on a failed trial is not an error."""

    @functools.wraps(tell)
    def wrapper(self, trial, values=None, state=None, *args, **kwargs):
        import optuna

        failed = state in (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED)
        if failed:
            values = None
        try:
            if state is None:
                return tell(self, trial, values, *args, **kwargs)
            return tell(self, trial, values, state, *args, **kwargs)
        except RuntimeError as e:
            # The grid sampler stops the study when its last point is told, from outside an
            # objective, which Optuna refuses; the plugin forgives that for a finished trial
            # only. The failed trial is recorded by then, so forgive it here too.
            if failed and "Study.stop" in str(e):
                return None
            raise

    wrapper._vae_train_mended = True
    return wrapper


def _sweep_mended(sweep):
    @functools.wraps(sweep)
    def wrapper(self, arguments):
        import optuna

        if not getattr(optuna.study.Study.tell, "_vae_train_mended", False):
            optuna.study.Study.tell = _tell_failed_without_values(optuna.study.Study.tell)
        try:
            return sweep(self, arguments)
        except ValueError as e:  # every trial failed: Optuna has no best trial to report
            if "No trials are completed yet" not in str(e):
                raise
            log.error("error: no trial of the search finished (each failed one has a "
                      "failed.json with the reason); no optimization_results.yaml written")
            return None

    wrapper._vae_train_mended = True
    return wrapper


class MendOptunaSweeper(Callback):
    """A Hydra callback (hydra.callbacks in configs/search/optuna.yaml): before the search
    starts, mend the Optuna sweeper so that a failed trial (NaN) does not end the search.
    Hydra re-imports its plugins' public modules while it discovers them, so the mend goes
    into the sweeper's implementation module, which it does not; it is applied only when an
    Optuna search runs (it imports Optuna)."""

    def on_multirun_start(self, config, **kwargs) -> None:
        if "hydra_optuna_sweeper" in str(config.hydra.sweeper.get("_target_", "")):
            mend_optuna_sweeper()


def mend_optuna_sweeper() -> None:
    """Wrap the installed Optuna sweeper's ``sweep``, and Optuna's ``Study.tell`` within it."""
    try:  # a later plugin release may move or fix it: then leave it as it is
        from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
    except ImportError:
        return
    if not getattr(OptunaSweeperImpl.sweep, "_vae_train_mended", False):
        OptunaSweeperImpl.sweep = _sweep_mended(OptunaSweeperImpl.sweep)
