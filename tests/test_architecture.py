"""The shape of the code stays the one the docs describe: no import cycles, no private names
imported across modules, models import no command and no data, nothing outside the model
contract probes a model for attributes, and a capability left half-implemented is refused."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

PKG = Path(__file__).resolve().parents[1] / "vae_train"


def modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports_of(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names imported from it) for every import in the file, function-level
    imports included."""
    out = []
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            out.append((base, [a.name for a in node.names]))
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    edges = {}
    for name, path in mods.items():
        deps = set()
        for target, names in imports_of(name, path):
            if not target.startswith("vae_train"):
                continue
            for n in names:   # `from vae_train.data import dsprites` imports a module
                if f"{target}.{n}" in mods:
                    deps.add(f"{target}.{n}")
            if target in mods:
                deps.add(target)
        edges[name] = deps - {name}
    return edges


def test_no_import_cycles():
    edges = graph()
    # a package imports its own modules (its __init__ re-exports them): not a cycle with them
    edges = {m: {d for d in ds if not d.startswith(m + ".")} for m, ds in edges.items()}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_no_private_names_imported_across_modules():
    bad = [(name, target, n) for name, path in modules().items()
           for target, names in imports_of(name, path) if target.startswith("vae_train")
           for n in names if n.startswith("_") and n != "__version__"]
    assert not bad, bad


def test_models_import_no_command_no_data_and_no_pictures():
    forbidden = ("vae_train.data", "vae_train.train", "vae_train.evaluate", "vae_train.sample",
                 "vae_train.report", "vae_train.runs", "vae_train.pictures",
                 "vae_train.training", "vae_train.build")
    for name, path in modules().items():
        if not name.startswith("vae_train.models"):
            continue
        for target, _ in imports_of(name, path):
            assert not target.startswith(forbidden), f"{name} imports {target}"


def test_nothing_outside_the_contract_probes_a_model_for_attributes():
    """Callers ask for a capability with isinstance (vae_train.models.base), never with
    hasattr/getattr on a model."""
    found = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("hasattr", "getattr") and node.args):
                subject = ast.unparse(node.args[0])
                if "model" in subject or "objective" in subject or subject == "self":
                    found.append(f"{name}: {ast.unparse(node)}")
    allowed = {"vae_train.checks: getattr(init, 'checks_arguments', False)"}
    assert set(found) <= allowed, sorted(set(found) - allowed)


def test_a_capability_left_half_implemented_is_refused_in_one_line(tmp_path):
    from conftest import compose_cfg
    from vae_train.build import build
    from vae_train.errors import UserError

    cfg = compose_cfg(["dataset=synthetic", "dataset.num_train=50", "dataset.num_test=10",
                       "model._target_=test_architecture.NoInference"])
    with pytest.raises(UserError, match="Can't instantiate abstract class NoInference.*infer"):
        build(cfg, torch.device("cpu"))


from vae_train.models.base import HasCode, LatentVariable, Model  # noqa: E402


class NoInference(Model, LatentVariable, HasCode):
    """Declares a likelihood bound but has no ``infer``."""

    def __init__(self, input_shape, latent_dim=2, hidden_dims=(), activation="relu",
                 num_classes=0, likelihood=None):
        super().__init__(input_shape, num_classes, likelihood)

    def reconstruct(self, x, y=None):
        return x

    def sample(self, n, y=None, generator=None):
        return torch.zeros(n, *self.input_shape)

    def latent_means(self, x, y=None):
        return []

    code_kl_slice = slice(0, 0)
    code_dim = 2

    def code(self, x, y=None):
        return x.flatten(1)[:, :2]

    def decode_code(self, c, y=None):
        return c


def test_phases_that_name_no_parameter_group_are_refused_in_one_line():
    from vae_train.errors import UserError
    from vae_train.models.base import OwnsObjective, ParameterGroups, training_plan

    class Groups(Model, OwnsObjective, ParameterGroups):   # phases left at ("main",)
        def __init__(self):
            super().__init__((1, 4, 4))
            self.a, self.b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)

        def parameter_groups(self):
            return {"a": list(self.a.parameters()), "b": list(self.b.parameters())}

        def loss_terms(self, x, y=None, step=None, train=True, phase=None):
            return {"loss": x.sum()}

        def reconstruct(self, x, y=None):
            return x

        def sample(self, n, y=None, generator=None):
            return torch.zeros(n, 1, 4, 4)

    with pytest.raises(UserError, match=r"phase 'main' of stage 'train' is none of its "
                                        r"parameter groups \(a, b\)"):
        training_plan(Groups(), torch.nn.Module(), 3)
    Groups.phases = ("a", "b")
    stages, groups = training_plan(Groups(), torch.nn.Module(), 3)
    assert stages[0].phases == ("a", "b") and set(groups) == {"a", "b"}
