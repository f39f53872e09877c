"""MIG and the FactorVAE metric on constructed codes whose answers are known."""

import math

import numpy as np
import pytest
import torch

from vae_train.data import FactorGrid
from vae_train.disentangle import (discretize, entropy, factorvae_score, majority_vote, measure,
                                   mig, mutual_information, vote_argmins, vote_factors)
from vae_train.evaluate import model_code_fn

SIZES = [3, 6, 40, 32, 32]          # the dSprites grid
NAMES = ["shape", "scale", "orientation", "pos_x", "pos_y"]
ROTATION = np.linalg.qr(np.random.default_rng(2).standard_normal((5, 5)))[0]


def perfect(f, noise=0.01, seed=1):
    """Latent j = factor j scaled into [0, 1), plus small noise: perfectly disentangled."""
    rng = np.random.default_rng(seed + len(f))
    return f / np.array(SIZES) + noise * rng.standard_normal(f.shape)


def rotated(f):
    """The same information, standardised and mixed by a random rotation."""
    z = (f / np.array(SIZES) - 0.5) * math.sqrt(12)
    return z @ ROTATION.T


def noise(f):
    return np.random.default_rng(len(f)).standard_normal((len(f), 5))


def run(code_of, **kw):
    return measure(code_of, NAMES, SIZES, **{"samples": 10000, "votes": 800, "group": 100, **kw})


def test_entropy_and_mutual_information_match_closed_forms():
    a = np.repeat(np.arange(4), 250)
    assert entropy(a) == pytest.approx(math.log(4))
    assert mutual_information(a, a) == pytest.approx(math.log(4))
    assert mutual_information(a, a % 2) == pytest.approx(math.log(2))  # a determines a % 2
    b = np.tile(np.arange(5), 200)                                      # independent of a
    assert mutual_information(a, b) == pytest.approx(0, abs=1e-12)
    assert entropy(np.zeros(10)) == 0


def test_discretize_cuts_each_latent_into_equal_width_bins():
    codes = np.stack([np.linspace(0, 1, 21), np.full(21, 3.0), np.linspace(-5, 5, 21)], 1)
    b = discretize(codes, bins=4)
    assert b.min() == 0 and b.max() == 3
    assert b[:, 0].tolist() == b[:, 2].tolist()            # the range, not the scale, matters
    assert (b[:, 1] == 0).all()                             # a constant latent: one bin
    assert np.bincount(b[:, 0]).tolist() == [5, 5, 5, 6]    # the maximum goes in the last bin


def test_mig_of_a_perfect_code_is_near_one_and_of_a_rotation_or_noise_near_zero():
    good, rot, bad = run(perfect), run(rotated), run(noise)
    per = good["disentanglement"]["mig_per_factor"]
    # factors with at most 20 values fit the bins: gap = whole entropy
    assert per["shape"] > 0.99 and per["scale"] > 0.99
    # 32 or 40 values in 20 bins: a latent holds at most log 20 nats of them
    assert all(0.65 < per[k] < math.log(20) / math.log(32) for k in NAMES[2:])
    assert good["mig"] > 0.8
    assert rot["mig"] < 0.15 and bad["mig"] < 0.01
    mi = np.array(good["disentanglement"]["mutual_info"])  # latent x factor, nats
    assert mi.shape == (5, 5) and np.argmax(mi, axis=0).tolist() == [0, 1, 2, 3, 4]
    h = good["disentanglement"]["factor_entropy"]
    assert h["shape"] == pytest.approx(math.log(3), abs=0.01)


def test_mig_is_zero_for_a_factor_held_twice():
    f = np.random.default_rng(0).integers(0, 6, (5000, 2))
    codes = np.stack([f[:, 0], f[:, 0] + 0.01, f[:, 1]], 1).astype(float)
    out = mig(codes, f, bins=20)
    assert out["per_factor"][0] == pytest.approx(0, abs=1e-9)   # two latents, no gap
    assert out["per_factor"][1] == pytest.approx(1, abs=0.01)  # minus the plug-in bias
    assert out["mig"] == pytest.approx(0.5, abs=0.01)


def test_factorvae_metric_is_one_for_a_perfect_code_lower_rotated_chance_for_noise():
    assert run(perfect)["factorvae_metric"] == 1.0
    assert run(perfect)["disentanglement"]["factorvae_classifier"] == NAMES
    assert run(rotated)["factorvae_metric"] < 0.9
    assert run(noise)["factorvae_metric"] < 0.35                # chance is 1/5


def test_collapsed_latents_are_pruned_before_the_argmin():
    def with_dead(f):   # a sixth latent that barely moves would win every argmin unpruned
        z = perfect(f)
        return np.concatenate([z, 1e-4 * np.random.default_rng(0).standard_normal((len(f), 1))],
                              axis=1)

    out = run(with_dead)
    assert out["factorvae_metric"] == 1.0
    d = out["disentanglement"]
    assert d["active_latents"] == 5 and d["latent_dims"] == 6
    assert d["factorvae_classifier"][5] is None
    assert d["votes_fit"] == 400 and d["votes_eval"] == 400 and d["samples"] == 10000


def test_a_code_with_every_latent_collapsed_scores_chance():
    out = run(lambda f: np.zeros((len(f), 3)), votes=1000)
    assert out["disentanglement"]["active_latents"] == 0
    assert 0.1 < out["factorvae_metric"] < 0.3
    assert out["mig"] == 0


def test_votes_fix_one_factor_per_group():
    f, fixed = vote_factors(SIZES, 50, 30, np.random.default_rng(0))
    assert f.shape == (50, 30, 5) and fixed.shape == (50,)
    for g, k in zip(f, fixed):
        assert len(set(g[:, k])) == 1                   # the fixed factor
        others = [j for j in range(5) if j != k and SIZES[j] > 6]
        assert all(len(set(g[:, j])) > 1 for j in others)
    assert (f >= 0).all() and (f < np.array(SIZES)).all()
    assert set(fixed) == set(range(5))


def test_argmin_and_majority_vote_by_hand():
    groups = np.zeros((2, 4, 3))
    groups[0] = [[0, 1, 9], [0, 2, 9], [0, 3, 9], [0, 4, 9]]   # latent 0 constant
    groups[1] = [[1, 0, 0], [2, 0, 0], [3, 0, 1], [4, 0, 2]]   # latent 1 constant
    active = np.array([True, True, True])
    assert vote_argmins(groups, np.ones(3), active).tolist() == [0, 1]
    assert vote_argmins(groups, np.ones(3), np.array([False, True, True])).tolist() == [2, 1]
    assert vote_argmins(groups, np.ones(3), np.zeros(3, bool)).tolist() == [-1, -1]
    # latent 0 voted for factor 1 twice and factor 0 once; latent 2 never: the common factor
    clf = majority_vote(np.array([0, 0, 0, 1]), np.array([1, 1, 0, 2]), 3, 3)
    assert clf.tolist() == [1, 2, 1, 1]
    score = factorvae_score(np.array([0, 0, 0, 1]), np.array([1, 1, 0, 2]),
                            np.array([0, 1, 2]), np.array([1, 0, 1]), 3, 3)
    assert score["train_accuracy"] == 0.75 and score["accuracy"] == pytest.approx(2 / 3)


def test_measure_is_seeded():
    a, b, c = run(noise, seed=3), run(noise, seed=3), run(noise, seed=4)
    assert a == b and a["disentanglement"]["mutual_info"] != c["disentanglement"]["mutual_info"]


def test_model_code_fn_renders_encodes_and_passes_labels_to_conditional_models():
    seen = []

    class Model(torch.nn.Module):
        conditional = True

        def code(self, x, y):
            seen.append(y.clone())
            return x.flatten(1)[:, :2] * 2

    grid = FactorGrid(["a", "b"], [2, 3], [[0, 1], [0, 1, 2]],
                      render=lambda f: torch.tensor(f, dtype=torch.uint8).view(-1, 1, 1, 2) * 100,
                      label_factor=1)
    counted = []
    code_of = model_code_fn(Model(), grid, torch.device("cpu"), batch_size=2,
                            progress=counted.append)
    f = np.array([[0, 1], [1, 2], [1, 0]])
    codes = code_of(f)
    assert np.allclose(codes, f * 200 / 255)
    assert torch.cat(seen).tolist() == [1, 2, 0] and counted == [2, 1]
    assert grid.sample(7, np.random.default_rng(0)).shape == (7, 2)
