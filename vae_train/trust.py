"""Which classes a run directory may make vae-train build.

A run's ``.hydra/config.yaml``, the config and overrides stored in its checkpoints, name
``_target_`` classes that are imported and called when the model is rebuilt (``evaluate``,
``sample``, ``resume``). A run directory from someone else could name any module on the Python
path, and importing it runs its code. So a run that is opened, not started, may only name
vae-train's own classes and torch's optimizers and schedules; anything else (a model or data set
of your own included) needs ``trust_run_code=true`` on the command line for that run, in the
spirit of ``torch.load(weights_only=True)``. Overrides stored in a checkpoint may not reach
Hydra's own settings (callbacks, launchers, plugins) or import a package as a config search
path (``pkg://``) without the same flag.
"""

from __future__ import annotations

from collections.abc import Iterator

from vae_train.errors import UserError

# Module prefixes whose classes an opened run may name.
ALLOWED = ("vae_train.", "torch.optim.")
FLAG = "trust_run_code=true"


class UntrustedTarget(UserError):
    """A run directory names code outside vae-train's own classes."""


def targets(node, path: str = "") -> Iterator[tuple[str, str]]:
    """(key, target) for every ``_target_`` in a plain container (dicts and lists)."""
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{path}.{k}" if path else str(k)
            if k == "_target_":
                yield key, str(v)
            else:
                yield from targets(v, key)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from targets(v, f"{path}[{i}]")


def allowed(target: str) -> bool:
    return isinstance(target, str) and target.startswith(ALLOWED) and ".." not in target


def check_config(config, where: str, trusted: bool) -> None:
    """Refuse (one line naming the key, the target and the flag) a config that names a class
    outside :data:`ALLOWED`, unless ``trusted``."""
    if trusted:
        return
    from omegaconf import OmegaConf

    if OmegaConf.is_config(config):
        config = OmegaConf.to_container(config, resolve=False)
    for key, target in targets(config):
        if not allowed(target):
            raise UntrustedTarget(
                f"{where} names {key}={target}, which is not one of vae-train's classes: "
                f"building it would run that module's code. If you trust this run "
                f"directory, add {FLAG}")


def check_overrides(overrides: list[str], where: str, trusted: bool) -> None:
    """Stored overrides that would reach Hydra itself (callbacks, plugins) or import a
    package as a config search path are refused unless ``trusted``."""
    if trusted:
        return
    for o in overrides:
        key = str(o).split("=", 1)[0].lstrip("+~")
        value = str(o).split("=", 1)[1] if "=" in str(o) else ""
        bad = (key.startswith("hydra") and key != "hydra.searchpath") or \
            (key == "hydra.searchpath" and "pkg://" in value)
        if bad:
            raise UntrustedTarget(
                f"{where} holds the override {o!r}, which would make Hydra or vae-train "
                f"import code the run names. If you trust this run directory, add {FLAG}")
