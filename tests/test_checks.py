"""The value rules (vae_train.checks): a class's rules run in its constructor and are found
through a config's _target_; a _target_ that cannot be imported is one line saying why."""

from __future__ import annotations

import sys

import pytest

from vae_train.checks import Checked, integer, locate, number, optional, rules_of, target_rules
from vae_train.errors import UserError


class Base(Checked):
    config_group = "model"
    checks = {"width": integer(1)}

    def __init__(self, width=4, **rest):
        self.width = width


class Child(Base):
    checks = {"rate": optional(number(0, 1)), "width": integer(2)}   # its own rule for width

    def __init__(self, rate=None, **rest):
        super().__init__(**rest)
        self.rate = rate


def test_a_constructor_checks_its_arguments_and_its_bases_with_the_full_key():
    assert Child(rate=0.5, width=3).width == 3
    with pytest.raises(UserError, match=r"^model.width=1 is invalid: it must be an integer >= 2$"):
        Child(width=1)                     # the subclass's rule wins, also through **rest
    with pytest.raises(UserError, match=r"^model.rate=2 is invalid: it must be null or a number"):
        Child(rate=2)
    with pytest.raises(UserError, match=r"^model.width=0 is invalid: it must be a positive"):
        Base(width=0)
    assert set(rules_of(Child)) == {"width", "rate"}


def test_rules_are_found_through_target():
    assert set(target_rules({"_target_": f"{__name__}.Child", "rate": 1})) == {"width", "rate"}
    assert target_rules({"_target_": "torch.optim.Adam"}) == {}     # not ours: no rules
    assert target_rules({"lr": 1}) == {}


def test_a_target_that_cannot_be_imported_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"model._target_=no_such_module.Thing cannot be found"
                                        r".*PYTHONPATH"):
        locate("no_such_module.Thing", "model._target_")
    with pytest.raises(UserError, match=r"cannot be found"):
        locate("vae_train.models.vae.NoSuchClass")
    # a module of the user's that fails on import: its own error, not "cannot be found"
    (tmp_path / "my_broken.py").write_text("import my_missing_dependency\n")
    (tmp_path / "my_raising.py").write_text("raise RuntimeError('bad setup')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match=r"importing my_broken failed: No module named "
                                        r"'my_missing_dependency'"):
        locate("my_broken.Model", "model._target_")
    with pytest.raises(UserError, match=r"importing my_raising failed: RuntimeError: bad setup"):
        locate("my_raising.Model")
    sys.modules.pop("my_broken", None)
    assert locate("vae_train.models.vae.VAE").__name__ == "VAE"
