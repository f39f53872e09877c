"""The ``launcher=`` and ``search=`` presets run sweeps through Hydra's plugins (joblib,
submitit, Optuna), which are optional extras. :func:`check` looks at the command line before
Hydra composes anything, so a preset whose plugin is missing, or one that cannot do anything
in the command it was given, ends in one line that says what to do.

The Optuna sweeper's defect with failed trials is mended in :mod:`vae_train.patches`.
"""

from __future__ import annotations

import importlib.util
import shutil

from vae_train.errors import UserError

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


def _sweep_preset(argv: list[str]) -> str | None:
    """``experiment=NAME`` or ``sweep=NAME`` on the command line whose file sets a grid
    (``hydra.sweeper.params``); a preset of your own (found through hydra.searchpath) is not
    looked for."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from vae_train import CONFIG_DIR

    for a in argv:
        key, _, value = a.partition("=")
        group = key.lstrip("+")
        if group in ("experiment", "sweep") and value and not a.startswith("-"):
            path = Path(CONFIG_DIR) / group / f"{value}.yaml"
            if path.is_file() and OmegaConf.select(OmegaConf.load(path),
                                                   "hydra.sweeper.params") is not None:
                return f"{group}={value}"
    return None


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
    preset = _sweep_preset(argv)
    if preset and not multirun and not inspect:
        raise UserError(f"{preset} is a sweep (its runs are a grid): add -m "
                        f"(python -m vae_train -m {preset} ...)")
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
