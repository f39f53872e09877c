"""Bad input of every kind, through the real entry point (in this process, to keep it quick):
a non-zero exit, one line that names the key or path, no traceback, and no run directory that
looks like a finished run."""

import sys

import pytest

from conftest import TINY
from vae_train.train import main

# (command-line arguments, text the message must contain)
BAD = [
    # wrong types
    (["model.latent_dim=abc"], "model.latent_dim='abc' is invalid"),
    (["trainer.batch_size=1.5"], "trainer.batch_size=1.5 is invalid"),
    (["trainer.grad_clip=fast"], "trainer.grad_clip='fast' is invalid"),
    (["model.hidden_dims=[a]"], "model.hidden_dims"),
    # out of range
    (["dataset.val_size=2.5"], "dataset.val_size=2.5 is invalid"),
    (["seed=-1"], "seed=-1 is invalid"),
    (["loss=iwae", "loss.k=0"], "loss.k=0 is invalid"),
    (["trainer.nonfinite=maybe"], "trainer.nonfinite='maybe' is invalid"),
    (["device.compile=maybe"], "device.compile='maybe' is invalid"),
    (["device.channels_last=sometimes"], "device.channels_last='sometimes' is invalid"),
    (["loss.sigma=0"], "loss.sigma=0 is invalid"),
    (["optimizer.lr_schedule.gamma=2"], "optimizer.lr_schedule.gamma=2 is invalid"),
    (["optimizer.betas=[0.9,1.5]"], "optimizer.betas=[0.9, 1.5] is invalid"),
    (["model=vqvae", "model.num_codes=1"], "model.num_codes=1 is invalid"),
    (["model=gumbel_vae", "model.tau0=0"], "model.tau0=0 is invalid"),
    # unknown keys and options
    (["trainer.epoch=3"], "trainer.epoch"),
    (["device=tpu"], "device/tpu"),
    (["loss=kl_only"], "loss/kl_only"),
    (["+optimizer.groups.disc.lr=1e-3"], "optimizer.groups.disc"),
    # model settings that do not fit the model or the data
    (["model=aae", "model.prior=circle"], "model.prior='circle'"),
    (["model=gumbel_vae", "model.num_categories=1"], "model.num_categories=1"),
    (["model=rnn_vae", "model.cell=rnn"], "model.cell='rnn'"),
    (["model=vqvae", "loss=iwae"], "trains its own objective"),
    (["model=conv_vae", "model.channels=[8,8,8,8,8,8]"], "model.channels has 6 stages"),
    (["model=conv_vae", "dataset=sines", "dataset.num_train=100"], "model.channels"),
    (["dataset.labeled=100"], "dataset.labeled=100"),
    (["model=m2", "dataset.labeled=5"], "dataset.labeled=5"),
    (["dataset=sines", "dataset.binarize=dynamic"], "dataset.binarize=dynamic"),
    (["model=nope"], "model/nope"),
    (["model.latent_dimm=3"], "model.latent_dimm"),
    (["loss=iwae", "+loss.beta=2"], "unexpected keyword argument 'beta'"),
    (["loss=beta_vae", "loss.capacity=true", "loss.free_bits=1"], "free_bits does not combine"),
    (["optimizer=adamw", "+optimizer.momentum=0.9"], "optimizer=torch.optim.AdamW cannot be built"),
    (["optimizer.lr=inf"], "optimizer.lr=inf is invalid"),
    (["optimizer.lr=0"], "optimizer.lr=0 is invalid"),
    (["loss.beta=-1"], "loss.beta=-1 is invalid"),
    (["trainer.epochs=-1"], "trainer.epochs=-1 is invalid"),
    (["device.precision=8"], "device.precision"),
    (["resume=does/not/exist"], "resume=does/not/exist"),
    # data and files
    (["dataset=mnist", "dataset.root=EMPTY", "dataset.download=false"], "MNIST not found"),
    (["dataset=cifar10", "dataset.root=EMPTY", "dataset.download=false"], "CIFAR-10 not found"),
    (["dataset=mnist", "dataset.root=AFILE"], "is a file, not a directory"),
    (["resume=AFILE"], "truncated or corrupt"),
    (["resume=EMPTY"], "no such file or directory"),
    (["launcher=joblib"], "launcher=joblib"),
    # sizes and numbers at the edges: refused before anything is allocated
    (["seed=123456789012345678901234567890"], "it is too large (at most 2^63-1)"),
    (["trainer.batch_size=99999999999999999999"], "trainer.batch_size=99999999999999999999"),
    (["model.hidden_dims=[1000000000]"], "needs about"),
    (["model.hidden_dims=[100000000000000000000]"], "model.hidden_dims"),
    (["loss=iwae", "loss.k=1000000"], "one batch of 64"),
    (["model=gumbel_vae", "model.num_latents=100000", "model.num_categories=100000"],
     "needs about"),
    (["dataset.num_train=1000000000"], "GB of examples, but"),
    (["dataset=sines", "dataset.num_train=10000000000"], "would generate"),
    (["trust_run_code=maybe"], "trust_run_code='maybe' is invalid"),
    (["overwrite=1"], "overwrite=1 is invalid"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_and_leaves_no_finished_run(args, needle, tmp_path, monkeypatch,
                                                         capfd):
    (tmp_path / "afile").write_text("not a checkpoint, not a folder")
    args = [a.replace("EMPTY", str(tmp_path / "empty")).replace("AFILE", str(tmp_path / "afile"))
            for a in args]
    base = [a for a in TINY if not (a.startswith("dataset") and any(
        b.startswith("dataset=") for b in args))]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["vae_train", *base, *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    out, err = capfd.readouterr()
    text = out + err
    assert exit_.value.code not in (0, None)
    assert needle in text, text
    assert "Traceback" not in text, text
    assert not list(tmp_path.glob("outputs/**/metrics.json"))
    assert not list(tmp_path.glob("outputs/**/checkpoints/*.pt"))
