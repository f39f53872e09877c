"""``python -m vae_train.score``: the measures against hand-computed cases, scores on planted
anomalies, the threshold's false-positive rate, the files written, one-line errors; and the
data-set options the protocol needs (``dataset.exclude_classes``, ``dataset.glitches``)."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, run_cli
from vae_train.score import (auroc, average_precision, average_ranks, roc_curve, score_batch,
                             threshold_at, trapezoid_auc)

FIXTURE = Path(__file__).parent / "fixtures" / "run_v0_1"


# -- the measures -----------------------------------------------------------------------------
def test_average_ranks_share_ties():
    assert average_ranks([10, 20, 20, 30]).tolist() == [1, 2.5, 2.5, 4]
    assert average_ranks([5, 5, 5]).tolist() == [2, 2, 2]
    assert average_ranks([3, 1, 2]).tolist() == [3, 1, 2]


def test_auroc_and_auprc_by_hand():
    # anomalies 0.35 and 0.8 against normal 0.1 and 0.4: 3 of 4 pairs ordered
    s, y = [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]
    assert auroc(s, y) == pytest.approx(0.75)
    # descending: 0.8 (hit, P=1 at R=1/2), 0.4 (miss), 0.35 (hit, P=2/3 at R=1)
    assert average_precision(s, y) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_auroc_and_auprc_with_ties_by_hand():
    # anomalies 1, 2, 3; normal 1, 2: pairs (1,1) tie 1/2, (1,2) 0, (2,1) 1, (2,2) 1/2, (3,*) 2
    s, y = [1, 1, 2, 2, 3], [0, 1, 0, 1, 1]
    assert auroc(s, y) == pytest.approx(4 / 6)
    # tie groups enter together: at 3 P=1 R=1/3; at 2 P=2/3 R=2/3; at 1 P=3/5 R=1
    assert average_precision(s, y) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # all tied: chance for both
    assert auroc([7, 7, 7, 7], [0, 1, 0, 1]) == pytest.approx(0.5)
    assert average_precision([7, 7, 7, 7], [0, 1, 0, 0]) == pytest.approx(0.25)
    # perfect and reversed
    assert auroc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0 and auroc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0


def test_roc_curve_area_equals_the_rank_auroc_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + y, 1)          # many ties
    fpr, tpr, thr = roc_curve(s, y)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert len(thr) == len(np.unique(s)) + 1
    assert trapezoid_auc(fpr, tpr) == pytest.approx(auroc(s, y), abs=1e-12)
    # against the definition: P(s+ > s-) + P(s+ = s-) / 2 over all pairs
    pos, neg = s[y == 1], s[y == 0]
    direct = ((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())
    assert auroc(s, y) == pytest.approx(direct, abs=1e-12)


def test_one_kind_only_is_one_line():
    from vae_train.errors import UserError

    with pytest.raises(UserError, match="need both"):
        auroc([1, 2], [1, 1])


def test_threshold_gives_the_asked_rate():
    v = np.random.default_rng(1).normal(size=4000)
    for fpr in (0.01, 0.05, 0.2):
        assert np.mean(v > threshold_at(v, fpr)) == pytest.approx(fpr, abs=0.002)


# -- scores of a trained run (the kept fixture: a tiny VAE on 8x8 synthetic shapes) --------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("score") / "run"
    shutil.copytree(FIXTURE, run)
    return run


@pytest.fixture(scope="module")
def planted(tiny_run):
    """Scores of the fixture's test images and of the same images inverted (anomalies)."""
    from vae_train.api import load

    run = load(tiny_run, device="cpu")
    x, _ = next(iter(run.batches("test", batch_size=100)))
    torch.manual_seed(0)
    out = {}
    for stat in ("neg_elbo", "recon_error", "nll"):
        normal = score_batch(run.model, x, None, stat, 20, 2048).numpy()
        odd = score_batch(run.model, 1 - x, None, stat, 20, 2048).numpy()
        out[stat] = (np.concatenate([normal, odd]), np.r_[np.zeros(len(x)), np.ones(len(x))])
    return run, x, out


@pytest.mark.parametrize("stat", ["neg_elbo", "recon_error", "nll"])
def test_inverted_images_score_as_anomalies(planted, stat):
    _, _, out = planted
    s, y = out[stat]
    assert auroc(s, y) > 0.95
    assert average_precision(s, y) > 0.9
    # shuffled labels: chance
    rng = np.random.default_rng(0)
    shuffled = [auroc(s, rng.permutation(y)) for _ in range(20)]
    assert abs(np.mean(shuffled) - 0.5) < 0.05


def test_scores_are_the_models_own_numbers(planted):
    from vae_train.api import log_likelihood, per_example

    run, x, _ = planted
    torch.manual_seed(3)
    a = score_batch(run.model, x[:5], None, "recon_error", 1, 2048)
    assert torch.allclose(a, per_example(run.model, x[:5])["recon_error"])
    torch.manual_seed(3)
    nll = score_batch(run.model, x[:5], None, "nll", 30, 2048)
    torch.manual_seed(3)
    assert torch.allclose(nll, -log_likelihood(run.model, x[:5], None, 30))


def test_score_writes_its_files(tiny_run, call, tmp_path):
    res = call("vae_train.score", [f"run={tiny_run}", "anomalies=[3]", "progress=false",
                                   "statistic=nll", "k=10", "fpr=0.1"], tmp_path)
    assert "AUROC" in res.stdout and "threshold" in res.stdout
    out = tiny_run / "score"
    summary = json.loads((out / "nll.json").read_text())
    assert summary["statistic"] == "nll" and summary["k"] == 10 and summary["fpr"] == 0.1
    # the run was trained on every class: its validation examples of class 3 are left out
    # of the threshold (set on normal data)
    val, dropped = summary["counts"]["val"], summary["counts"]["val_anomalies_dropped"]
    assert val + dropped == 150 and dropped > 0 and summary["counts"]["scored"] == 100
    # the threshold's rate on the normal validation data is the one asked
    assert summary["fpr_val"] == pytest.approx(0.1, abs=1 / val + 1e-9)
    rows = list(csv.DictReader((out / "nll_scores.csv").open()))
    assert len(rows) == 100 and set(rows[0]) == {"index", "source", "label", "anomaly",
                                                 "score", "flag"}
    scores = np.array([float(r["score"]) for r in rows])
    flags = np.array([int(r["flag"]) for r in rows])
    anomaly = np.array([int(r["anomaly"]) for r in rows])
    labels = np.array([int(r["label"]) for r in rows])
    assert np.array_equal(anomaly, (labels == 3).astype(int))
    assert np.array_equal(flags, (scores > summary["threshold"]).astype(int))
    assert summary["counts"]["flagged"] == flags.sum()
    assert summary["counts"]["anomalies"] == anomaly.sum() > 0
    assert summary["auroc"] == pytest.approx(auroc(scores, anomaly))
    assert summary["auprc"] == pytest.approx(average_precision(scores, anomaly))
    assert summary["tpr"] == pytest.approx(flags[anomaly == 1].mean())
    with Image.open(out / "nll_roc.png") as im:
        assert im.size[0] > 200 and im.size[1] > 200
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(tiny_run)).Reload().Tags()["scalars"]
    assert "score_nll/auroc" in tags


def test_without_anomalies_only_flags(tiny_run, call, tmp_path):
    call("vae_train.score", [f"run={tiny_run}", "statistic=recon_error", "name=plain",
                             "progress=false"], tmp_path)
    summary = json.loads((tiny_run / "score" / "plain.json").read_text())
    assert "auroc" not in summary and not (tiny_run / "score" / "plain_roc.png").exists()
    assert summary["counts"]["flagged"] <= 100


def test_out_of_distribution_data(tiny_run, call, tmp_path, planted):
    """data=arrays: a file of inverted test images scored as anomalies beside the run's own."""
    _, x, _ = planted
    odd = ((1 - x) * 255).round().to(torch.uint8).numpy()
    path = tmp_path / "odd.npz"
    np.savez(path, x_train=odd[:60], x_test=odd[60:])
    call("vae_train.score", [f"run={tiny_run}", "data=arrays", f"data_path={path}",
                             "progress=false"], tmp_path)
    summary = json.loads((tiny_run / "score" / "neg_elbo_arrays.json").read_text())
    assert summary["counts"]["scored"] == 140 and summary["counts"]["anomalies"] == 40
    assert summary["auroc"] > 0.95
    rows = list(csv.DictReader((tiny_run / "score" / "neg_elbo_arrays_scores.csv").open()))
    assert [r["source"] for r in rows].count("other") == 40


@pytest.mark.parametrize("args, message", [
    (["statistic=elbo"], "statistic='elbo' is invalid: it must be nll, neg_elbo or recon_error"),
    (["fpr=1.5"], "fpr=1.5 is invalid"),
    (["anomalies=[12]"], "no class 12"),
    (["anomalies=[x]"], "anomalies="),
    (["data=nothing"], "data=nothing is not a data set option"),
    (["data=sines"], "the model takes"),
    (["name=a/b"], "name='a/b' is invalid"),
])
def test_bad_options_are_one_line(tiny_run, call, tmp_path, args, message):
    res = call("vae_train.score", [f"run={tiny_run}", "progress=false", *args], tmp_path,
               check=False)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert message in lines[-1] and "Traceback" not in res.stderr


def test_no_likelihood_bound_refuses_nll(monkeypatch, tiny_run, call, tmp_path):
    from vae_train import api

    monkeypatch.setattr(api.Trained, "has_likelihood", property(lambda self: False))
    res = call("vae_train.score", [f"run={tiny_run}", "statistic=nll", "progress=false"],
               tmp_path, check=False)
    assert res.returncode == 2 and "use statistic=recon_error" in res.stderr


# -- the data-set options --------------------------------------------------------------------
def test_exclude_classes_drops_them_from_train_and_val_only():
    from vae_train.data import DataModule
    from vae_train.data.synthetic import Synthetic

    full = Synthetic(num_train=600, num_test=200, image_size=8).load()
    cut = Synthetic(num_train=600, num_test=200, image_size=8, exclude_classes=[2, 5]).load()
    keep = ~torch.isin(full.train_y, torch.tensor([2, 5]))
    assert torch.equal(cut.train_y, full.train_y[keep])
    assert torch.equal(cut.train_x, full.train_x[keep])
    assert torch.equal(cut.test_y, full.test_y) and torch.equal(cut.test_x, full.test_x)
    assert cut.classes == full.classes                  # labels keep their meaning
    dm = DataModule(cut, torch.device("cpu"))
    seen = torch.cat([dm.train.y, dm.val.y])
    assert not torch.isin(seen, torch.tensor([2, 5])).any() and len(seen) == int(keep.sum())
    assert set(dm.test.y.tolist()) >= {2, 5}


@pytest.mark.parametrize("value, message", [
    ([12], "has no class 12"), (list(range(10)), "drops every training example"),
    ([-1], "dataset.exclude_classes=[-1] is invalid")])
def test_exclude_classes_errors(value, message):
    from vae_train.data.synthetic import Synthetic
    from vae_train.errors import UserError

    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Synthetic(num_train=300, num_test=50, image_size=8, exclude_classes=value).load()


def test_glitches_label_what_they_changed():
    from vae_train.data.sines import Sines, inject_glitches, make_sines

    clean, _ = make_sines(400, seed=5)
    x, y, kinds = inject_glitches(clean, 0.25, seed=1)
    changed = (x != clean).flatten(1).any(1)
    assert torch.equal(changed, y.bool()) and int(y.sum()) == 100
    assert {k for k in kinds if k} == {"spike", "dropout", "frequency"}
    assert [k is not None for k in kinds] == y.bool().tolist()
    assert x.min() >= 0.01 and x.max() <= 0.99
    # one kind only, seeded
    x2, y2, k2 = inject_glitches(clean, 0.25, seed=1, kinds=["dropout"])
    assert set(k2) == {None, "dropout"} and torch.equal(y2, y)
    assert ((x2 == 0.01).flatten(1).sum(1)[y2.bool()] >= 8).all()  # a window of >= T/8 steps

    data = Sines(num_train=50, num_test=200, glitches=0.1).load()
    plain = Sines(num_train=50, num_test=200).load()
    assert data.classes == ["normal", "glitch"] and int(data.test_y.sum()) == 20
    assert (data.train_y == 0).all() and torch.equal(data.train_x, plain.train_x)
    diff = (data.test_x != plain.test_x).flatten(1).any(1)
    assert torch.equal(diff, data.test_y.bool())


@pytest.mark.parametrize("key, value, message", [
    ("glitches", 1.5, "dataset.glitches=1.5 is invalid: it must be null or a fraction in [0, 1]"),
    ("glitch_kinds", ["pop"], "dataset.glitch_kinds=['pop'] is invalid")])
def test_glitch_options_are_checked(key, value, message):
    from vae_train.data.sines import Sines
    from vae_train.errors import UserError

    with pytest.raises(UserError) as e:
        Sines(num_train=50, num_test=20, **{key: value})
    assert str(e.value).startswith(message)


@pytest.mark.slow
def test_one_class_run_from_the_command_line(tmp_path, call):
    """Train on the synthetic shapes without class 0, score the test split with 0 anomalous."""
    run = tmp_path / "run"
    run_cli([*TINY, "dataset.image_size=12", "dataset.exclude_classes=[0]", "trainer.epochs=3",
             f"hydra.run.dir={run}"], tmp_path)
    import vae_train.api as api

    trained = api.load(run, device="cpu")
    assert not (trained.data.train.y == 0).any() and not (trained.data.val.y == 0).any()
    assert (trained.data.test.y == 0).any()
    call("vae_train.score", [f"run={run}", "anomalies=[0]", "progress=false"], tmp_path)
    summary = json.loads((run / "score" / "neg_elbo.json").read_text())
    assert summary["counts"]["anomalies"] == int((trained.data.test.y == 0).sum())
    assert 0 <= summary["auroc"] <= 1 and summary["counts"]["val_anomalies_dropped"] == 0


def test_exclude_classes_on_rows_read_from_a_file():
    """Data in a file (memory-mapped Rows) are cut by index, nothing read."""
    from vae_train.data.base import ImageData, exclude_classes
    from vae_train.data.rows import Rows

    base = np.arange(20 * 4, dtype=np.float32).reshape(20, 1, 1, 4)
    data = ImageData("t", Rows(base), torch.arange(20) % 4, torch.zeros(3, 1, 1, 4),
                     torch.zeros(3, dtype=torch.long), classes=list("abcd"))
    exclude_classes(data, [1, 3])
    assert isinstance(data.train_x, Rows) and len(data.train_x) == 10
    assert data.train_y.tolist() == [0, 2] * 5
    assert data.train_x.take()[:, 0, 0, 0].tolist() == [8.0 * i for i in range(10)]
