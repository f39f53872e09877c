"""dataset=arrays: a user's .npy/.npz/.csv file as a data set. Shapes, labels from each source,
the test split, standardisation on the training split only (and a saved one applied again),
the value kinds, memory-mapped rows, and one-line errors."""

import logging

import numpy as np
import pytest
import torch

from conftest import compose_cfg
from vae_train.build import load_image_data
from vae_train.data.arrays import Arrays
from vae_train.data.rows import Rows
from vae_train.errors import UserError


def load(path, **kw):
    return Arrays(path=str(path), **kw).load()


def rng(seed=0):
    return np.random.default_rng(seed)


# -- formats and shapes ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape,stored", [((50, 7), (1, 1, 7)), ((50, 9, 2), (1, 9, 2)),
                                          ((50, 3, 4, 5), (3, 4, 5))])
def test_npy_shapes_are_stored_as_examples(tmp_path, shape, stored):
    x = rng().random(shape).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    data = load(tmp_path / "x.npy", standardize=False)
    assert data.shape == stored and len(data.train_x) == 45 and len(data.test_x) == 5
    assert data.value_kind == "unit" and data.stats is None
    # the splits are exactly the file's rows (seeded split, each row once)
    rows = np.concatenate([data.train_x.materialize().numpy(), data.test_x.materialize().numpy()])
    assert np.array_equal(np.sort(rows.reshape(50, -1), 0), np.sort(x.reshape(50, -1), 0))


def test_sequences_fit_the_recurrent_vae(tmp_path):
    """N x T x F -> (N, 1, T, F): rnn_vae reads T steps of F features, as it reads sines."""
    from vae_train.models.rnn_vae import RNNVAE
    from vae_train.nets.rnn import to_sequence

    x = rng().normal(size=(40, 12, 3)).astype(np.float32)
    np.save(tmp_path / "seq.npy", x)
    data = load(tmp_path / "seq.npy", test_split=4)
    assert data.shape == (1, 12, 3)
    model = RNNVAE(data.shape, latent_dim=2, hidden_dim=8)
    assert model.steps == 12 and model.features == 3 and not model.is_sequence
    # a stored example read as a sequence is the file's T x F example (standardised)
    mean = np.asarray(data.stats["mean"]).reshape(1, 1, 3)
    std = np.asarray(data.stats["std"]).reshape(1, 1, 3)
    first = int(np.flatnonzero(~np.isin(np.arange(40), _test_rows(40, 4)))[0])
    np.testing.assert_allclose(to_sequence(data.train_x[:1])[0].numpy(),
                               ((x[first] - mean) / std)[0], rtol=1e-5, atol=1e-6)


def _test_rows(n, n_test, seed=0):
    return np.sort(np.random.default_rng(seed).permutation(n)[:n_test])


def test_uint8_images_stay_8bit_images(tmp_path):
    x = rng().integers(0, 256, (30, 3, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "img.npy", x)
    data = load(tmp_path / "img.npy")
    assert isinstance(data.train_x, Rows) and data.train_x.dtype == torch.uint8
    assert data.value_kind == "8bit" and data.stats is None
    test = _test_rows(30, 3)
    assert np.array_equal(data.test_x.materialize().numpy(), x[test])


def test_float_images_are_standardised_per_channel(tmp_path):
    x = rng().normal(size=(60, 3, 4, 4)).astype(np.float32) * np.array([1, 5, 10],
                                                                        np.float32)[:, None, None]
    x += np.array([0, 100, -3], np.float32)[:, None, None]
    np.save(tmp_path / "img.npy", x)
    data = load(tmp_path / "img.npy")
    assert data.stats["shape"] == [3, 1, 1] and len(data.stats["mean"]) == 3
    t = data.train_x
    assert t.dtype == torch.float32 and data.value_kind == "real"
    assert torch.allclose(t.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(t.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-5)


def test_npz_single_array_and_own_split(tmp_path):
    x = rng().random((20, 6)).astype(np.float64)
    np.savez(tmp_path / "one.npz", x=x, y=np.arange(20) % 3)
    data = load(tmp_path / "one.npz", standardize=False, test_split=0.25)
    assert len(data.train_x) == 15 and len(data.test_x) == 5 and data.num_classes == 3
    assert data.train_x.dtype == torch.float32 and isinstance(data.train_x, torch.Tensor)
    test = _test_rows(20, 5)
    np.testing.assert_array_equal(data.test_x.numpy().reshape(5, 6), x[test].astype(np.float32))
    assert data.test_y.tolist() == (test % 3).tolist()
    # x_train / x_test: the file's own split, labels y_train / y_test
    np.savez(tmp_path / "two.npz", x_train=x[:16], x_test=x[16:], y_train=np.arange(16) % 2,
             y_test=np.array([1, 0, 1, 1]))
    data = load(tmp_path / "two.npz", standardize=False)
    assert len(data.train_x) == 16 and len(data.test_x) == 4
    np.testing.assert_array_equal(data.test_x.numpy().reshape(4, 6), x[16:].astype(np.float32))
    assert data.test_y.tolist() == [1, 0, 1, 1] and data.classes == ["0", "1"]
    # the only array of a .npz, whatever its name (numpy.savez(file, arr))
    np.savez(tmp_path / "anon.npz", x)
    assert len(load(tmp_path / "anon.npz").train_x) == 18


def test_csv_with_header_and_label_column(tmp_path):
    lines = ["a,b,label,c"] + [f"{i},{i * 2},{'cat' if i % 2 else 'dog'},{-i}" for i in range(10)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    data = load(tmp_path / "d.csv", standardize=False, test_split=2)
    assert data.shape == (1, 1, 3) and data.classes == ["cat", "dog"] and data.value_kind == "real"
    x = torch.cat([data.train_x, data.test_x]).reshape(-1, 3)
    y = torch.cat([data.train_y, data.test_y])
    for row, label in zip(x.tolist(), y.tolist()):
        i = int(row[0])
        assert row == [i, 2 * i, -i] and data.classes[label] == ("cat" if i % 2 else "dog")


def test_csv_without_header_and_a_named_label_column(tmp_path):
    (tmp_path / "plain.csv").write_text("0.5,1\n0.25,0\n0.75,1\n0,0\n1,1\n")
    data = load(tmp_path / "plain.csv", standardize=False, test_split=1)
    assert len(data.train_x) + len(data.test_x) == 5 and data.num_classes == 0
    assert data.value_kind == "unit"
    (tmp_path / "named.csv").write_text("x,kind\n0.5,10\n0.1,2\n0.3,10\n0.2,2\n")
    data = load(tmp_path / "named.csv", label_column="kind", test_split=1)
    assert data.classes == ["2", "10"]          # integer labels sort as numbers
    with pytest.raises(UserError, match="dataset.label_column=klass: .*no such column.*x, kind"):
        load(tmp_path / "named.csv", label_column="klass")


# -- labels ---------------------------------------------------------------------------------------
def test_labels_from_a_separate_file_any_values(tmp_path):
    x = rng().random((12, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    names = np.array(["zebra", "ant", "moth"] * 4)
    np.save(tmp_path / "y.npy", names)
    data = load(tmp_path / "x.npy", labels=str(tmp_path / "y.npy"), test_split=3)
    assert data.classes == ["ant", "moth", "zebra"]
    test = _test_rows(12, 3)
    assert [data.classes[k] for k in data.test_y.tolist()] == names[test].tolist()
    np.save(tmp_path / "neg.npy", np.array([-5, 7, 100] * 4))
    data = load(tmp_path / "x.npy", labels=str(tmp_path / "neg.npy"), test_split=3)
    assert data.classes == ["-5", "7", "100"] and set(data.train_y.tolist()) <= {0, 1, 2}
    np.save(tmp_path / "short.npy", np.arange(11))
    with pytest.raises(UserError, match=r"short.npy holds 11 labels for 12 examples"):
        load(tmp_path / "x.npy", labels=str(tmp_path / "short.npy"))


def test_labels_length_mismatch_in_npz(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((5, 2)), labels=np.arange(4))
    with pytest.raises(UserError, match=r"bad.npz \[labels\] holds 4 labels for 5 examples"):
        load(tmp_path / "bad.npz")


# -- standardisation ------------------------------------------------------------------------------
def test_standardisation_uses_the_training_split_only(tmp_path):
    x = rng(3).normal(loc=[1, -20, 300], scale=[1, 0.1, 40], size=(500, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    data = load(tmp_path / "x.npy", test_split=0.2)
    assert data.value_kind == "real" and data.stats["shape"] == [1, 1, 3]
    train, test = data.train_x.reshape(-1, 3).double(), data.test_x.reshape(-1, 3).double()
    assert torch.allclose(train.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(train.std(0, unbiased=False), torch.ones(3, dtype=torch.float64),
                          atol=1e-5)
    # the numbers are the training rows' own mean and std, and the test rows use them
    test_rows = _test_rows(500, 100)
    train_rows = np.setdiff1d(np.arange(500), test_rows)
    mean, std = x[train_rows].astype(np.float64).mean(0), x[train_rows].astype(np.float64).std(0)
    np.testing.assert_allclose(data.stats["mean"], mean, rtol=1e-10)
    np.testing.assert_allclose(data.stats["std"], std, rtol=1e-10)
    np.testing.assert_allclose(test.numpy(), (x[test_rows] - mean) / std, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(test.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-3)


def test_standardisation_in_chunks_matches_the_direct_computation(tmp_path, monkeypatch):
    import vae_train.data.arrays as arrays

    x = rng(4).normal(loc=1e4, scale=3, size=(1000, 5))
    np.save(tmp_path / "x.npy", x)
    whole = load(tmp_path / "x.npy")
    monkeypatch.setattr(arrays, "CHUNK_BYTES", 8 * 5 * 7)        # 7 rows a chunk
    chunked = load(tmp_path / "x.npy")
    np.testing.assert_allclose(chunked.stats["mean"], whole.stats["mean"], rtol=1e-12)
    np.testing.assert_allclose(chunked.stats["std"], whole.stats["std"], rtol=1e-9)
    assert torch.allclose(chunked.train_x, whole.train_x, atol=1e-5)


def test_saved_stats_reproduce_the_same_tensors(tmp_path):
    x = rng(5).gamma(2.0, 3.0, size=(80, 4, 2)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    first = load(tmp_path / "x.npy")
    import json

    stats = json.loads(json.dumps(first.stats))                  # as saved with a run
    again = load(tmp_path / "x.npy", stats=stats)
    assert torch.equal(first.train_x, again.train_x) and torch.equal(first.test_x, again.test_x)
    assert again.stats == first.stats and again.value_kind == "real"
    # saved stats apply to another file of the same shape as they are (not recomputed)
    np.save(tmp_path / "shifted.npy", x + 10)
    shifted = load(tmp_path / "shifted.npy", stats=stats)
    assert shifted.stats == first.stats
    step = 10 / np.asarray(stats["std"]).reshape(1, 1, 1, 2)
    np.testing.assert_allclose((shifted.train_x - first.train_x).numpy(),
                               np.broadcast_to(step, first.train_x.shape), rtol=1e-4)
    bad = {**stats, "shape": [1, 1, 5], "mean": [0] * 5, "std": [1] * 5}
    with pytest.raises(UserError, match=r"dataset.stats has shape \[1, 1, 5\].*does not fit"):
        load(tmp_path / "x.npy", stats=bad)
    with pytest.raises(UserError, match="dataset.stats is given but dataset.standardize=false"):
        load(tmp_path / "x.npy", stats=stats, standardize=False)


def test_a_constant_feature_is_centred_and_logged_not_refused(tmp_path, caplog):
    x = rng().normal(size=(30, 3)).astype(np.float32)
    x[:, 1] = 0.1
    np.save(tmp_path / "x.npy", x)
    with caplog.at_level(logging.WARNING, logger="vae_train.data.arrays"):
        data = load(tmp_path / "x.npy")
    assert data.stats["std"][1] == 1.0
    assert torch.all(data.train_x[..., 1] == 0) and torch.isfinite(data.train_x).all()
    assert "1 of 3 features" in caplog.text and "constant" in caplog.text and "[1]" in caplog.text


# -- value kinds and memory -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.bool_, np.int64])
def test_zero_one_data_are_binary_and_not_standardised(tmp_path, dtype):
    x = (rng().random((40, 10)) < 0.3).astype(dtype)
    np.save(tmp_path / "b.npy", x)
    data = load(tmp_path / "b.npy")
    assert data.value_kind == "binary" and data.stats is None
    from vae_train.data import to_float
    from vae_train.data.rows import as_tensor

    floats = to_float(torch.cat([as_tensor(data.train_x), as_tensor(data.test_x)]))
    assert set(floats.unique().tolist()) <= {0.0, 1.0}
    assert floats.sum().item() == x.sum()


def test_zero_255_images_are_binary_and_stay_bytes(tmp_path):
    x = (rng().random((20, 1, 5, 5)) < 0.5).astype(np.uint8) * 255
    np.save(tmp_path / "b.npy", x)
    data = load(tmp_path / "b.npy")
    assert data.value_kind == "binary" and isinstance(data.train_x, Rows)


def test_unit_and_real_without_standardisation(tmp_path):
    np.save(tmp_path / "u.npy", rng().random((20, 3)).astype(np.float32))
    np.save(tmp_path / "r.npy", rng().normal(size=(20, 3)).astype(np.float32))
    assert load(tmp_path / "u.npy", standardize=False).value_kind == "unit"
    assert load(tmp_path / "r.npy", standardize=False).value_kind == "real"
    assert load(tmp_path / "u.npy").value_kind == "real"          # auto: floats standardised


def test_a_big_unstandardised_npy_is_memory_mapped_rows(tmp_path):
    x = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32,
                                  shape=(200_000, 64))             # 51 MB
    x[:] = 0.5
    x[::1000, 0] = 0.25
    x.flush()
    del x
    data = load(tmp_path / "big.npy", standardize=False)
    assert isinstance(data.train_x, Rows) and isinstance(data.test_x, Rows)
    assert isinstance(data.train_x.base, np.memmap)                 # not read into memory
    assert len(data.train_x) == 180_000 and data.train_x.shape == (180_000, 1, 1, 64)
    assert data.value_kind == "unit"
    test = _test_rows(200_000, 20_000)
    got = data.test_x[:5].materialize().numpy()[:, 0, 0, 0]
    assert got.tolist() == [0.25 if r % 1000 == 0 else 0.5 for r in test[:5]]


# -- errors ---------------------------------------------------------------------------------------
def one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_missing_file_and_unsupported_extension(tmp_path):
    with pytest.raises(UserError) as e:
        load(tmp_path / "nope.npy")
    assert "no such file" in one_line(e) and "nope.npy" in one_line(e)
    (tmp_path / "data.txt").write_text("1 2 3\n")
    with pytest.raises(UserError) as e:
        load(tmp_path / "data.txt")
    assert ".txt is not supported" in one_line(e) and ".npy, .npz or .csv" in one_line(e)
    with pytest.raises(UserError, match="dataset=arrays needs a file: dataset.path=FILE"):
        Arrays()


def test_wrong_ndim_says_which_shapes_are_accepted(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros(10, np.float32))
    with pytest.raises(UserError) as e:
        load(tmp_path / "flat.npy")
    assert "shape (10,)" in one_line(e) and "N x D vectors, N x T x F sequences" in one_line(e)
    # five dimensions are videos (N x T x C x H x W, tests/test_video.py); six are nothing
    np.save(tmp_path / "six.npy", np.zeros((2, 2, 2, 2, 2, 2), np.float32))
    with pytest.raises(UserError, match=r"shape \(2, 2, 2, 2, 2, 2\); accepted.*videos"):
        load(tmp_path / "six.npy")


def test_nan_and_inf_are_counted_and_the_file_named(tmp_path):
    x = rng().random((50, 4)).astype(np.float32)
    x[7, 1] = np.nan
    x[30, 0] = np.inf
    x[30, 2] = -np.inf
    np.save(tmp_path / "holes.npy", x)
    with pytest.raises(UserError) as e:
        load(tmp_path / "holes.npy")
    msg = one_line(e)
    assert "holes.npy" in msg and "3 NaN or infinite values" in msg


def test_non_numeric_csv_cell_names_row_and_column(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,c\n1,2,3\n4,oops,6\n")
    with pytest.raises(UserError) as e:
        load(tmp_path / "d.csv")
    assert "line 3, column 2 ('b'): 'oops' is not a number" in one_line(e)
    (tmp_path / "ragged.csv").write_text("1,2,3\n4,5\n")
    with pytest.raises(UserError, match="line 2 has 2 cells but the first row has 3"):
        load(tmp_path / "ragged.csv")


def test_objects_and_bad_labels_are_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="holds Python objects"):
        load(tmp_path / "obj.npy")
    np.save(tmp_path / "x.npy", np.zeros((4, 2), np.float32))
    np.save(tmp_path / "frac.npy", np.array([0, 0.5, 1, 2]))
    with pytest.raises(UserError, match="label 0.5 is not a whole number"):
        load(tmp_path / "x.npy", labels=str(tmp_path / "frac.npy"))
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(UserError, match="cannot read .*corrupt.npz as a .npz file"):
        load(tmp_path / "corrupt.npz")


def test_test_split_that_leaves_nothing(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((5, 2), np.float32))
    with pytest.raises(UserError, match=r"dataset.test_split=5 leaves 0 of 5"):
        load(tmp_path / "x.npy", test_split=5)
    with pytest.raises(UserError, match=r"^dataset.test_split=0 is invalid"):
        load(tmp_path / "x.npy", test_split=0)


# -- through the config ---------------------------------------------------------------------------
def test_arrays_through_hydra_composition(tmp_path):
    from vae_train.config import validate

    x = rng().normal(size=(120, 6)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, labels=np.array(["a", "b", "c"] * 40))
    over = ["dataset=arrays", f"dataset.path={tmp_path / 'd.npz'}", "dataset.test_split=0.25"]
    cfg = compose_cfg(over)
    assert cfg.dataset.likelihood == "auto" and cfg.loss.likelihood == "auto"
    data = load_image_data(cfg.dataset)
    assert data.name == "arrays" and data.shape == (1, 1, 6) and len(data.test_x) == 30
    assert data.classes == ["a", "b", "c"] and data.value_kind == "real"
    # a bad value is refused by the config check, naming the key, before anything is read
    with pytest.raises(UserError, match="^dataset.test_split=1.5 is invalid"):
        validate(compose_cfg([*over[:2], "dataset.test_split=1.5", "loss.likelihood=gaussian"]))
    with pytest.raises(UserError, match="^dataset.standardize='yes' is invalid"):
        validate(compose_cfg([*over[:2], "dataset.standardize=yes", "loss.likelihood=gaussian"]))
    # stats saved with a run come back through the config node (here: a command-line dict)
    saved = ",".join(f"{k}:[{','.join(repr(v) for v in data.stats[k])}]"
                     for k in ("mean", "std", "shape"))
    cfg = compose_cfg([*over, f"dataset.stats={{{saved}}}"])
    assert list(cfg.dataset.stats.shape) == [1, 1, 6]
    again = load_image_data(cfg.dataset)
    assert torch.equal(again.train_x, data.train_x) and again.stats == data.stats


def test_arrays_trains_one_step_through_build(tmp_path):
    """Composed, validated and built like a run (with a likelihood named, until auto lands):
    a training step on the standardised vectors gives a finite loss."""
    from conftest import make_trainer
    from vae_train.config import validate

    x = rng().normal(size=(64, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    over = ["dataset=arrays", f"dataset.path={tmp_path / 'x.npy'}", "loss.likelihood=gaussian",
            "device=cpu", "model.latent_dim=2", "model.hidden_dims=[8]"]
    validate(compose_cfg(over))
    trainer = make_trainer(over, tmp_path)
    assert trainer.model.input_shape == (1, 1, 5) and trainer.data.values == "real"
    xb, yb = trainer.data.train_batch(torch.arange(8))
    assert xb.shape == (8, 1, 1, 5) and xb.dtype == torch.float32
    terms = trainer.train_step(xb, yb)
    assert torch.isfinite(terms["loss"])
