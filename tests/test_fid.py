"""Sample quality (vae_train.fid, ``evaluate fid=true``): the metrics against analytic and
limiting cases, the own feature network stored and reused, the offline Inception path, and
evaluate's labelled numbers. Offline: only the small own feature network is ever run."""

import contextlib
import io
import json
import shutil
import urllib.error
from pathlib import Path

import pytest
import torch

from conftest import TINY, Result, run_cli
from vae_train import fid as F
from vae_train.errors import UserError

FIXTURE = Path(__file__).parent / "fixtures" / "run_v0_1"
# The own network on the fixture's 8x8 images: small batches, so a few epochs are many steps.
FAST = ["fid_n=100", "fid_epochs=3", "fid_batch_size=50", "kid_subsets=20",
        "kid_subset_size=50", "k=5", "n=40", "progress=false"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread: on a shared, busy CPU two OpenMP threads make the many small kernel
    matrices of KID a hundred times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("fid") / "run"
    shutil.copytree(FIXTURE, run)
    for name in ("eval.json", F.FEATURES_FILE):
        (run / name).unlink(missing_ok=True)
    return run


@pytest.fixture
def fresh_run(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / F.FEATURES_FILE).unlink(missing_ok=True)
    return run


def _images(n, seed):
    """Smooth random 1x8x8 images in [0, 1] (blurred noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    return torch.nn.functional.avg_pool2d(x, 3, 1, 1)


def _net_features():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = F.FeatureNet((1, 8, 8), 10).eval()
    return lambda x: net.features(x).detach().double()


def test_fid_matches_the_gaussian_formula():
    """N(0, I) vs N(m, 4I) in d dimensions: FID = |m|^2 + d (1 + 4 - 2*2) = |m|^2 + d."""
    g = torch.Generator().manual_seed(0)
    d, n = 4, 50000
    m = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    real = torch.randn(n, d, generator=g, dtype=torch.float64)
    fake = m + 2 * torch.randn(n, d, generator=g, dtype=torch.float64)
    assert F.fid(real, fake) == pytest.approx(float(m.square().sum()) + d, rel=0.03)


def test_fid_and_kid_of_a_set_against_itself_are_zero_and_grow_with_noise():
    extract = _net_features()
    x = _images(600, 0)
    real = extract(x)
    assert F.fid(real, real) == pytest.approx(0, abs=1e-6)
    kid0, _, _ = F.kid(real, real, subsets=50, subset_size=200)
    fids, kids = [], []
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    for s in (0.05, 0.2, 0.5, 1.0):
        fake = extract(x + s * noise)
        fids.append(F.fid(real, fake))
        kids.append(F.kid(real, fake, subsets=50, subset_size=200)[0])
    assert fids == sorted(fids) and fids[0] > 0
    assert kids == sorted(kids)
    assert abs(kid0) < kids[-1] / 100


def test_kid_is_unbiased_for_two_samples_of_one_distribution():
    extract = _net_features()
    a, b = extract(_images(800, 0)), extract(_images(800, 1))
    mean, std, size = F.kid(a, b, subsets=50, subset_size=400)
    assert size == 400 and abs(mean) < 3 * std + 1e-9
    # the subset size is capped by the smaller set
    assert F.kid(a[:30], b, subsets=5, subset_size=400)[2] == 30


def test_precision_recall_limits():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1000, 2, generator=g)
    assert F.precision_recall(a, a, k=3, chunk=64) == (1.0, 1.0)
    far = a + 100
    assert F.precision_recall(a, far, k=3) == (0.0, 0.0)
    # samples covering a quarter of the real points' region: high precision, low recall
    near = a[a[:, 0] > 0.5]
    p, r = F.precision_recall(a, near, k=3)
    assert p > 0.9 and r < 0.5


def test_choose_features():
    assert F.choose("auto", (3, 32, 32), "8bit") == "inception"
    assert F.choose("auto", (1, 28, 28), "8bit") == "own"
    assert F.choose("auto", (3, 16, 16), "8bit") == "own"
    assert F.choose("auto", (3, 64, 64), "real") == "own"
    assert F.choose("own", (3, 64, 64), "8bit") == "own"


def test_missing_package_is_one_line_naming_the_extra():
    with pytest.raises(UserError) as e:
        F.require("torchmetrics", "no_such_package_for_fid")
    msg = str(e.value)
    assert "no-such-package-for-fid" in msg and 'pip install "vae-train[fid]"' in msg
    assert "\n" not in msg


@pytest.fixture(scope="module")
def evaluated(tiny_run, tmp_path_factory):
    """The tiny run evaluated once with fid=true (the own network trained and stored), and
    what evaluate printed."""
    from vae_train.evaluate import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        main([f"run={tiny_run}", "fid=true", "fid_features=own", *FAST])
    return tiny_run, Result(0, out.getvalue(), err.getvalue())


def test_evaluate_with_fid_writes_labelled_numbers(evaluated):
    run, proc = evaluated
    res = json.loads((run / "eval.json").read_text())
    rec = res["fid_own"]
    assert "fid_inception" not in res and "fid_skipped" not in res
    assert rec["features"] == "own" and rec["network"] == F.FEATURES_FILE and rec["trained_now"]
    assert rec["n"] == 100 and rec["split"] == "test" and rec["kid_subset_size"] == 50
    assert rec["fid"] > 0 and rec["kid_std"] >= 0 and 0 <= rec["precision"] <= 1
    # a briefly trained model's samples are further from the data than held-out data are
    assert rec["floor"]["fid"] < rec["fid"]
    assert "nll" in res    # the other metrics are there as before
    assert "FID (own features)" in proc.stdout and "test accuracy" in proc.stdout
    assert "training the FID feature network" in proc.stderr

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(run)).Reload().Tags()["scalars"]
    assert "eval_test/fid_own" in tags and "eval_test/kid_own" in tags


def test_own_network_is_stored_and_reused(evaluated, tmp_path, call, monkeypatch):
    run, _ = evaluated
    first = json.loads((run / "eval.json").read_text())["fid_own"]
    stored = torch.load(run / F.FEATURES_FILE, weights_only=True)
    meta = stored["meta"]
    assert meta["dataset"] == "synthetic" and meta["shape"] == [1, 8, 8]
    assert meta["seed"] == 0 and meta["epochs"] == 3
    # better than chance (10 classes) on the test split after a few epochs
    assert meta["accuracy"] == first["accuracy"] > 0.3

    def no_training(*a, **k):
        raise AssertionError("retrained although a matching network is stored")

    monkeypatch.setattr(F, "train_own", no_training)
    proc = call("vae_train.evaluate", [f"run={run}", "fid=true", "fid_features=own", *FAST],
                tmp_path)
    again = json.loads((run / "eval.json").read_text())["fid_own"]
    assert not again["trained_now"] and "training the FID" not in proc.stderr
    assert again["fid"] == pytest.approx(first["fid"])     # same seed, same network

    from vae_train.api import load

    net, meta2, trained = F.own_network(load(run, device="cpu"), epochs=3, batch_size=50,
                                        seed=0, progress=False)
    assert not trained and meta2 == meta
    # a different number of epochs, or a corrupt file: trained again (and stored)
    calls = []
    monkeypatch.setattr(F, "train_own", lambda *a, **k: calls.append(a) or (net, 0.5))
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    lines = []
    trained_run = load(copy, device="cpu")
    _, meta3, trained3 = F.own_network(trained_run, epochs=2, batch_size=50, seed=0,
                                       progress=False, log=lines.append)
    assert trained3 and len(calls) == 1 and "epochs" in lines[-1]
    assert torch.load(copy / F.FEATURES_FILE, weights_only=True)["meta"]["epochs"] == 2
    (copy / F.FEATURES_FILE).write_bytes(b"not a checkpoint")
    _, _, trained4 = F.own_network(trained_run, epochs=2, batch_size=50, seed=0,
                                   progress=False, log=lines.append)
    assert trained4 and len(calls) == 2 and "unreadable" in lines[-1]


def _offline(monkeypatch, tmp_path):
    """An empty torch hub cache, and a download that fails as it does without a network."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def fail(url, path, progress):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(F, "_download", fail)
    return hub


def test_inception_offline_is_one_line_and_the_rest_is_computed(fresh_run, tmp_path, call,
                                                                monkeypatch):
    hub = _offline(monkeypatch, tmp_path)
    proc = call("vae_train.evaluate", [f"run={fresh_run}", "fid=true", "fid_features=inception",
                                       *FAST], tmp_path)
    res = json.loads((fresh_run / "eval.json").read_text())
    assert "nll" in res and "elbo" in res
    assert "fid_inception" not in res and "fid_own" not in res
    skipped = res["fid_skipped"]
    assert "not cached" in skipped and str(hub / "checkpoints" / F.INCEPTION_FILE) in skipped
    assert "internet" in skipped and "\n" not in skipped
    notes = [line for line in proc.stdout.splitlines() if "fid skipped" in line]
    assert len(notes) == 1 and "Traceback" not in proc.stdout + proc.stderr


def test_inception_weights_are_taken_from_the_cache(monkeypatch, tmp_path):
    hub = _offline(monkeypatch, tmp_path)
    cached = hub / "checkpoints" / F.INCEPTION_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert F.inception_weights(progress=False) == cached     # no download attempted


@pytest.mark.slow
def test_model_without_a_prior_is_skipped_with_a_note(tmp_path, call):
    run = tmp_path / "vq"
    run_cli([*TINY, "model=vqvae", "model.prior_epochs=0", "dataset.image_size=8",
             "dataset.num_train=300", "dataset.num_test=60", "trainer.epochs=1",
             f"hydra.run.dir={run}"], tmp_path)
    proc = call("vae_train.evaluate", [f"run={run}", "fid=true", *FAST], tmp_path)
    res = json.loads((run / "eval.json").read_text())
    assert "prior" in res["fid_skipped"] and "fid_own" not in res
    assert "fid skipped" in proc.stdout and not (run / F.FEATURES_FILE).exists()


@pytest.mark.slow
def test_auto_falls_back_to_the_own_network_offline(tmp_path, call, monkeypatch):
    """Colour 32x32 images choose Inception; offline it is the own network, said so."""
    run = tmp_path / "rgb"
    run_cli([*TINY, "dataset.channels=3", "dataset.image_size=32", "dataset.num_train=400",
             "dataset.num_test=100", "trainer.epochs=1", "model.hidden_dims=[32]",
             f"hydra.run.dir={run}"], tmp_path)
    _offline(monkeypatch, tmp_path)
    call("vae_train.evaluate", [f"run={run}", "fid=true", *FAST], tmp_path)
    res = json.loads((run / "eval.json").read_text())
    assert res["fid_own"]["features"] == "own" and "not cached" in res["note"]
    assert "not cached" in res["fid_own"]["inception_unavailable"]


@pytest.mark.parametrize("arg, word", [("fid_n=1", "fid_n"), ("fid_n=50001", "fid_n"),
                                       ("fid_features=vgg", "fid_features"),
                                       ("fid=maybe", "fid"), ("pr_k=-1", "pr_k"),
                                       ("kid_subsets=0", "kid_subsets"),
                                       ("fid_epochs=0", "fid_epochs")])
def test_bad_fid_options_are_one_line(arg, word, tmp_path, call):
    proc = call("vae_train.evaluate", [f"run={tmp_path}/none", arg], tmp_path, check=False)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and f"{word}=" in err[0] and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_inception_path_with_stand_in_weights(fresh_run, tmp_path, call, monkeypatch):
    """The Inception path end to end, offline: torch-fidelity's network with random stand-in
    weights in the cache gives 2048 features and evaluate writes them under fid_inception
    (never under fid_own)."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    with mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(torch.nn.Module, "load_state_dict", lambda *a, **k: None):
        stand_in = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    hub = _offline(monkeypatch, tmp_path)
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(stand_in.state_dict(), hub / "checkpoints" / F.INCEPTION_FILE)
    extract = F.inception_network("cpu", progress=False)
    assert extract(torch.rand(3, 1, 8, 8)).shape == (3, 2048)
    call("vae_train.evaluate", [f"run={fresh_run}", "fid=true", "fid_features=inception",
                                "fid_n=12", "kid_subset_size=6", "kid_subsets=5", "pr_k=2",
                                "fid_floor=false", "k=2", "n=4", "progress=false"], tmp_path)
    res = json.loads((fresh_run / "eval.json").read_text())
    rec = res["fid_inception"]
    assert "fid_own" not in res and rec["features"] == "inception" and rec["n"] == 12
    assert "inception-v3-compat" in rec["network"] and rec["fid"] >= 0 and "floor" not in rec
    assert not (fresh_run / F.FEATURES_FILE).exists()


def test_data_without_labels_cannot_train_the_own_network(fresh_run):
    from vae_train.api import load

    run = load(fresh_run, device="cpu")
    run.data.num_classes = 0          # as a data set without class labels
    with pytest.raises(F.Unavailable, match="no class labels"):
        F.sample_quality(run, n=20, features="own", progress=False, log=lambda line: None)
    assert not (fresh_run / F.FEATURES_FILE).exists()
