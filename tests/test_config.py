"""Every option of every config group composes and builds; the checks catch bad values."""

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import compose_cfg, write_mnist_like
from vae_train.config import validate
from vae_train.device import resolve_device
from test_celeba import write_celeba
from test_folder import write_classes
from test_video import write_video_folder
from vae_train.data.cifar import write_cifar100, write_cifar_batch
from vae_train.data.svhn import write_svhn
from vae_train.errors import UserError
from vae_train.build import build
from vae_train.train import CONFIG_DIR
from vae_train.training.optim import lr_factor_fn
from vae_train.training.trainer import Trainer
from vae_train.logging import TBLogger

GROUPS = ["model", "dataset", "loss", "optimizer", "device"]
SMALL = ["dataset=synthetic", "dataset.num_train=200", "dataset.num_test=50"]


def options(group):
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def test_the_contract_options_exist():
    assert set(options("model")) >= {"vae", "conv_vae", "cvae"}
    assert set(options("dataset")) >= {"mnist", "fashion_mnist", "kmnist", "cifar10", "synthetic"}
    assert set(options("loss")) >= {"elbo"}
    assert set(options("optimizer")) >= {"adam", "adamw", "sgd"}
    assert set(options("device")) >= {"auto", "cpu", "cuda", "mps"}
    cfg = compose_cfg()
    choices = {"model": "vae", "dataset": "mnist", "loss": "elbo", "optimizer": "adam"}
    assert cfg.model._target_.endswith(".VAE") and cfg.dataset.name == choices["dataset"]
    assert cfg.device.type == "auto" and cfg.optimizer._target_ == "torch.optim.Adam"
    assert list(cfg.model.hidden_dims) == [400] and cfg.model.latent_dim == 20  # 784-400-20
    assert cfg.trainer.batch_size == 128 and cfg.optimizer.lr == 1e-3


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for folder in ("MNIST", "FashionMNIST", "KMNIST"):
        write_mnist_like(root / folder / "raw", 120, 40)
    cifar = root / "cifar-10-batches-py"
    cifar.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(cifar / name, rng.integers(0, 256, (24, 3, 32, 32)), rng.integers(0, 10, 24))
    fine = rng.integers(0, 100, 24)
    write_cifar100(root / "cifar-100-python", (rng.integers(0, 256, (24, 3, 32, 32)), fine,
                                               fine // 5),
                   (rng.integers(0, 256, (24, 3, 32, 32)), fine, fine // 5))
    for split in ("train", "test"):
        write_svhn(root / f"{split}_32x32.mat", rng.integers(0, 256, (24, 3, 32, 32)),
                   rng.integers(0, 10, 24))
    np.save(root / "arrays.npy", rng.normal(size=(60, 12)).astype(np.float32))
    np.save(root / "video.npy", rng.integers(0, 256, (30, 3, 3, 32, 32), dtype=np.uint8))
    write_classes(root / "images", {"a": 20, "b": 20})
    write_video_folder(root / "videos", ["a", "b"], per_class=10, frames=4)
    write_celeba(root / "celeba")
    return root


def _build_and_step(cfg, tmp_path):
    validate(cfg)
    dm, objective, model = build(cfg, torch.device("cpu"))
    trainer = Trainer(cfg, model, objective, dm, torch.device("cpu"), None, tmp_path,
                      TBLogger(tmp_path, enabled=False))
    x, y = dm.train_batch(torch.arange(min(8, len(dm.train))))
    for name, _, _ in trainer.stages:
        trainer.enter_stage(trainer.stages[0][1] + 1 if name != trainer.stages[0][0] else 1)
        terms = trainer.train_step(x, y)
        assert torch.isfinite(terms["loss"]), name
    assert model.reconstruct(x, y if model.conditional else None).shape == x.shape
    return dm, model


# Models of videos (examples T x C x H x W): built on videos of the same frame shapes, grey
# (moving_mnist from the MNIST-like IDX files of data_root) and colour (arrays of
# N x T x 3 x 32 x 32), instead of on images, which they refuse (tests/test_video.py).
VIDEO_MODELS = {"video_vae"}


def video_data(shape, data_root):
    if shape == "3x32":
        return ["dataset=arrays", f"dataset.path={data_root / 'video.npy'}"]
    return ["dataset=moving_mnist", "dataset.source=mnist", f"dataset.root={data_root}",
            "dataset.num_train=40", "dataset.num_test=10", "dataset.frames=3",
            "dataset.image_size=28", "dataset.object_size=12"]


@pytest.mark.parametrize("option", options("model"))
@pytest.mark.parametrize("shape", ["1x28", "3x32"])
def test_every_model_builds_for_grey_and_colour_images(option, shape, data_root, tmp_path):
    extra = ["dataset.channels=3", "dataset.image_size=32"] if shape == "3x32" else []
    data = [*SMALL, *extra]
    if option in VIDEO_MODELS:
        data = video_data(shape, data_root)
    cfg = compose_cfg([f"model={option}", *data])
    dm, model = _build_and_step(cfg, tmp_path)
    assert model.input_shape == dm.shape


@pytest.mark.parametrize("option", options("dataset"))
def test_every_dataset_builds(option, data_root, tmp_path):
    generated = {"synthetic": SMALL,
                 "sines": ["dataset=sines", "dataset.num_train=200", "dataset.num_test=50"],
                 "dsprites": ["dataset=dsprites", "dataset.num_train=200", "dataset.num_test=50",
                              "dataset.cache=false"],
                 "arrays": ["dataset=arrays", f"dataset.path={data_root / 'arrays.npy'}"],
                 "folder": ["dataset=folder", f"dataset.path={data_root / 'images'}",
                            "dataset.channels=1"],
                 "celeba": ["dataset=celeba", f"dataset.root={data_root}", "dataset.download=false",
                            "dataset.image_size=32", "dataset.val_size=1"],
                 # videos: built with the video model (image models are for images)
                 "moving_mnist": ["model=video_vae", *video_data("1x28", data_root)],
                 "video_folder": ["model=video_vae", "dataset=video_folder",
                                  f"dataset.path={data_root / 'videos'}"]}
    cfg = compose_cfg(generated.get(option) or
                      [f"dataset={option}", f"dataset.root={data_root}", "dataset.download=false"])
    dm, _ = _build_and_step(cfg, tmp_path)
    assert dm.shape == {"cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "svhn": (3, 32, 32),
                        "arrays": (1, 1, 12), "folder": (1, 10, 12), "celeba": (3, 32, 32),
                        "sines": (1, 64, 1), "dsprites": (1, 64, 64),
                        "moving_mnist": (3, 1, 28, 28),
                        "video_folder": (4, 1, 16, 16)}.get(option, (1, 28, 28))


@pytest.mark.parametrize("option", options("loss"))
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "logistic_mixture",
                                        "discretized_gaussian", "auto"])
def test_every_loss_builds(option, likelihood, tmp_path):
    _build_and_step(compose_cfg([f"loss={option}", f"loss.likelihood={likelihood}", *SMALL]),
                    tmp_path)


def test_learned_sigma_is_trained(tmp_path):
    cfg = compose_cfg(["loss.likelihood=gaussian", "loss.learn_sigma=true", *SMALL])
    dm, model = _build_and_step(cfg, tmp_path)
    assert model.likelihood.log_sigma.requires_grad


@pytest.mark.parametrize("option", options("optimizer"))
@pytest.mark.parametrize("schedule", ["constant", "cosine", "step"])
def test_every_optimizer_and_schedule_builds(option, schedule, tmp_path):
    cfg = compose_cfg([f"optimizer={option}", f"optimizer.lr_schedule.name={schedule}", *SMALL])
    _build_and_step(cfg, tmp_path)


@pytest.mark.parametrize("option", options("device"))
def test_every_device_resolves_or_says_why_not(option):
    cfg = compose_cfg([f"device={option}"])
    available = {"cpu": True, "auto": True, "cuda": torch.cuda.is_available(),
                 "mps": torch.backends.mps.is_available()}[option]
    if available:
        device, dtype = resolve_device(cfg.device)
        assert dtype is None and (option == "auto" or device.type == option)
    else:
        with pytest.raises(UserError, match=f"device={option}.*not available"):
            resolve_device(cfg.device)


@pytest.mark.parametrize("precision,dtype", [("32", None), ("bf16", torch.bfloat16),
                                             ("16", torch.float16)])
def test_precisions(precision, dtype):
    assert resolve_device(compose_cfg([f"device.precision={precision}", "device=cpu"]).device)[1] == dtype


def test_lr_schedules_are_functions_of_the_step():
    base = dict(warmup_steps=0, min_lr_ratio=0.1, step_epochs=2, gamma=0.5)
    cos = lr_factor_fn({**base, "name": "cosine"}, 10, 100)
    assert cos(0) == pytest.approx(1.0) and cos(50) == pytest.approx(0.55)
    assert cos(100) == pytest.approx(0.1)
    step = lr_factor_fn({**base, "name": "step"}, 10, 100)
    assert [step(s) for s in (0, 19, 20, 45)] == [1.0, 1.0, 0.5, 0.25]
    warm = lr_factor_fn({**base, "name": "constant", "warmup_steps": 4}, 10, 100)
    assert [warm(s) for s in (0, 1, 3, 4, 50)] == [0.25, 0.5, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("override,key", [
    ("model.latent_dim=0", "model.latent_dim"), ("loss.beta=-1", "loss.beta"),
    ("optimizer.lr=0", "optimizer.lr"), ("trainer.batch_size=0", "trainer.batch_size"),
    ("trainer.epochs=-1", "trainer.epochs"), ("device.precision=8", "device.precision"),
    ("dataset.val_size=0", "dataset.val_size"), ("dataset.binarize=maybe", "dataset.binarize"),
    ("loss.likelihood=poisson", "loss.likelihood"), ("model.hidden_dims=[0]", "model.hidden_dims"),
    ("trainer.grad_clip=-2", "trainer.grad_clip"), ("dataset.train_size=0", "dataset.train_size"),
])
def test_validation_names_the_key(override, key):
    cfg = compose_cfg([override])
    with pytest.raises(UserError, match=f"^{key}="):
        validate(cfg)
    validate(compose_cfg())  # the defaults pass


# Numeric settings that need no range check (any integer seed is fine).
UNCHECKED = set()


def _numeric_leaves(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _numeric_leaves(v, f"{path}.{k}" if path else k)
    elif isinstance(node, (int, float, list)) and not isinstance(node, bool):
        yield path


@pytest.mark.parametrize("group", ["model", "dataset", "loss", "optimizer", "device",
                                   "callbacks", "debug", "logger"])
def test_every_numeric_option_of_every_group_is_checked_before_data_is_read(group):
    """Each number (or list of numbers) any option of the group sets has a rule, found through
    the config (the classes its nodes' ``_target_`` name, and the fixed nodes' tables), which
    runs on the composed config before any data is loaded."""
    from omegaconf import OmegaConf

    from vae_train.config import rules

    for option in options(group):
        composed = compose_cfg([f"{group}={option}"])
        checked = set(rules(composed))
        cfg = OmegaConf.to_container(composed, resolve=True)
        missing = [p for p in _numeric_leaves(cfg)
                   if p not in checked | UNCHECKED and not p.startswith("hydra")]
        assert not missing, f"{group}={option}: no range check for {missing}"
        validate(compose_cfg([f"{group}={option}"]))       # and the defaults pass them
