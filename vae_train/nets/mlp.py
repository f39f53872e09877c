"""Multi-layer perceptrons and the activation functions every body can use."""

from __future__ import annotations

from torch import nn

from vae_train.checks import one_of

ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU,
               "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh}
# The rule for a model's ``activation`` option (see vae_train.checks).
ACTIVATION = one_of(*ACTIVATIONS)


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"activation {name!r} is not known; use one of "
                         f"{', '.join(ACTIVATIONS)}") from None


def mlp(in_dim: int, hidden_dims, out_dim: int, act: str = "relu") -> nn.Sequential:
    """Linear layers of the given widths with an activation between them (none at the end)."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden_dims:
        layers += [nn.Linear(d, int(h)), activation(act)]
        d = int(h)
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)
