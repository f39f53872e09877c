"""Value rules for the options a class is built from, written next to the class, and the check
that runs every rule of a composed config before any data is read.

A class built from config (a model, an objective, a data set) derives from :class:`Checked`,
names its config node in ``config_group`` and maps its constructor arguments to rules in
``checks``. Its constructor then refuses a bad value with one line naming the full config key
(``model.latent_dim=0 is invalid: it must be a positive integer``), and :func:`validate` finds
the same rules through the config node's ``_target_``, so a bad value is refused before any
data is read. Nodes that build no object of ours (``trainer``, ``device``, the optimizer's
torch class) pass their rules to :func:`validate` from the module that owns them.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from omegaconf import DictConfig, OmegaConf

from vae_train.errors import UserError


def is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_num(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Rule:
    """``test(value)`` must be true; ``what`` completes "it must be ..."."""

    test: Callable[[Any], bool]
    what: str

    def ok(self, value) -> bool:
        try:
            return bool(self.test(value))
        except TypeError:   # a list where a number belongs, ...
            return False


# The largest integer an option may hold: seeds, sizes and counts end up in int64 tensors and
# generators; beyond it they overflow deep inside torch or numpy.
INT_MAX = 2**63 - 1


def integer(low: int = 1, what: str | None = None, high: int = INT_MAX) -> Rule:
    return Rule(lambda v: is_int(v) and low <= v <= high,
                what or ("a positive integer" if low == 1 else f"an integer >= {low}"))


def number(low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False, what: str | None = None) -> Rule:
    """A finite number in the interval given by the bounds (closed unless ``*_open``)."""
    def test(v) -> bool:
        return is_num(v) and (low is None or (v > low if low_open else v >= low)) and (
            high is None or (v < high if high_open else v <= high))

    if what is None:
        if high is None:
            what = f"a number {'>' if low_open else '>='} {low:g}"
        else:
            what = (f"a number in {'(' if low_open else '['}{low:g}, {high:g}"
                    f"{')' if high_open else ']'}")
    return Rule(test, what)


def optional(rule: Rule, what: str | None = None) -> Rule:
    """null, or what ``rule`` allows."""
    return Rule(lambda v: v is None or rule.test(v), what or f"null or {rule.what}")


def int_list(nonempty: bool = False) -> Rule:
    return Rule(lambda v: (len(v) > 0 or not nonempty) and all(is_int(h) and 0 < h <= INT_MAX for h in v),
                "a non-empty list of positive integers" if nonempty
                else "a list of positive integers")


CLASS_LABELS = Rule(lambda v: not isinstance(v, (str, bytes)) and len(v) > 0
                    and all(is_int(c) and c >= 0 for c in v),
                    "a list of class labels (integers >= 0)")


def one_of(*choices, what: str | None = None) -> Rule:
    return Rule(lambda v: v in choices, what or ", ".join(map(str, choices[:-1]))
                + f" or {choices[-1]}")


BOOLEAN = Rule(lambda v: isinstance(v, bool), "true or false")


def invalid(key: str, value, rule: Rule) -> UserError:
    """The one-line message for ``key=value`` breaking ``rule``."""
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:60] + "..." + shown[-10:]
    if is_int(value) and abs(value) > INT_MAX:
        return UserError(f"{key}={shown} is invalid: it is too large (at most 2^63-1); it "
                         f"must be {rule.what}")
    return UserError(f"{key}={shown} is invalid: it must be {rule.what}")


def keyword_options(cls, skip: int = 0, exclude=()) -> list[str] | None:
    """The options ``cls(...)`` takes by name, after its first ``skip`` parameters and
    without ``exclude``; None when it takes any (``**kwargs``) or shows no signature."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return [n for n, p in list(params.items())[skip:] if n not in exclude
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_values(group: str, rules: Mapping[str, Rule], values: Mapping) -> None:
    """Raise one line naming ``group.key`` for the first value that breaks its rule."""
    for key, rule in rules.items():
        if key in values and not rule.ok(values[key]):
            raise invalid(f"{group}.{key}" if group else key, values[key], rule)


class Checked:
    """A class built from config whose constructor checks its arguments (see the module)."""

    config_group: ClassVar[str] = ""
    checks: ClassVar[dict[str, Rule]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "checks_arguments", False):
            return
        signature = inspect.signature(init)
        var_keyword = [n for n, p in signature.parameters.items() if p.kind is p.VAR_KEYWORD]

        @functools.wraps(init)
        def checked_init(self, *args, **kw):
            if type(self).__init__ is checked_init:   # the outermost constructor checks once
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                values = dict(bound.arguments)
                for name in var_keyword:            # **kw passed on to a base class
                    values.update(values.pop(name, {}))
                check_values(type(self).config_group, rules_of(type(self)), values)
            init(self, *args, **kw)

        checked_init.checks_arguments = True
        cls.__init__ = checked_init


def rules_of(cls: type) -> dict[str, Rule]:
    """A class's rules with those of its bases (a subclass's rule for a key wins)."""
    rules: dict[str, Rule] = {}
    for klass in reversed(cls.__mro__):
        if issubclass(klass, Checked):
            rules.update(klass.__dict__.get("checks", {}))
    return rules


def locate(target: str, key: str = "_target_"):
    """The object a ``_target_`` names (``package.module.Class``); one line naming ``key``
    when it cannot be imported."""
    parts = str(target).split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and (module == e.name or module.startswith(e.name + ".")):
                continue   # this prefix is not a module: try a shorter one
            raise UserError(f"{key}={target}: importing {module} failed: {e}") from None
        except Exception as e:  # noqa: BLE001 - the user's module failed on import
            raise UserError(f"{key}={target}: importing {module} failed: "
                            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                            ) from None
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
            return obj
        except AttributeError:
            break
    raise UserError(f"{key}={target} cannot be found: no such module or class (is the folder "
                    "that holds its module on PYTHONPATH?)")


def target_rules(node, key: str = "_target_") -> dict[str, Rule]:
    """The rules of the class a config node builds (its ``_target_``); none for a class that
    is not :class:`Checked` (a torch optimizer)."""
    target = node.get("_target_") if isinstance(node, (DictConfig, Mapping)) else None
    if not target:
        return {}
    cls = locate(str(target), key)
    return rules_of(cls) if isinstance(cls, type) and issubclass(cls, Checked) else {}


# Nodes of the training config that build one of our classes from their ``_target_``.
TARGET_NODES = ("model", "loss", "dataset")


def all_rules(cfg: DictConfig, fixed: Mapping[str, Mapping[str, Rule]]) -> dict[str, Rule]:
    """Full key -> rule for a composed config: ``fixed`` (node path -> rules, "" for top-level
    keys) and the rules of every node's ``_target_`` class."""
    out: dict[str, Rule] = {}
    order = ["model", "loss", "optimizer", "trainer", "dataset", "device"]
    for path in [*order, *(p for p in fixed if p not in order)]:
        rules = dict(target_rules(OmegaConf.select(cfg, path, default=None),
                                  f"{path}._target_") if path in TARGET_NODES else {})
        rules.update(fixed.get(path, {}))
        out.update({f"{path}.{k}" if path else k: r for k, r in rules.items()})
    return out


_MISSING = object()


def validate(cfg: DictConfig, fixed: Mapping[str, Mapping[str, Rule]]) -> None:
    """Run every rule on the composed config; the first bad value is one line naming its key."""
    for key, rule in all_rules(cfg, fixed).items():
        node = OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=False)
        if node is _MISSING:
            continue
        value = OmegaConf.to_object(node) if OmegaConf.is_config(node) else node
        if not rule.ok(value):
            raise invalid(key, value, rule)
