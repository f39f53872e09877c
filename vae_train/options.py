"""What the commands that work on finished runs (``evaluate``, ``sample``, ``report``) check
before they load anything: every option against its rule (types, ranges and upper bounds that
keep time and memory bounded), and that the folder they will write into can be written."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from vae_train.checks import INT_MAX, Rule, check_values, integer
from vae_train.errors import UserError
from vae_train.files import check_writable


def count(low: int, high: int = INT_MAX, what: str | None = None) -> Rule:
    """An integer in [low, high] (``what`` completes "it must be ...")."""
    return integer(low, what or (f"an integer >= {low}" if high == INT_MAX
                                 else f"an integer in [{low}, {high}]"), high)


PATH = Rule(lambda v: isinstance(v, str) and v.strip() != "", "a path")
KEY = Rule(lambda v: isinstance(v, str) and v.strip() != "", "a config key")
SEED = count(0, INT_MAX, "an integer in [0, 2^63-1]")


def check_options(args, checks: dict[str, Rule]) -> None:
    """Every option against its rule (nested ones by their dotted key), one line for the
    first that breaks it; ``key=`` with nothing is null where null is allowed."""
    values = {key: OmegaConf.select(args, key, default=None) for key in checks}
    for key, rule in checks.items():
        if values[key] in (None, ""):
            if not rule.ok(None):
                raise UserError(f"{key}= is empty: it must be {rule.what}")
            OmegaConf.update(args, key, None)      # key= (nothing) means null
            values[key] = None
    check_values("", checks, values)


def check_output(folder: Path, label: str) -> None:
    """One line naming ``label`` (``out=...``) when ``folder`` cannot be written (a read-only
    folder, a file in its place or above it): checked before any work, so that a long command
    does not fail at its end."""
    try:
        check_writable(folder)
    except UserError as e:
        raise UserError(f"{label}: {e}") from None
