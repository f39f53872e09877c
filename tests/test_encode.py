"""``python -m vae_train.encode``: the .npz against the model's own outputs (through
``vae_train.api``), the .csv against the .npz, shapes per model family, ``data=``, the
importance-sampled NLL, the TensorBoard projector files, and one-line errors."""

import csv
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, run_cli
from vae_train.api import load
from vae_train.errors import UserError

FIXTURE = Path(__file__).parent / "fixtures" / "run_v0_1"
# Small and fast: 8x8 images, narrow networks, one epoch (later overrides win over TINY's).
SMALL = [*TINY, "dataset.num_train=300", "dataset.num_test=100", "dataset.image_size=8",
         "trainer.epochs=1"]
FAMILIES = {
    "vae": ["model=vae", "model.hidden_dims=[32]", "model.latent_dim=4"],
    "cvae": ["model=cvae", "model.hidden_dims=[32]", "model.latent_dim=3"],
    "m2": ["model=m2", "model.hidden_dims=[32]", "model.classifier_dims=[32]",
           "model.latent_dim=5", "model.labeled_batch_size=20"],
    "gumbel_vae": ["model=gumbel_vae", "model.hidden_dims=[32]", "model.num_latents=4",
                   "model.num_categories=3"],
    "vqvae": ["model=vqvae", "model.num_codes=16", "model.code_dim=4", "model.channels=[8,8]",
              "model.prior_epochs=0"],
    "hvae": ["model=hvae", "model.latent_dim=6", "model.latent_dim2=3",
             "model.hidden_dims=[16]", "model.hidden_dims2=[16]"],
}
# What model.latents gives each family for B examples (the synthetic set: 10 classes).
SHAPES = {
    "vae": {"mean": (4,), "logvar": (4,), "code": (4,)},
    "cvae": {"mean": (3,), "logvar": (3,), "code": (3,)},
    "m2": {"class_probs": (10,), "mean": (5,), "logvar": (5,), "code": (5,)},
    "gumbel_vae": {"probs": (4, 3), "mode": (4,), "code": (12,)},
    "vqvae": {"codes": (2, 2)},
    "hvae": {"mean": (6,), "logvar": (6,), "mean2": (3,), "logvar2": (3,), "code": (3,)},
}
LIKELIHOOD = {"vae", "cvae", "m2", "gumbel_vae", "hvae"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The kept fixture run (a 2-D VAE on 1x8x8 synthetic images), copied."""
    run = tmp_path_factory.mktemp("encode_tiny") / "run"
    shutil.copytree(FIXTURE, run)
    return run


@pytest.fixture(scope="module")
def family_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("encode_families")
    cache = {}

    def get(name):
        if name not in cache:
            run = base / name
            run_cli([*SMALL, *FAMILIES[name], f"hydra.run.dir={run}"], base)
            cache[name] = run
        return cache[name]

    return get


def npz(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def own_outputs(run_dir, split="test", n=None, batch_size=500, seed=0, labels=True):
    """What vae_train.api gives for the same examples in the same batches: encode and elbo
    (the elbo's posterior sample of batch b drawn after torch.manual_seed(seed + b), as the
    command does)."""
    m = load(run_dir, device="cpu")
    enc, elbo, ys = {}, {}, []
    for b, (x, y) in enumerate(m.batches(split, batch_size, n)):
        torch.manual_seed(seed + b)
        yy = y if labels else None
        for key, t in m.encode(x, yy).items():
            enc.setdefault(key, []).append(t.cpu().numpy())
        for key, t in m.elbo(x, yy).items():
            elbo.setdefault(key, []).append(t.cpu().numpy())
        ys.append(y.cpu().numpy())
    return ({k: np.concatenate(v) for k, v in enc.items()},
            {k: np.concatenate(v) for k, v in elbo.items()}, np.concatenate(ys))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- the fixture run (fast) -------------------------------------------------------------------
def test_npz_equals_the_models_own_outputs_and_csv_agrees(tiny_run, tmp_path, call):
    out = tmp_path / "enc" / "test.npz"
    proc = call("vae_train.encode", [f"run={tiny_run}", f"out={out}", "batch_size=30",
                                     "progress=false", "projector=false"])
    z = npz(out)
    enc, elbo, y = own_outputs(tiny_run, batch_size=30)
    n = len(y)
    assert n == 100 and z["index"].tolist() == list(range(n))
    np.testing.assert_array_equal(z["label"], y)
    for key in ("mean", "logvar", "code"):
        assert z[key].shape == (n, 2) and z[key].dtype == np.float32
        np.testing.assert_allclose(z[key], enc[key], rtol=1e-5, atol=1e-5)
    # kl is analytic; recon is one posterior sample, the same one after the same seed
    for key in ("kl", "recon", "neg_elbo", "recon_error"):
        assert z[key].shape == (n,)
        np.testing.assert_allclose(z[key], elbo[key], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(z["neg_elbo"], z["recon"] + z["kl"], rtol=1e-5)
    assert "nll" not in z and int(z["k"]) == 0 and str(z["split"]) == "test"
    classes = z["classes"].tolist()
    assert len(classes) == 10

    rows = read_csv(out.with_suffix(".csv"))
    assert list(rows[0]) == ["index", "label", "class", "recon_error", "recon", "kl",
                             "neg_elbo"]
    assert len(rows) == n
    assert [int(r["index"]) for r in rows] == list(range(n))
    assert [int(r["label"]) for r in rows] == y.tolist()
    assert [r["class"] for r in rows] == [classes[i] for i in y]
    np.testing.assert_allclose([float(r["neg_elbo"]) for r in rows], z["neg_elbo"], rtol=1e-5)
    np.testing.assert_allclose([float(r["recon_error"]) for r in rows], z["recon_error"],
                               rtol=1e-5)
    # the summary names the arrays with their shapes and where it wrote
    assert "encoded 100 examples" in proc.stdout and "100x2" in proc.stdout
    assert f"wrote {out}" in proc.stderr


def test_default_output_other_split_and_first_n(tiny_run, call):
    call("vae_train.encode", [f"run={tiny_run}", "split=val", "n=37", "batch_size=16",
                              "projector=false"])
    z = npz(tiny_run / "encode" / "val.npz")
    enc, _, y = own_outputs(tiny_run, split="val", n=37, batch_size=16)
    assert len(z["code"]) == 37 and str(z["split"]) == "val"
    np.testing.assert_allclose(z["code"], enc["code"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(z["label"], y)
    assert (tiny_run / "encode" / "val.csv").is_file()


def test_importance_sampled_nll_is_below_neg_elbo(tiny_run, tmp_path, call):
    out = tmp_path / "k.npz"
    call("vae_train.encode", [f"run={tiny_run}", f"out={out}", "k=32", "max_batch=500",
                              "projector=false"])
    z = npz(out)
    assert z["nll"].shape == (100,) and np.isfinite(z["nll"]).all() and int(z["k"]) == 32
    # log p(x) >= the k-sample bound >= the ELBO: on average NLL <= -ELBO
    assert z["nll"].mean() <= z["neg_elbo"].mean()
    rows = read_csv(out.with_suffix(".csv"))
    np.testing.assert_allclose([float(r["nll"]) for r in rows], z["nll"], rtol=1e-5)


@pytest.mark.slow
def test_nll_agrees_with_the_api_and_is_seeded(tiny_run, tmp_path, call):
    args = [f"run={tiny_run}", "k=64", "max_batch=500", "projector=false", "seed=3"]
    call("vae_train.encode", [*args, f"out={tmp_path / 'a.npz'}"])
    call("vae_train.encode", [*args, f"out={tmp_path / 'b.npz'}"])
    z = npz(tmp_path / "a.npz")
    np.testing.assert_array_equal(npz(tmp_path / "b.npz")["nll"], z["nll"])
    # the same as the API's estimate, within the estimates' noise
    m = load(tiny_run, device="cpu")
    x, y = next(iter(m.batches("test", 100)))
    torch.manual_seed(0)
    api_nll = -m.log_prob(x, k=64).numpy()
    assert abs(api_nll.mean() - z["nll"].mean()) < 0.5
    assert np.corrcoef(api_nll, z["nll"])[0, 1] > 0.95


def test_projector_files(tiny_run, call):
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    call("vae_train.encode", [f"run={tiny_run}", "projector_n=50", "n=80"])
    call("vae_train.encode", [f"run={tiny_run}", "split=val", "projector_n=30"])
    config = text_format.Parse((tiny_run / "projector_config.pbtxt").read_text(),
                               ProjectorConfig())
    entries = {e.tensor_name: e for e in config.embeddings}
    assert set(entries) == {"encode/test", "encode/val"}
    test = entries["encode/test"]
    for rel in (test.tensor_path, test.metadata_path, test.sprite.image_path):
        assert (tiny_run / rel).is_file()
    folder = (tiny_run / test.tensor_path).parent
    assert {p.name for p in folder.iterdir()} == {"tensors.tsv", "metadata.tsv", "sprite.png"}
    vectors = np.loadtxt(folder / "tensors.tsv", delimiter="\t")
    assert vectors.shape == (50, 2) and list(test.tensor_shape) == [50, 2]
    codes = npz(tiny_run / "encode" / "test.npz")["code"][:50]
    np.testing.assert_allclose(vectors, codes, rtol=1e-5, atol=1e-5)
    meta = (folder / "metadata.tsv").read_text().splitlines()
    assert meta[0].split("\t")[:3] == ["index", "label", "class"] and len(meta) == 51
    labels = npz(tiny_run / "encode" / "test.npz")["label"][:50]
    assert [int(line.split("\t")[1]) for line in meta[1:]] == labels.tolist()
    with Image.open(folder / "sprite.png") as im:           # 8 x 8 grid of 8 x 8 thumbnails
        assert im.size == (8 * 8, 8 * 8) and im.mode == "L"
    assert list(test.sprite.single_image_dim) == [8, 8]
    val = entries["encode/val"]
    assert np.loadtxt(tiny_run / val.tensor_path, delimiter="\t").shape == (30, 2)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(tiny_run)).Reload().Tags()["scalars"]
    assert "encode/test/mean_neg_elbo" in tags


def test_projector_entry_replaces_its_own_tag_and_keeps_others(tmp_path):
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    from vae_train.encode import write_projector

    sprite = torch.zeros(5, 3, 4, 6, dtype=torch.uint8)
    for tag, n in (("encode/test", 5), ("encode/val", 3), ("encode/test", 4)):
        write_projector(tmp_path, tag, np.ones((n, 2)), [[str(i)] * 2 for i in range(n)],
                        ["index", "label"], sprite[:n] if tag.endswith("test") else None)
    config = text_format.Parse((tmp_path / "projector_config.pbtxt").read_text(),
                               ProjectorConfig())
    entries = {e.tensor_name: e for e in config.embeddings}
    assert len(config.embeddings) == 2 and list(entries["encode/test"].tensor_shape) == [4, 2]
    assert not entries["encode/val"].HasField("sprite")
    assert list(entries["encode/test"].sprite.single_image_dim) == [6, 4]
    with Image.open(tmp_path / entries["encode/test"].sprite.image_path) as im:
        assert im.size == (2 * 6, 2 * 4) and im.mode == "RGB"     # 2 x 2 grid of 6 x 4


def test_other_data_set(tiny_run, tmp_path, call):
    """data=arrays: a file of 1x8x8 images with its own test split, encoded by the run's model."""
    rng = np.random.default_rng(0)
    x_test = (rng.random((23, 1, 8, 8)) < 0.3).astype(np.uint8) * 255
    x_train = (rng.random((40, 1, 8, 8)) < 0.3).astype(np.uint8) * 255
    y_test = rng.integers(0, 3, 23)
    file = tmp_path / "mine.npz"
    np.savez(file, x_train=x_train, x_test=x_test, y_train=rng.integers(0, 3, 40),
             y_test=y_test)
    call("vae_train.encode", ["data=arrays", f"dataset.path={file}", f"run={tiny_run}",
                              "projector=false"])
    z = npz(tiny_run / "encode" / "arrays_test.npz")
    m = load(tiny_run, device="cpu")
    np.testing.assert_allclose(z["mean"], m.encode(x_test)["mean"].numpy(), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_array_equal(z["label"], y_test)
    assert str(z["data"]) == "arrays" and len(z["recon_error"]) == 23


def test_result_memory_is_bounded():
    from vae_train.encode import check_result_memory

    with pytest.raises(UserError, match=r"n=\d+ or less") as e:
        check_result_memory(10**13, 10**3, 0, "split=train")
    assert "\n" not in str(e.value)
    check_result_memory(10, 10, 0, "split=test")            # fits: nothing raised


@pytest.mark.parametrize("args,needle", [
    ([], "run=... is required"),
    (["run=RUN", "k=-1"], "k=-1 is invalid"),
    (["run=RUN", "split=dev"], "split='dev' is invalid"),
    (["run=RUN", "n=0"], "n=0 is invalid"),
    (["run=RUN", "projector_n=0"], "projector_n=0 is invalid"),
    (["run=RUN", "projector_n=1000000"], "projector_n=1000000 is invalid"),
    (["run=RUN", "out=x.txt"], "ending in .npz"),
    (["run=RUN", "batch_size=0"], "batch_size=0 is invalid"),
    (["run=RUN", "kk=3"], "unknown option 'kk'"),
    (["run=RUN", "dataset.path=/x"], "give data=NAME"),
    (["run=RUN", "data=nosuch"], "data=nosuch is not a data set option"),
    (["run=RUN", "data=arrays"], "dataset.path"),
    (["run=RUN", "out=FILE/x.npz"], "is a file, not a folder"),
    (["run=/no/such/run"], "not a vae-train run directory"),
])
def test_bad_options_are_one_line(tiny_run, tmp_path, call, args, needle):
    file = tmp_path / "file"
    file.write_text("")
    args = [a.replace("RUN", str(tiny_run)).replace("FILE", str(file)) for a in args]
    proc = call("vae_train.encode", args, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error:") and needle in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr


# -- every family (slow: trains a tiny run each) ------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_families_arrays_match_the_model(family_runs, name, tmp_path, call):
    run = family_runs(name)
    out = tmp_path / f"{name}.npz"
    k = ["k=8"] if name in LIKELIHOOD else []
    proc = call("vae_train.encode", [f"run={run}", f"out={out}", "n=60", "batch_size=25",
                                     "projector_n=20", "progress=false", *k])
    z = npz(out)
    enc, elbo, y = own_outputs(run, n=60, batch_size=25)
    assert set(enc) == set(SHAPES[name])
    for key, shape in SHAPES[name].items():
        assert z[key].shape == (60, *shape), key
        np.testing.assert_allclose(z[key], enc[key], rtol=1e-4, atol=1e-4, err_msg=key)
    np.testing.assert_array_equal(z["label"], y)
    scalars = {"recon_error"} | ({"recon", "kl", "neg_elbo", "nll"} if name in LIKELIHOOD
                                 else set())
    assert scalars <= set(z) and not ({"recon", "kl", "neg_elbo", "nll"} - scalars) & set(z)
    for key in scalars - {"nll"}:
        np.testing.assert_allclose(z[key], elbo[key], rtol=1e-4, atol=1e-3, err_msg=key)
    if name in LIKELIHOOD:
        assert z["nll"].mean() <= z["neg_elbo"].mean()
    if name == "gumbel_vae":
        np.testing.assert_allclose(z["probs"].sum(-1), 1, rtol=1e-5)
        np.testing.assert_array_equal(z["mode"], z["probs"].argmax(-1))
    if name == "m2":
        np.testing.assert_allclose(z["class_probs"].sum(-1), 1, rtol=1e-5)
    # the projector shows the code, or for the VQ-VAE each example's share of each code
    vectors = np.loadtxt(run / "projector" / "encode_test" / "tensors.tsv", delimiter="\t")
    if name == "vqvae":
        assert vectors.shape == (20, 16)
        np.testing.assert_allclose(vectors.sum(1), 1, rtol=1e-5)
        hist = np.stack([np.bincount(c.ravel(), minlength=16) / 4 for c in z["codes"][:20]])
        np.testing.assert_allclose(vectors, hist, rtol=1e-5)
    else:
        np.testing.assert_allclose(vectors, z["code"][:20], rtol=1e-5, atol=1e-5)
    assert "encoded 60 examples" in proc.stdout


@pytest.mark.slow
def test_m2_without_labels_encodes_at_the_predicted_class(family_runs, tmp_path, call):
    run = family_runs("m2")
    out = tmp_path / "m2.npz"
    call("vae_train.encode", [f"run={run}", f"out={out}", "n=40", "use_labels=false",
                              "projector=false"])
    enc, _, _ = own_outputs(run, n=40, labels=False)
    z = npz(out)
    np.testing.assert_allclose(z["mean"], enc["mean"], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_no_likelihood_bound_refuses_k(family_runs, call):
    proc = call("vae_train.encode", [f"run={family_runs('vqvae')}", "k=10"], check=False)
    assert proc.returncode == 2
    assert "VQVAE has no likelihood bound" in proc.stderr and "k=0" in proc.stderr
    assert len(proc.stderr.strip().splitlines()[-1:]) == 1 and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_conditional_model_takes_the_labels(family_runs, tmp_path, call):
    """cvae's codes depend on the label given with each example: the written ones are those
    of each example's own label."""
    run = family_runs("cvae")
    out = tmp_path / "c.npz"
    call("vae_train.encode", [f"run={run}", f"out={out}", "n=30", "projector=false"])
    m = load(run, device="cpu")
    x, y = next(iter(m.batches("test", 30)))
    z = npz(out)
    np.testing.assert_allclose(z["mean"], m.encode(x, y)["mean"].numpy(), rtol=1e-4,
                               atol=1e-4)
    other = m.encode(x, (y + 1) % m.num_classes)["mean"].numpy()
    assert not np.allclose(z["mean"], other, atol=1e-3)
    assert math.isclose(float(z["neg_elbo"].mean()), float(
        (z["recon"] + z["kl"]).mean()), rel_tol=1e-5)


def test_csv_of_multi_hot_labels_names_the_attributes():
    from vae_train.encode import csv_text

    arrays = {"index": np.arange(2), "label": np.array([[1, 0, 1], [0, 0, 0]]),
              "recon_error": np.array([1.5, 2.0], dtype=np.float32)}
    rows = list(csv.DictReader(csv_text(arrays, ["Smiling", "Male", "Young"]).splitlines()))
    assert rows == [{"index": "0", "attributes": "Smiling|Young", "recon_error": "1.5"},
                    {"index": "1", "attributes": "", "recon_error": "2"}]


@pytest.mark.slow
def test_sequences_get_a_projector_entry_without_thumbnails(tmp_path, call):
    """rnn_vae on sines: (N, 1, T, F) float sequences have no pictures to draw."""
    run = tmp_path / "rnn"
    run_cli([*TINY, "model=rnn_vae", "dataset=sines", "dataset.num_train=300",
             "dataset.num_test=40", "dataset.length=16", "model.hidden_dim=16",
             "model.latent_dim=3", "trainer.epochs=1", f"hydra.run.dir={run}"], tmp_path)
    call("vae_train.encode", [f"run={run}", "k=4"])
    z = npz(run / "encode" / "test.npz")
    assert z["mean"].shape == (40, 3) and z["nll"].shape == (40,)
    folder = run / "projector" / "encode_test"
    assert {p.name for p in folder.iterdir()} == {"tensors.tsv", "metadata.tsv"}
    assert "sprite" not in (run / "projector_config.pbtxt").read_text()


@pytest.mark.parametrize("module", ["vae_train.encode", "vae_train.score"])
def test_an_unknown_data_option_is_refused_before_the_run_is_read(module, tmp_path, call):
    res = call(module, [f"run={tmp_path / 'no-run'}", "data=nosuch"], check=False)
    assert res.returncode == 2
    assert "data=nosuch is not a data set option" in res.stderr
    assert "Traceback" not in res.stderr
