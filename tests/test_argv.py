"""The command line before Hydra sees it (vae_train.argv): quoting of paths, the positional
sweep directory, options a command does not have, the user's config folder made absolute."""

from __future__ import annotations

import pytest

from vae_train.argv import absolute_searchpath, check_options, quote_paths
from vae_train.errors import UserError

SWEEP_RUN = "outputs/multirun/2026-11-30/10-00-00/3_loss.beta=1,model.latent_dim=16"


def test_paths_are_quoted_and_a_positional_sweep_directory_is_named():
    assert quote_paths([f"run={SWEEP_RUN}", "k=5"], ("run",)) == [f"run='{SWEEP_RUN}'", "k=5"]
    assert quote_paths([SWEEP_RUN, "x=loss.beta"], ("sweep",), positional="sweep") == \
        [f"sweep='{SWEEP_RUN}'", "x=loss.beta"]
    assert quote_paths(["--cfg", "job", "outputs/s"], ("sweep",), positional="sweep") == \
        ["--cfg", "job", "sweep='outputs/s'"]
    assert quote_paths(["-m", "run=a,b"], ("run",)) == ["-m", "run=a,b"]   # Hydra's sweep


def test_options_a_command_does_not_have_are_one_line():
    options = ["run", "k", "dataset.root"]
    check_options(["run=x", "k=5", "dataset.root=/d", "-sc", "install=bash", "hydra.verbose=1"],
                  options, "usage")
    for args, needle in ((["kk=3"], "unknown option 'kk'"),
                         (["dataset=mnist"], "unknown option 'dataset'"),
                         (["dataset.foo=1"], "unknown option 'dataset.foo'"),
                         (["run=x", "extra"], "argument 'extra' is not key=value")):
        with pytest.raises(UserError, match=needle):
            check_options(args, options, "usage")


def test_the_users_config_folder_is_made_absolute_and_quoted(tmp_path, monkeypatch):
    odd = tmp_path / "a,b=c"
    odd.mkdir()
    monkeypatch.chdir(odd)
    (out,) = absolute_searchpath(["hydra.searchpath=[file://conf]"])
    assert out == f"hydra.searchpath=['file://{odd}/conf']"
    assert absolute_searchpath(["k=1"]) == ["k=1"]


def test_null_for_a_list_group_means_none():
    from vae_train.argv import null_groups

    assert null_groups(["logger=null", "callbacks=None", "model=vae", "dataset.root=null"]) == \
        ["logger=[]", "callbacks=[]", "model=vae", "dataset.root=null"]
