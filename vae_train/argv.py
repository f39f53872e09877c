"""The command line before Hydra sees it.

* ``resume=PATH`` becomes the overrides the checkpoint was trained with, then the new ones,
  running in the checkpoint's run directory;
* in a sweep, each job's directory is named by the swept keys only;
* started by torchrun or srun, the process joins the others and all agree on one run
  directory;
* paths given to ``evaluate``, ``sample`` and ``report`` (``run=``, ``out=``, a sweep
  directory) are quoted for Hydra's override grammar: sweep run directories hold ``=`` and
  ``,`` (``3_loss.beta=1,model.latent_dim=16``).
"""

from __future__ import annotations

from pathlib import Path

from vae_train import distributed
from vae_train.errors import UserError
from vae_train.patches import fix_hydra_now

# Config groups that say how a sweep runs, not what a run is.
SWEEP_GROUPS = ("launcher", "search", "sweep")
# Keys that hold for one command only: never kept in a checkpoint for resume=.
COMMAND_LINE_ONLY = ("resume", "overwrite", "trust_run_code")


def override_key(override: str) -> str:
    """``+model.latent_dim=3`` -> ``model.latent_dim``."""
    return override.split("=", 1)[0].lstrip("+~")


def unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1].replace("\\" + value[0], value[0])
    return value


def quote(value) -> str:
    """A value for Hydra's override grammar, taken literally."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def multirun(argv: list[str]) -> bool:
    return any(a in ("-m", "--multirun") for a in argv)


# -- resume: re-run the saved composition in the same run directory ---------------------------
def find_run(path: str) -> tuple[Path | None, Path]:
    """(run directory or None, checkpoint) for a ``resume=`` value: a run directory, or a
    checkpoint file (inside its run directory, or copied anywhere)."""
    p = Path(unquote(path)).expanduser()
    if not p.exists():
        raise UserError(f"resume={path}: no such file or directory; give a run directory "
                        "(outputs/<date>/<time>) or a checkpoint file")
    ckpt = p / "checkpoints" / "last.pt" if p.is_dir() else p
    if p.is_dir() and not (p / ".hydra").is_dir() and not ckpt.is_file():
        raise UserError(f"resume={path}: not inside a vae-train run directory (no .hydra/ and "
                        "no checkpoints/last.pt)")
    if not ckpt.is_file():
        raise UserError(f"resume={path}: {ckpt} does not exist (the run stopped before its first "
                        "epoch ended); start it again without resume=")
    run_dir = next((d for d in [ckpt.parent, *ckpt.parents] if (d / ".hydra").is_dir()), None)
    return (run_dir.resolve() if run_dir else None), ckpt.resolve()


def resume_argv(argv: list[str]) -> list[str]:
    """Rewrite a command line with ``resume=PATH`` into the overrides the checkpoint was trained
    with followed by the new ones (later wins), running in the checkpoint's run directory (a
    new one when the checkpoint was copied out of it)."""
    from vae_train import checkpoint, rundir, trust
    from vae_train.compat import model_overrides

    resume = [a for a in argv if override_key(a) == "resume"]
    if not resume or unquote(resume[-1].split("=", 1)[1]) in ("", "null"):
        return argv
    if multirun(argv):
        raise UserError("resume= continues one run; it cannot be combined with -m/--multirun")
    run_dir, ckpt = find_run(resume[-1].split("=", 1)[1])
    # How the sweep was run (launcher, search, preset) is not part of the run: a resume is one
    # run in this process, and must not need the plugins that launched it. Nor are the
    # flags that only this command line may give (a checkpoint cannot trust itself).
    state = checkpoint.load(ckpt)
    trusted = any(override_key(a) == "trust_run_code" and
                  unquote(a.split("=", 1)[1]).lower() == "true" for a in argv if "=" in a)
    where = f"checkpoint {ckpt}"
    trust.check_config(state.get("config") or {}, where, trusted)
    trust.check_overrides(state.get("overrides", []), where, trusted)
    if run_dir is not None:
        rundir.check_checkpoint_belongs(run_dir, ckpt, state)
    saved = [o for o in state.get("overrides", []) if override_key(o) not in SWEEP_GROUPS
             and override_key(o) not in COMMAND_LINE_ONLY]
    # logger= / callbacks= chosen anew: the run's settings of its old choices go with them
    regrouped = {override_key(a) for a in argv if "=" in a and override_key(a) in LIST_GROUPS}
    saved = [o for o in saved if not any(override_key(o).startswith(g + ".") for g in regrouped)]
    # the model as it was built, whatever its YAML says now (vae_train.compat)
    pinned = model_overrides(state.get("config"))
    merged: dict[str, str] = {}
    for o in [*saved, *pinned, *(a for a in argv if "=" in a and not a.startswith("-"))]:
        merged[override_key(o)] = o
    merged["resume"] = f"resume={quote(ckpt)}"
    if run_dir is not None:
        merged.setdefault("hydra.run.dir", f"hydra.run.dir={quote(run_dir)}")
    flags = [a for a in argv if "=" not in a or a.startswith("-")]
    return flags + list(merged.values())


def run_dir_of(argv: list[str]) -> str | None:
    """The run directory a command line names with ``hydra.run.dir=`` (resume sets it)."""
    return next((unquote(a.split("=", 1)[1]) for a in argv if a.startswith("hydra.run.dir=")),
                None)


def absolute_searchpath(argv: list[str]) -> list[str]:
    """``hydra.searchpath=[file://conf]`` (a folder of your own configs) with the folder made
    absolute, so that the run (and a resume of it from elsewhere) finds it from anywhere."""
    out = []
    for a in argv:
        if override_key(a) == "hydra.searchpath" and "=" in a:
            key, value = a.split("=", 1)
            items = [unquote(v.strip()) for v in value.strip().strip("[]").split(",") if v.strip()]
            items = [f"file://{Path(i[7:]).expanduser().resolve()}"
                     if i.startswith("file://") else i for i in items]
            a = f"{key}=[{','.join(quote(i) for i in items)}]"
        out.append(a)
    return out


def kept_for_resume(task: list[str], hydra_overrides: list[str]) -> list[str]:
    """The overrides a checkpoint keeps for ``resume=``: the command line's, without
    ``resume=`` itself, and the search path of the user's own configs (a model or data set of
    their own must be found again)."""
    return ([o for o in task if override_key(o) not in COMMAND_LINE_ONLY]
            + [o for o in hydra_overrides if override_key(o) == "hydra.searchpath"])


# Groups whose options are a list (several at once): "none" is spelt as the empty list on
# Hydra's command line, and `group=null` (the Lightning-Hydra template's spelling) means it.
LIST_GROUPS = ("logger", "callbacks")


def null_groups(argv: list[str]) -> list[str]:
    """``logger=null`` / ``callbacks=null`` (which Hydra refuses for a group) as ``=[]``."""
    out = []
    for a in argv:
        key, eq, value = a.partition("=")
        if eq and key in LIST_GROUPS and value.strip().lower() in ("null", "none"):
            a = f"{key}=[]"
        out.append(a)
    return out


# -- sweeps ----------------------------------------------------------------------------------------
def sweep_argv(argv: list[str]) -> list[str]:
    """In a sweep, name each job's directory by the swept keys only: every other key given on
    the command line goes into ``override_dirname.exclude_keys``."""
    if not multirun(argv):
        return argv
    if any(a.startswith("hydra.job.config.override_dirname") for a in argv):
        return argv
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cli = [a for a in argv if "=" in a and not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(cli)
    except Exception:  # noqa: BLE001 - Hydra reports bad overrides itself, in its own words
        return argv
    fixed = {o.key_or_group for o in parsed
             if not o.is_sweep_override() and not o.key_or_group.startswith("hydra")}
    fixed |= {"dataset.root", "resume"}
    return [*argv, f"hydra.job.config.override_dirname.exclude_keys=[{','.join(sorted(fixed))}]"]


# -- several processes ---------------------------------------------------------------------------
def join_processes(argv: list[str]) -> list[str]:
    """Started by torchrun or srun: join the process group, agree on one run directory (rank
    0's clock for Hydra's ``${now:}``), and keep ranks 1.. from writing into it."""
    if not distributed.wanted():
        return argv
    if multirun(argv):
        raise UserError("torchrun/srun run one training run over several processes; a sweep "
                        "(-m) is started once, without torchrun (see docs/distributed.md)")
    try:
        distributed.init()
    except (RuntimeError, ValueError) as e:
        raise UserError(f"cannot join the other processes: {str(e).splitlines()[0]}") from None
    fix_hydra_now(distributed.same_time())
    if distributed.is_main():
        return argv
    return [*argv, "hydra.output_subdir=null", "hydra/job_logging=vae_worker"]


# -- the commands that work on finished runs -------------------------------------------------
# Hydra's flags whose value is the next argument (``-sc install=bash``).
HYDRA_FLAGS_WITH_VALUE = ("--shell-completion", "-sc", "--cfg", "-c", "--package", "-p",
                          "--config-path", "-cp", "--config-name", "-cn", "--config-dir",
                          "-cd", "--info", "-i", "--experimental-rerun")


def quote_paths(argv: list[str], keys: tuple[str, ...], positional: str | None = None
                ) -> list[str]:
    """``key=PATH`` arguments of ``keys`` quoted for Hydra (a path may hold ``=`` and ``,``);
    with ``positional``, the first argument that is no option (no ``key=``; a path whose
    folders hold ``=`` is one) becomes ``<positional>=PATH``."""
    if multirun(argv):   # -m run=a,b: Hydra's sweep syntax; quote a path yourself there
        return list(argv)
    out, found = [], False
    for i, a in enumerate(argv):
        after_flag = i > 0 and argv[i - 1] in HYDRA_FLAGS_WITH_VALUE
        if positional and not found and not after_flag and not a.startswith("-") \
                and ("=" not in a or "/" in a.split("=", 1)[0]):
            a, found = f"{positional}={a}", True
        key, eq, value = a.partition("=")
        if eq and key in keys and value and value[0] not in "'\"" and not after_flag:
            a = f"{key}={quote(value)}"
        out.append(a)
    return out


def check_options(argv: list[str], options: list[str], usage: str) -> None:
    """An option a command does not have (``options``: its full keys) or an argument that is
    no ``key=value`` is one line naming the options (Hydra's own messages list none and span
    several lines); flags, ``hydra.*``, ``+key`` and ``~key`` are left to Hydra."""
    for i, a in enumerate(argv):
        if a.startswith(("-", "+", "~", "hydra.", "hydra/")) or \
                (i and argv[i - 1] in HYDRA_FLAGS_WITH_VALUE):
            continue
        if "=" not in a:
            raise UserError(f"argument {a!r} is not key=value. {usage}")
        key = a.split("=", 1)[0]
        if key not in options:
            raise UserError(f"unknown option {key!r}; options: {', '.join(options)}. "
                            f"{usage}")
