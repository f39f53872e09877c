"""debug= presets: fast (one batch of each split), overfit (the same batches: the loss falls
far), profile (a trace and an operator table in the run directory), anomaly (the backward op
that made a NaN is named)."""

import json
import logging
import math

import pytest
import torch

from conftest import TINY, make_trainer, run_cli
from vae_train.errors import NonFiniteError

SMALL = ["dataset=synthetic", "dataset.num_train=400", "dataset.num_test=50",
         "trainer.batch_size=60", "trainer.progress=false"]


def test_fast_trains_one_batch_and_evaluates_one_batch(tmp_path):
    tr = make_trainer([*SMALL, "debug=fast", "trainer.eval_batch_size=20"], tmp_path)
    assert tr.steps_per_epoch == 1 and tr.total_epochs == 1
    tr.fit()
    assert tr.step == 1 and tr.history[-1]["step"] == 1
    seen = []
    batches = tr.data.eval_batches
    tr.data.eval_batches = lambda split, bs: (seen.append(len(split)) or batches(split, bs))
    tr.evaluate(tr.data.test)
    assert seen == [20]                     # the first eval batch of the test set only


def test_overfit_trains_the_same_batches_and_the_loss_falls_far(tmp_path):
    tr = make_trainer([*SMALL, "debug=overfit", "trainer.epochs=40"], tmp_path)
    assert len(tr.data.train) == 2 * 60 and tr.data.val is tr.data.train
    assert tr.steps_per_epoch == 2
    tr.fit()
    first, last = tr.history[0]["val_loss"], tr.history[-1]["val_loss"]
    assert last < 0.5 * first, (first, last)


def test_profile_writes_a_trace_and_an_operator_table(tmp_path):
    tr = make_trainer([*SMALL, "debug=profile", "trainer.profile_steps=3"], tmp_path)
    tr.fit()
    table = (tmp_path / "profile" / "ops.txt").read_text()
    assert "aten::" in table and "Self CPU" in table
    trace = json.loads((tmp_path / "profile" / "trace.json").read_text())
    steps = {e["name"] for e in trace["traceEvents"] if str(e.get("name", "")).startswith(
        "ProfilerStep#")}
    assert len(steps) == 3, steps


def test_profile_of_a_short_run_profiles_what_there_is_and_says_so(tmp_path, caplog):
    tr = make_trainer([*SMALL, "debug=profile", "trainer.profile_steps=50"], tmp_path)
    with caplog.at_level(logging.INFO, logger="vae_train"):
        tr.fit()   # 6 steps: one warm-up, five profiled
    assert "profiled 5 training steps (of trainer.profile_steps=50" in caplog.text
    assert (tmp_path / "profile" / "ops.txt").is_file()


def test_anomaly_names_the_backward_function_that_made_a_nan(tmp_path):
    tr = make_trainer([*SMALL, "debug=anomaly", "trainer.epochs=1"], tmp_path)
    forward = tr.objective.forward

    def nan_in_backward(model, x, y=None, step=None, train=True, phase=None):
        terms = forward(model, x, y, step=step, train=train, phase=phase)
        if train:   # sqrt(0): 0 forward, 0 * inf = NaN backward
            w = next(model.parameters())
            terms["loss"] = terms["loss"] + torch.sqrt(w.sum() * 0.0)
        return terms

    tr.objective.forward = nan_in_backward
    with pytest.warns(UserWarning, match="Error detected in [A-Za-z]+Backward0"):
        with pytest.raises(NonFiniteError, match=r"anomaly detection at step 1 .*Function "
                                                 r"'[A-Za-z]+Backward0' returned nan"):
            tr.fit()
    assert all(torch.isfinite(v).all() for v in tr.model.state_dict().values())


@pytest.mark.slow
def test_debug_fast_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    run_cli([*TINY, "debug=fast", f"hydra.run.dir={run}"], tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 1 and math.isfinite(metrics["test_loss"])
    assert not list(run.glob("*.png"))      # no pictures
