"""Every change vae-train makes to another library at run time, each with the reason and a
version guard: where the library moved on, the patch is not applied (and what it mended
works as the library does).

* :func:`fix_hydra_now` - Hydra's ``${now:...}`` resolver reads the clock of each process, so
  the ranks of one torchrun job would name different run directories (hydra-core 1.x).
* :func:`mend_optuna_sweeper` - hydra-optuna-sweeper 1.3.x with Optuna 2.x aborts the whole
  search when one trial returns NaN (Hydra issue #2237, fixed upstream after 1.3.0).
* :func:`lazy_dynamo` - PyTorch imports ``torch._dynamo`` (the compiler's front end, about as
  long to import as torch itself) the first time an optimizer is built or stepped, or an op
  runs on meta tensors, only to mark those functions "not to be compiled": with
  ``torch.compile`` never called there is nothing to mark. Until something imports it
  (``device.compile=true``), those functions run as they are; after that, as PyTorch has them.
* :func:`fast_linears` - on a CPU in float32, ``nn.Linear`` through oneDNN's matmul with a
  pre-packed weight (PyTorch's private ``torch.ops.mkldnn`` linear ops), for ``evaluate``'s
  importance sampling: about 2x on AMD processors, where MKL's sgemm runs its AVX2 kernels.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import logging
import sys
import types
from importlib import metadata

import torch
import torch.nn.functional as F
from hydra.experimental.callback import Callback
from torch import nn

log = logging.getLogger("vae_train")


def _version(dist: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in metadata.version(dist).split(".")[:2] if p.isdigit())
    except (metadata.PackageNotFoundError, ValueError):
        return ()


# -- torch._dynamo, imported only by what compiles ---------------------------------------------
class _DisableWhenLoaded:
    """What a ``torch._disable_dynamo`` function calls in place of ``torch._dynamo.disable(fn)``:
    ``fn`` itself while ``torch._dynamo`` is not imported (then no frame is being compiled, and
    there is nothing to disable), PyTorch's own disabled function from the first call after it
    is (which then replaces this object)."""

    __slots__ = ("fn", "recursive")

    def __init__(self, fn, recursive: bool):
        self.fn, self.recursive = fn, recursive

    def __call__(self, *args, **kwargs):
        dynamo = sys.modules.get("torch._dynamo")
        if dynamo is None:
            return self.fn(*args, **kwargs)
        real = dynamo.disable(self.fn, self.recursive, wrapping=False)
        setattr(self.fn, "__dynamo_disable", real)   # (a literal name: no class-private mangling)
        return real(*args, **kwargs)


def _use_grad_when_loaded(step):
    """An optimizer's ``step`` as ``torch.optim.optimizer._use_grad_for_differentiable`` makes
    it (gradients on only for a differentiable optimizer), with its two
    ``torch._dynamo.graph_break()`` calls made only when ``torch._dynamo`` is imported (outside
    a compiled frame they do nothing)."""

    def _use_grad(*args, **kwargs):
        self, dynamo = args[0], sys.modules.get("torch._dynamo")
        prev_grad = torch.is_grad_enabled()
        try:
            torch.set_grad_enabled(self.defaults["differentiable"])
            if dynamo is not None:
                dynamo.graph_break()
            ret = step(*args, **kwargs)
        finally:
            dynamo = sys.modules.get("torch._dynamo")
            if dynamo is not None:
                dynamo.graph_break()
            torch.set_grad_enabled(prev_grad)
        return ret

    functools.update_wrapper(_use_grad, step)
    _use_grad.lazy_dynamo = True
    return _use_grad


@functools.cache
def lazy_dynamo() -> int:
    """Let ``torch._dynamo`` be imported only by what compiles (``torch.compile``): the
    functions PyTorch wraps with ``torch._disable_dynamo`` (optimizers' ``zero_grad``,
    ``add_param_group``, ``state_dict``; the Python meta kernels the memory estimate runs) and
    every ``torch.optim`` optimizer's ``step`` stop importing it just to mark themselves. Saves
    about 1.5-2 s of every training run's start on a CPU; nothing computed changes. Applied
    once per process (a scan of the objects in memory, about 0.05 s); returns how many
    functions it changed (0 where PyTorch's internals are not as expected: nothing is
    changed then)."""
    if "torch._dynamo" in sys.modules:       # already paid for
        return 0
    import gc

    import torch._compile
    import torch.optim.optimizer as optimizer

    try:
        inner = torch._compile._disable_dynamo(lambda: None).__code__
        use_grad = optimizer._use_grad_for_differentiable(lambda self: None).__code__
    except Exception:  # noqa: BLE001 - another PyTorch: leave it as it is
        return 0
    if not {"fn", "recursive"} <= set(inner.co_freevars):
        return 0
    changed = 0
    for obj in gc.get_objects():
        if type(obj) is not types.FunctionType or obj.__code__ is not inner:
            continue
        cells = dict(zip(obj.__code__.co_freevars, obj.__closure__ or ()))
        fn = cells["fn"].cell_contents
        if getattr(fn, "__dynamo_disable", None) is None:
            setattr(fn, "__dynamo_disable",
                    _DisableWhenLoaded(fn, cells["recursive"].cell_contents))
            changed += 1
    todo = [torch.optim.Optimizer]
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        step = cls.__dict__.get("step")
        hooked = bool(getattr(step, "hooked", False))   # wrapped by an instance's __init__
        wrapped = getattr(step, "__wrapped__", None) if hooked else step
        if getattr(wrapped, "__code__", None) is not use_grad or \
                not hasattr(wrapped, "__wrapped__"):
            continue
        new = _use_grad_when_loaded(wrapped.__wrapped__)
        if hooked:
            new = optimizer.Optimizer.profile_hook_step(new)
            new.hooked = True
        cls.step = new
        changed += 1
    return changed


# -- Hydra's clock ------------------------------------------------------------------------------
def fix_hydra_now(timestamp: float) -> bool:
    """Make Hydra's ``now`` resolver return ``timestamp`` in this process, so every rank's
    ``outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}`` is the same directory. Returns whether it
    could (hydra-core 1.x, whose resolver reads ``hydra.core.utils.datetime``)."""
    import hydra.core.utils as hydra_utils

    if _version("hydra-core")[:1] != (1,) or getattr(hydra_utils, "datetime", None) is not \
            _dt.datetime:
        log.warning("this Hydra version's clock cannot be shared between processes: give "
                    "hydra.run.dir= so that every rank writes the same run directory")
        return False
    fixed = _dt.datetime.fromtimestamp(timestamp)

    class _Fixed(_dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return fixed if tz is None else fixed.astimezone(tz)

    hydra_utils.datetime = _Fixed   # read by the resolver setup_globals() registers
    return True


# -- the Optuna sweeper's failed trials ------------------------------------------------------------
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

    wrapper.vae_train_mended = True
    return wrapper


def _sweep_mended(sweep):
    @functools.wraps(sweep)
    def wrapper(self, arguments):
        import optuna

        if not getattr(optuna.study.Study.tell, "vae_train_mended", False):
            optuna.study.Study.tell = _tell_failed_without_values(optuna.study.Study.tell)
        try:
            return sweep(self, arguments)
        except ValueError as e:  # every trial failed: Optuna has no best trial to report
            if "No trials are completed yet" not in str(e):
                raise
            log.error("error: no trial of the search finished (each failed one has a "
                      "failed.json with the reason); no optimization_results.yaml written")
            return None

    wrapper.vae_train_mended = True
    return wrapper


def mend_optuna_sweeper() -> bool:
    """Wrap the installed Optuna sweeper's ``sweep``, and Optuna's ``Study.tell`` within it,
    for hydra-optuna-sweeper 1.3.x with Optuna 2.x (the versions with the defect); returns
    whether it did."""
    if _version("hydra-optuna-sweeper") != (1, 3) or _version("optuna")[:1] != (2,):
        return False
    try:
        from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
    except ImportError:   # the plugin's implementation moved: leave it as it is
        return False
    if not getattr(OptunaSweeperImpl.sweep, "vae_train_mended", False):
        OptunaSweeperImpl.sweep = _sweep_mended(OptunaSweeperImpl.sweep)
    return True


class MendOptunaSweeper(Callback):
    """A Hydra callback (``hydra.callbacks`` in configs/search/optuna.yaml): before the search
    starts, mend the Optuna sweeper so that a failed trial (NaN) does not end the search.
    Hydra re-imports its plugins' public modules while it discovers them, so the mend goes
    into the sweeper's implementation module, which it does not; it is applied only when an
    Optuna search runs (it imports Optuna)."""

    def on_multirun_start(self, config, **kwargs) -> None:
        if "hydra_optuna_sweeper" in str(config.hydra.sweeper.get("_target_", "")):
            mend_optuna_sweeper()


# -- oneDNN linears for evaluate ----------------------------------------------------------------
ONEDNN_TILE = 2048   # the batch the packed weights are laid out for (evaluate's CPU tile)
# The guard here is functional rather than a version number: each layer's oneDNN forward is
# checked against float64 when it is patched, and a missing or renamed op, or a result that
# disagrees, keeps F.linear for that layer.


def _onednn_linear_forward(lin: nn.Linear):
    """A forward for ``lin`` through oneDNN's fp32 matmul with a pre-packed weight; None if
    the op is missing or disagrees with F.linear. Gradients and other dtypes or devices go
    to F.linear."""
    weight, bias = lin.weight.detach(), None if lin.bias is None else lin.bias.detach()
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, ONEDNN_TILE)

        def forward(x):
            if (torch.is_grad_enabled() or x.dtype != torch.float32
                    or x.device.type != "cpu" or x.dim() < 2):
                return F.linear(x, lin.weight, lin.bias)
            return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

        probe = torch.randn(3, lin.in_features, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            got = forward(probe).double()
            ref = F.linear(probe.double(), weight.double(),
                           None if bias is None else bias.double())
        scale = probe.abs().double() @ weight.abs().double().T + 1.0
        if got.shape != ref.shape or not bool(((got - ref).abs() <= 1e-5 * scale).all()):
            return None
        return forward
    except Exception:       # no oneDNN in this build, an op renamed: keep F.linear
        return None


@contextlib.contextmanager
def fast_linears(model):
    """While inside: on a CPU in float32, every ``nn.Linear`` of ``model`` multiplies with
    oneDNN, which uses the CPU's AVX-512 units where MKL's sgemm (PyTorch's default) runs
    its AVX2 kernels on AMD processors (about 2x, the same fp32 products in another order:
    results agree to ~1e-6). Restored on exit; elsewhere nothing changes."""
    patched = []
    try:
        if torch.backends.mkldnn.is_available():
            for m in model.modules():
                if (type(m) is nn.Linear and m.weight.device.type == "cpu"
                        and m.weight.dtype == torch.float32 and "forward" not in vars(m)):
                    forward = _onednn_linear_forward(m)
                    if forward is not None:
                        m.forward = forward
                        patched.append(m)
        yield len(patched)
    finally:
        for m in patched:
            del m.forward


# -- Hydra's record of a run ---------------------------------------------------------------------
# What <run dir>/.hydra/*.yaml held before Hydra rewrote them in this process (None: no file).
HYDRA_BACKUPS: dict[str, bytes | None] = {}


def keep_hydra_backups() -> bool:
    """Hydra writes a job's ``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml``
    before the job runs (hydra-core 1.x, ``hydra.core.utils._save_config``), so a job that is
    then refused (its directory holds another run's results, or another process's) would have
    rewritten that run's record. Keep what the files held, so :func:`restore_hydra_files`
    puts it back. Returns whether the hook is in place."""
    import hydra.core.utils as hydra_utils

    save = getattr(hydra_utils, "_save_config", None)
    if save is None or getattr(save, "keeps_backups", False):
        return save is not None

    @functools.wraps(save)
    def saving(cfg, filename, output_dir):
        from pathlib import Path

        path = Path(output_dir) / str(filename)
        try:
            HYDRA_BACKUPS.setdefault(str(path), path.read_bytes() if path.is_file() else None)
        except OSError:   # unreadable: nothing to put back
            HYDRA_BACKUPS.setdefault(str(path), None)
        return save(cfg, filename, output_dir)

    saving.keeps_backups = True
    hydra_utils._save_config = saving
    return True


def restore_hydra_files(run_dir, only_existing: bool = False) -> None:
    """Put back ``<run_dir>/.hydra/*.yaml`` as they were before this process wrote them
    (``only_existing``: only those that existed; new ones stay)."""
    from pathlib import Path

    folder = Path(run_dir) / ".hydra"
    for name, data in list(HYDRA_BACKUPS.items()):
        path = Path(name)
        if path.parent != folder:
            continue
        if data is None and only_existing:
            continue
        try:
            if data is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(data)
        except OSError:
            pass
        HYDRA_BACKUPS.pop(name, None)


# -- Hydra's own error messages ------------------------------------------------------------------
def one_line(text: str) -> str:
    """Hydra's multi-line message (a bad override, an unknown key or option) as one line: its
    lines joined, options listed with commas, without the config search path and the
    pointers to HYDRA_FULL_ERROR and the grammar's web page."""
    text = str(text).split("Config search path:")[0]
    out: list[str] = []
    listing = False
    for ln in (ln.strip() for ln in text.splitlines()):
        if not ln or "HYDRA_FULL_ERROR" in ln or ln.startswith(("See https://", "full_key:",
                                                               "object_type=")) \
                or set(ln) <= {"^", " "}:
            continue
        if ln.startswith("Available options in"):
            out.append(ln.rstrip(":").replace("Available", "available") + ":")
            listing = True
        elif listing and " " not in ln:
            out[-1] += (" " if out[-1].endswith(":") else ", ") + ln
        else:
            listing = False
            out.append(ln.rstrip("."))
    return "; ".join(dict.fromkeys(out)) or "the command line could not be composed"


def one_line_hydra_errors() -> bool:
    """hydra-core 1.x prints what goes wrong before a job runs (an override it cannot parse,
    a key or option that does not exist) over several lines, or as a stack trace for an
    error it does not expect, and exits with status 1. Print one line, ``error: ...``, and exit
    with status 2 like every other error of the user's; ``HYDRA_FULL_ERROR=1`` still shows
    Hydra's own report. Returns whether the patch is in place."""
    import os
    import sys

    import hydra._internal.utils as hydra_utils
    from hydra.errors import OverrideParseException

    report = getattr(hydra_utils, "run_and_report", None)
    if report is None or getattr(report, "one_line", False):
        return report is not None

    @functools.wraps(report)
    def run_and_report(func):
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            return report(func)
        try:
            return func()
        except Exception as ex:  # noqa: BLE001 - what Hydra would have printed, in one line
            cause = ex.__cause__
            text = one_line(f"{ex}\n{cause}" if cause is not None and str(cause) not in str(ex)
                            else str(ex))
            if isinstance(ex, OverrideParseException):
                bad = [a for a in sys.argv[1:] if "=" in a and _unparsable(a)]
                text = f"cannot parse {bad[0]!r} ({text}); see Hydra's override grammar" \
                    if bad else f"{text}; see Hydra's override grammar"
            if not isinstance(ex, hydra_utils.CompactHydraException) and \
                    type(ex).__name__ not in text:
                text = f"{type(ex).__name__}: {text}"
            print(f"error: {text}", file=sys.stderr)
            sys.exit(2)

    run_and_report.one_line = True
    hydra_utils.run_and_report = run_and_report
    return True


def _unparsable(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        OverridesParser.create().parse_overrides([override])
    except Exception:  # noqa: BLE001
        return True
    return False
