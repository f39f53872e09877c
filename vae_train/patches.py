"""Every change vae-train makes to another library at run time, each with the reason and a
version guard: where the library moved on, the patch is not applied (and what it mended
works as the library does).

* :func:`fix_hydra_now` - Hydra's ``${now:...}`` resolver reads the clock of each process, so
  the ranks of one torchrun job would name different run directories (hydra-core 1.x).
* :func:`mend_optuna_sweeper` - hydra-optuna-sweeper 1.3.x with Optuna 2.x aborts the whole
  search when one trial returns NaN (Hydra issue #2237, fixed upstream after 1.3.0).
* :func:`fast_linears` - on a CPU in float32, ``nn.Linear`` through oneDNN's matmul with a
  pre-packed weight (PyTorch's private ``torch.ops.mkldnn`` linear ops), for ``evaluate``'s
  importance sampling: about 2x on AMD processors, where MKL's sgemm runs its AVX2 kernels.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import logging
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
