"""The semi-supervised M2 model: its labelled subset, its bound, its gradients, and a run."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import TINY, compose_cfg, run_cli
from vae_train.config import validate
from vae_train.errors import UserError
from vae_train.build import build

SMALL = ["dataset=synthetic", "dataset.num_train=400", "dataset.num_test=100", "model=m2",
         "model.hidden_dims=[64]", "model.classifier_dims=[64]", "model.latent_dim=8"]


def _build(extra=()):
    """As the entry point does: the config's checks, then the build."""
    cfg = compose_cfg([*SMALL, *extra])
    validate(cfg)
    torch.manual_seed(0)
    return build(cfg, torch.device("cpu"))


def test_labeled_subset_is_balanced_deterministic_and_from_the_training_split():
    dm, _, model = _build(["dataset.labeled=30"])
    assert len(model.labeled) == 30
    assert torch.bincount(model.labeled.y, minlength=10).tolist() == [3] * 10
    # every kept example is a training image with its own label
    rows = (model.labeled.x.flatten(1)[:, None] == dm.train.x.flatten(1)[None]).all(-1)
    hit = rows.float().argmax(1)
    assert rows.any(1).all() and torch.equal(dm.train.y[hit], model.labeled.y)
    _, _, again = _build(["dataset.labeled=30"])
    assert torch.equal(again.labeled.x, model.labeled.x)
    _, _, other = _build(["dataset.labeled=30", "model.labeled_seed=1"])
    assert not torch.equal(other.labeled.x, model.labeled.x)
    _, _, default = _build()                                 # dataset.labeled=null: 100
    assert torch.bincount(default.labeled.y, minlength=10).tolist() == [10] * 10


@pytest.mark.parametrize("override,needle", [
    ("dataset.labeled=5", "dataset.labeled=5 is invalid"),
    ("model.alpha=-1", "model.alpha=-1"),
    ("model.labeled_batch_size=0", "model.labeled_batch_size=0"),
    ("model.classifier_dims=[0]", "model.classifier_dims="),
    ("model.labeled_weight=-1", "model.labeled_weight=-1"),
])
def test_bad_settings_are_one_line(override, needle):
    with pytest.raises(UserError, match=needle):
        _build([override])


def test_dataset_labeled_needs_a_semi_supervised_model():
    cfg = compose_cfg(["dataset=synthetic", "dataset.num_train=200", "dataset.num_test=50",
                       "dataset.labeled=100"])
    with pytest.raises(UserError, match="dataset.labeled=100: only a semi-supervised model"):
        build(cfg, torch.device("cpu"))


@pytest.mark.parametrize("weight", ["null", "2.0"])
def test_loss_terms_shapes_and_the_loss_is_their_weighted_sum(weight):
    """loss = U + w (L + alpha N / N_l CE); w = N_l / N (null) is the paper's objective / N,
    whose cross-entropy weight is alpha itself."""
    dm, objective, model = _build(["dataset.labeled=50", "model.alpha=0.3",
                                   f"model.labeled_weight={weight}"])
    x, y = dm.train_batch(torch.arange(32))
    train = objective(model, x, y, step=0, phase="main")
    assert set(train) == {"loss", "recon", "kl", "elbo", "unlabeled", "labeled",
                          "classification", "error"}
    assert all(v.shape == () and torch.isfinite(v) for v in train.values())
    ratio = len(dm.train) / 50
    w = 1 / ratio if weight == "null" else 2.0
    ce_weight = 0.3 if weight == "null" else 2.0 * 0.3 * ratio
    assert model.labeled_weight == pytest.approx(w) and model.ce_weight == pytest.approx(ce_weight)
    assert train["loss"].item() == pytest.approx(
        (train["unlabeled"] + w * train["labeled"] + ce_weight * train["classification"]).item(),
        rel=1e-5)
    assert train["elbo"].item() == pytest.approx(-(train["recon"] + train["kl"]).item(), rel=1e-5)
    # the KL includes KL(q(y|x) || uniform), between 0 and log 10 on top of the z part
    assert train["kl"] > 0
    model.eval()
    with torch.no_grad():
        ev = objective(model, x, y, step=0, train=False)
    assert ev["loss"] == ev["unlabeled"] == -ev["elbo"]
    assert 0 <= ev["error"] <= 1 and ev["classification"] > 0
    out = model.infer(x, k=3)
    assert out["log_px"].shape == out["log_pz"].shape == out["log_qz"].shape == (3, 32)
    assert out["kl_dims"].shape == (3, 32, 8 + 1)          # z's dimensions, then y's KL
    assert model.latent_means(x)[0].shape == (32, 8)


def test_unlabeled_bound_equals_the_explicit_sum_over_classes():
    """U(x) = sum_y q(y|x) L(x, y) - H(q(y|x)), with L(x, y) from one labelled pass per class
    (the same noise: the batched pass shares one draw of eps across the classes)."""
    dm, _, model = _build()
    model.eval()
    x = dm.test.floats(16)
    with torch.no_grad():
        torch.manual_seed(5)
        recon, kl, u, per_class, log_qy = model.unlabeled_terms(x)
        q = log_qy.exp()
        loop = []
        for c in range(10):
            torch.manual_seed(5)
            loop.append(model.neg_elbo_labeled(x, torch.full((16,), c)))
        L = torch.stack(loop, 1)                             # (B, K)
    entropy = -(q * log_qy).sum(-1)
    torch.testing.assert_close(L, per_class.t(), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(u, (q * L).sum(-1) - entropy, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(u, recon + kl)
    # and the bound is -ELBO of log p(x): above -log sum_y exp(-L(x, y)) (y summed exactly)
    assert (u >= -torch.logsumexp(-L, dim=1) - 1e-4).all()


def test_gradients_reach_the_classifier_from_labeled_and_unlabeled_terms():
    dm, _, model = _build()
    x, _ = dm.train_batch(torch.arange(32))
    params = list(model.classifier.parameters())
    u = model.unlabeled_terms(x)[2].mean()
    g_u = torch.autograd.grad(u, params)
    assert all(torch.isfinite(g).all() for g in g_u) and sum(g.abs().sum() for g in g_u) > 0
    xl, yl = model.labeled_batch(torch.device("cpu"))
    ce = F.cross_entropy(model.classifier(xl.flatten(1)), yl)
    g_l = torch.autograd.grad(ce, params)
    assert sum(g.abs().sum() for g in g_l) > 0
    # the labelled -ELBO trains the generative side, not the classifier
    lab = model.neg_elbo_labeled(xl, yl).mean()
    assert all(g is None for g in torch.autograd.grad(lab, params, allow_unused=True))


def test_the_training_batch_labels_never_reach_the_loss():
    dm, objective, model = _build()
    x, y = dm.train_batch(torch.arange(32))
    grads = []
    for labels in (y, (y + 3) % 10):
        torch.manual_seed(1)
        terms = objective(model, x, labels, step=0, phase="main")
        grads.append(torch.autograd.grad(terms["loss"], list(model.parameters())))
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_importance_sampler_over_y_and_z_agrees_with_the_sum_over_classes():
    """log p(x) from samples of (y, z) equals logsumexp over y of log p(x, y) from samples of
    z alone, and both sit above the ELBO."""
    cfg = [*SMALL[:3], "dataset.image_size=8", "model=m2", "model.hidden_dims=[16]",
           "model.classifier_dims=[16]", "model.latent_dim=2"]
    torch.manual_seed(0)
    dm, _, model = build(compose_cfg(cfg), torch.device("cpu"))
    model.eval()
    x = dm.test.floats(4)
    torch.manual_seed(0)
    with torch.no_grad():
        def estimate(y, k=20000):
            out = model.infer(x, y, k=k, analytic_kl=False)
            return torch.logsumexp(out["log_px"] + out["log_pz"] - out["log_qz"], 0) - math.log(k)

        joint = estimate(None)
        per_class = torch.stack([estimate(torch.full((4,), c)) for c in range(10)])
        many = model.infer(x, k=20000, analytic_kl=True)
        elbo = (many["log_px"] - many["kl_dims"].sum(-1)).mean(0)     # the ELBO, averaged
    torch.testing.assert_close(joint, torch.logsumexp(per_class, 0), atol=0.05, rtol=0)
    assert (joint > elbo + 0.01).all(), (joint, elbo)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("m2")
    run = base / "run"
    run_cli([*TINY, "dataset.num_train=800", "model=m2", "dataset.labeled=100",
             "trainer.epochs=2", f"hydra.run.dir={run}"], base)
    first = json.loads((run / "metrics.json").read_text())
    proc = run_cli([f"resume={run}", "trainer.epochs=3"], base)
    assert "epoch 3/3" in proc.stderr and "epoch 1/" not in proc.stderr
    assert not list(base.glob("outputs/*/*"))                # resume stayed in its directory
    return run, first, json.loads((run / "metrics.json").read_text())


@pytest.mark.slow
def test_a_run_writes_test_error_and_its_loss_falls(run):
    path, first, m = run
    assert 0 <= first["test_error"] <= 1 and first["epoch"] == 2
    for key in ("test_loss", "test_elbo", "test_recon", "test_kl", "test_labeled",
                "test_classification"):
        assert math.isfinite(m[key]), key
    assert m["test_loss"] == pytest.approx(-m["test_elbo"])
    h = m["history"]
    assert [e["epoch"] for e in h] == [1, 2, 3] and m["epoch"] == 3
    assert h[-1]["val_loss"] < h[0]["val_loss"] - 10 and h[-1]["train_loss"] < h[0]["train_loss"]
    assert h[-1]["train_classification"] < h[0]["train_classification"]
    for name in ("class_samples", "samples", "reconstructions"):
        assert (path / f"{name}.png").is_file()


def test_evaluate_and_sample(run, tmp_path, call):
    path = run[0]
    proc = call("vae_train.evaluate", [f"run={path}", "k=20", "n=100", "progress=false"])
    assert "error" in proc.stdout and "NLL (k=20)" in proc.stdout
    res = json.loads((path / "eval.json").read_text())
    assert 0 <= res["error"] <= 1 and res["classification"] > 0 and res["n"] == 100
    assert 0 < res["nll"] < -res["elbo"] and len(res["kl_per_dim"]) == 50 + 1
    assert res["elbo"] == pytest.approx(-(res["recon"] + res["kl"]), rel=1e-4)
    out = tmp_path / "pics"
    proc = call("vae_train.sample", [f"run={path}", "n=16", "dims=3", "steps=5", "pairs=2",
                                     "interp_steps=4", f"out={out}"])
    assert {p.stem for p in out.glob("*.png")} == {"samples", "class_samples", "reconstructions",
                                                   "traversals", "interpolations", "class_swap"}
    with Image.open(out / "class_samples.png") as im:        # 10 classes x 10 styles
        assert im.size == (10 * 30 + 2, 10 * 30 + 2)


def test_short_training_classifies_synthetic_shapes_above_chance():
    """In-process, about 5 s: 2,000 shapes, 100 labels. An MLP on raw pixels with 100 labels
    is far from perfect on shapes at random positions; it must still beat chance (0.9) by a
    wide margin (300 test images: one standard error of chance is 0.017)."""
    from vae_train.logging import TBLogger
    from vae_train.training.trainer import Trainer

    cfg = compose_cfg(["dataset=synthetic", "dataset.num_train=1500", "dataset.num_test=300",
                       "model=m2", "trainer.batch_size=100", "device=cpu",
                       "trainer.progress=false"])
    torch.manual_seed(0)
    dm, objective, model = build(cfg, torch.device("cpu"))
    trainer = Trainer(cfg, model, objective, dm, torch.device("cpu"), None, "/nonexistent",
                      TBLogger("/nonexistent", enabled=False))
    for epoch in range(3):
        trainer.train_epoch(epoch)
    model.eval()
    test = trainer.evaluate(dm.test)
    assert test["error"] < 0.75, test
