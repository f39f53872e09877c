"""The residual conv body (vae_train/nets/resnet.py) and the models that use it: conv_vae
(default), cvae (body=resnet) and vqvae (body=resnet): shapes for any side, decoders built to
the likelihood's output shape, attention, the label reaching both halves of a CVAE, training,
and runs saved before the body existed still building the strided body."""

import pytest
import torch
from torch import nn

from conftest import compose_cfg, make_trainer
from vae_train.config import validate
from vae_train.errors import UserError
from vae_train.models.conv_vae import ConvVAE
from vae_train.models.cvae import CVAE
from vae_train.models.vqvae import VQVAE
from vae_train.nets import ConvEncoder, ResNetDecoder, ResNetEncoder
from vae_train.nets.resnet import SelfAttention, halvings_to

SMALL = {"channels": [8, 16], "activation": "silu"}


class TwoParams(nn.Module):
    """A likelihood with two numbers per pixel (a logit and an unused one): decoders must give
    ``param_channels(C) = 2C`` channels."""

    @staticmethod
    def param_channels(c):
        return 2 * c

    def log_prob(self, out, x):
        c = x.shape[-3]
        logit = out[..., :c, :, :]
        return -nn.functional.binary_cross_entropy_with_logits(
            logit, x.expand_as(logit), reduction="none").flatten(-3).sum(-1)

    def mean(self, out):
        return torch.sigmoid(out[..., :out.shape[-3] // 2, :, :])


# -- shapes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("side", [28, 32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_conv_vae_round_trips_every_side(side, channels):
    torch.manual_seed(0)
    model = ConvVAE((channels, side, side), latent_dim=4, body="resnet", **SMALL)
    x = torch.rand(2, channels, side, side)
    q = model.encode(x)
    assert q.mu.shape == (2, 4)
    assert model.decoder_forward(q.mu, None).shape == (2, channels, side, side)
    rec = model.reconstruct(x)
    assert rec.shape == x.shape and 0 <= rec.min() and rec.max() <= 1
    # the side is halved until it is 8 pixels or fewer: 28 -> 7, 32 -> 8, 64 -> 8, 128 -> 8
    assert model.encoder.feature_shape[1:] == {28: (7, 7), 32: (8, 8), 64: (8, 8),
                                               128: (8, 8)}[side]
    assert len(model.encoder.widths) == {28: 2, 32: 2, 64: 3, 128: 4}[side]
    assert model.encoder.widths[-1] == 16          # the last width repeats


@pytest.mark.parametrize("shape", [(1, 27, 27), (3, 33, 20), (1, 9, 9)])
def test_odd_and_unequal_sides_come_back_exactly(shape):
    model = ConvVAE(shape, latent_dim=3, body="resnet", channels=[8], activation="silu")
    x = torch.rand(2, *shape)
    assert model.reconstruct(x).shape == x.shape


def test_halvings_follow_the_side_unless_given():
    assert [halvings_to(s) for s in (8, 9, 16, 28, 32, 64, 128)] == [0, 1, 1, 2, 2, 3, 4]
    # more widths than the side asks for: one halving per width
    enc = ResNetEncoder((1, 64, 64), [8, 8, 16, 16], 10)
    assert enc.feature_shape == (16, 4, 4)
    # model.downsamples fixes the number
    enc = ResNetEncoder((1, 28, 28), [8], 10, downsamples=1)
    assert enc.feature_shape == (8, 14, 14) and enc.widths == [8]
    with pytest.raises(UserError, match="model.channels has 3 stages, more than the 1 halvings"):
        ResNetEncoder((1, 28, 28), [8, 8, 8], 10, downsamples=1)
    with pytest.raises(UserError, match="model.channels has 6 stages, too many for 28x28 "
                                        r"inputs \(their side can be halved at most 5 times"):
        ResNetEncoder((1, 28, 28), [8] * 6, 10)
    with pytest.raises(UserError, match="model.downsamples=6 does not fit 28x28 inputs"):
        ResNetEncoder((1, 28, 28), [8], 10, downsamples=6)
    # blocks: one number for all resolutions, or one each (the last repeating)
    enc = ResNetEncoder((1, 64, 64), [8], 10, blocks=[0, 2])
    assert enc.blocks == [0, 2, 2]
    with pytest.raises(UserError, match="model.blocks has 4 stages"):
        ResNetEncoder((1, 28, 28), [8], 10, blocks=[1, 1, 1, 1])


# -- output channels follow the likelihood ------------------------------------------------------
@pytest.mark.parametrize("body", ["plain", "resnet"])
@pytest.mark.parametrize("channels", [1, 3])
def test_decoders_give_the_likelihoods_channels(body, channels):
    shape = (channels, 28, 28)
    conv = ConvVAE(shape, latent_dim=4, body=body, channels=[8, 16], likelihood=TwoParams())
    assert conv.output_shape == (2 * channels, 28, 28)
    assert conv.decoder_forward(torch.zeros(2, 4), None).shape == (2, 2 * channels, 28, 28)
    cvae = CVAE(shape, 10, latent_dim=4, body="mlp" if body == "plain" else "resnet",
                hidden_dims=[32], channels=[8, 16], likelihood=TwoParams())
    out = cvae.decoder_forward(torch.zeros(2, 4), torch.tensor([1, 2]))
    assert out.flatten(1).shape == (2, 2 * channels * 28 * 28)
    vq = VQVAE(shape, num_codes=8, code_dim=4, channels=[8, 16], body=body, prior_channels=8,
               prior_layers=1, likelihood=TwoParams())
    x = torch.rand(2, *shape)
    z_q = vq.quantize(vq.encode(x))[1]
    assert vq.decoder(z_q).shape == (2, 2 * channels, 28, 28)
    assert vq.reconstruct(x).shape == x.shape          # the likelihood's mean: C channels
    terms = vq.loss_terms(x, phase="main")
    assert torch.isfinite(terms["loss"]) and terms["recon"] > 0


# -- attention -------------------------------------------------------------------------------
def test_attention_sits_at_the_lowest_resolution_and_mixes_positions():
    torch.manual_seed(0)
    plain = ConvVAE((1, 28, 28), latent_dim=4, body="resnet", **SMALL)
    attn = ConvVAE((1, 28, 28), latent_dim=4, body="resnet", attention=True, **SMALL)
    assert not any(isinstance(m, SelfAttention) for m in plain.modules())
    layers = [m for m in attn.modules() if isinstance(m, SelfAttention)]
    assert len(layers) == 2                                    # one in each half
    extra = sum(p.numel() for p in attn.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == sum(p.numel() for m in layers for p in m.parameters())
    x = torch.rand(2, 1, 28, 28)
    assert attn.reconstruct(x).shape == x.shape
    # the layer sees the 7x7 map: a change at one corner moves the far corner
    seen = []
    layers[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    attn.encode(x)
    assert seen == [(2, 16, 7, 7)]
    layer = SelfAttention(16)
    nn.init.normal_(layer.out.weight)
    h = torch.randn(1, 16, 7, 7)
    h2 = h.clone()
    h2[0, :, 0, 0] += 1.0
    assert (layer(h2) - layer(h))[0, :, 6, 6].abs().max() > 1e-4


# -- the CVAE's label -----------------------------------------------------------------------------
def test_the_label_reaches_the_resnet_cvae_encoder_and_decoder():
    torch.manual_seed(0)
    model = CVAE((1, 28, 28), 10, latent_dim=4, body="resnet", **SMALL)
    x, z = torch.rand(2, 1, 28, 28), torch.randn(2, 4)
    y0, y1 = torch.tensor([0, 0]), torch.tensor([3, 3])
    assert not torch.allclose(model.decode(z, y0), model.decode(z, y1))
    assert not torch.allclose(model.encode(x, y0).mu, model.encode(x, y1).mu)
    with pytest.raises(ValueError, match="needs class labels"):
        model.decode(z, None)


# -- training ---------------------------------------------------------------------------------
DATA = ["dataset=synthetic", "dataset.num_train=1200", "dataset.num_test=100",
        "trainer.batch_size=32", "trainer.progress=false", "trainer.epochs=1"]


# BatchNorm evaluates with running statistics that trail the weights in so short a run: it
# is held to a smaller drop.
@pytest.mark.parametrize("model,drop", [
    (["model=conv_vae", "model.channels=[16,32]", "model.norm=group"], 0.7),
    (["model=conv_vae", "model.channels=[16,32]", "model.attention=true"], 0.7),
    (["model=conv_vae", "model.channels=[16,32]", "model.norm=batch"], 0.85),
    (["model=conv_vae", "model.channels=[16,32]", "model.norm=none"], 0.7),
    (["model=cvae", "model.body=resnet", "model.channels=[16,32]"], 0.7),
], ids=["conv-group", "conv-attention", "conv-batch", "conv-none", "cvae"])
def test_a_short_training_lowers_the_loss(model, drop, tmp_path):
    trainer = make_trainer([*DATA, *model], tmp_path)
    assert isinstance(trainer.model.encoder, ResNetEncoder)
    before = trainer.evaluate(trainer.data.val)["loss"]
    trainer.fit()
    after = trainer.evaluate(trainer.data.val)
    assert after["loss"] < drop * before, (before, after)
    assert after["kl"] > 0.5                                # the latent is in use


def test_vqvae_with_the_resnet_body_trains_a_step(tmp_path):
    tr = make_trainer([*DATA, "model=vqvae", "model.body=resnet", "model.channels=[8,16]",
                       "model.num_codes=16", "model.code_dim=4", "model.prior_channels=8",
                       "model.prior_layers=1"], tmp_path)
    model = tr.model
    assert isinstance(model.encoder, ResNetEncoder) and isinstance(model.decoder, ResNetDecoder)
    assert model.grid == (7, 7)                              # 28 px -> 7x7 codes, as before
    x, y = tr.data.train_batch(torch.arange(50))
    opt = torch.optim.Adam(model.parameter_groups()["main"], 1e-3)
    first = None
    for step in range(3):
        terms = model.loss_terms(x, y, step=step, train=True, phase="main")
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        first = terms["loss"].item() if first is None else first
    after = model.loss_terms(x, y, step=3, train=False, phase=None)["loss"].item()
    assert after < first
    assert model.codes(x).shape == (50, 7, 7)


def test_the_vqvae_prior_stage_leaves_the_frozen_encoders_batch_statistics(tmp_path):
    tr = make_trainer([*DATA, "model=vqvae", "model.body=resnet", "model.norm=batch",
                       "model.channels=[8,16]", "model.num_codes=16", "model.code_dim=4",
                       "model.prior_channels=8", "model.prior_layers=1"], tmp_path)
    model = tr.model.train()
    x, y = tr.data.train_batch(torch.arange(32))
    stats = [k for k in model.encoder.state_dict() if k.endswith("running_mean")]
    assert stats
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    model.loss_terms(x, y, step=0, train=True, phase="prior")
    assert model.encoder.training
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
    model.loss_terms(x, y, step=0, train=True, phase="main")    # the first stage moves them
    assert not torch.equal(before[stats[0]], model.encoder.state_dict()[stats[0]])


# -- configs, and runs saved before the residual body --------------------------------------------
def test_the_configs_choose_the_bodies():
    cfg = compose_cfg(["model=conv_vae"])
    assert cfg.model.body == "resnet"
    assert compose_cfg(["model=cvae"]).model.body == "mlp"
    assert compose_cfg(["model=vqvae"]).model.body == "plain"
    for bad, key in (("model.body=dense", "model.body"), ("model.norm=layer", "model.norm"),
                     ("model.blocks=-1", "model.blocks"), ("model.downsamples=0",
                                                           "model.downsamples"),
                     ("model.attention=maybe", "model.attention"),
                     ("model.blocks=[1,-1]", "model.blocks"), ("model.blocks=[]", "model.blocks")):
        for model in ("conv_vae", "cvae", "vqvae"):
            with pytest.raises(UserError, match=f"^{key}="):
                validate(compose_cfg([f"model={model}", bad]))


def test_blocks_per_resolution_from_the_command_line(tmp_path):
    over = ["model=conv_vae", "model.blocks=[0,2]", "dataset=synthetic", "dataset.num_train=100",
            "dataset.image_size=64"]
    validate(compose_cfg(over))
    encoder = make_trainer(over, tmp_path).model.encoder
    assert encoder.blocks == [0, 2, 2] and encoder.widths == [32, 64, 64]


# The conv_vae node vae-train 0.1 saved with a run, and the weights it built.
OLD_CONV_VAE = {"latent_dim": 32, "channels": [32, 64], "hidden_dim": 256, "activation": "relu"}
OLD_KEYS = {"encoder.features.0.weight", "encoder.features.0.bias", "encoder.features.2.weight",
            "encoder.features.2.bias", "encoder.head.weight", "encoder.head.bias",
            "to_latent.0.weight", "to_latent.0.bias", "decoder.fc.0.weight", "decoder.fc.0.bias",
            "decoder.deconv.0.weight", "decoder.deconv.0.bias", "decoder.deconv.2.weight",
            "decoder.deconv.2.bias"}


def test_a_conv_vae_node_without_body_builds_the_strided_body_of_0_1():
    model = ConvVAE((1, 28, 28), **OLD_CONV_VAE)
    assert isinstance(model.encoder, ConvEncoder)
    assert set(model.state_dict()) == OLD_KEYS
    assert sum(p.numel() for p in model.parameters()) == 989_697
    vq = VQVAE((1, 28, 28), channels=[32, 64])
    assert isinstance(vq.encoder[0], ConvEncoder) and vq.grid == (7, 7)
    assert isinstance(CVAE((1, 28, 28), 10).encoder, nn.Sequential)
