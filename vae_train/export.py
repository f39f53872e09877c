"""``python -m vae_train.export run=<run dir> format=safetensors|onnx|torchscript|pt2
[parts=decoder,encoder] [out=DIR] [...]`` (a Hydra app: options and defaults in
``configs/commands/export.yaml``; ``--help`` lists them).

A trained model in files that other programs read, written into ``<run dir>/export/`` (or
``out=``):

* ``format=safetensors``: every weight of the model (its ``state_dict``) as
  ``model.safetensors`` and ``model.json``, what rebuilds the model around them (the model
  config node with its ``_target_``, the input shape, the number of classes, the likelihood
  settings of the loss node, the data's value kind and binarization, the vae-train version,
  the checkpoint's epoch and step). :func:`load_exported` rebuilds the model from those two
  files alone, without the run directory or its data.
* ``format=onnx``: ``decoder.onnx`` (codes, and labels for a conditional model, to mean
  images) and ``encoder.onnx`` (images to the model's latents, named as
  :meth:`vae_train.models.base.Model.latents` names them), with a dynamic batch dimension.
* ``format=torchscript``: the same two graphs traced with ``torch.jit.trace`` (``.pt``, for
  ``torch.jit.load`` and libtorch); ``format=pt2``: the same two graphs as
  ``torch.export`` programs (``.pt2``, for ``torch.export.load``), with a symbolic batch size.

Every graph is checked against the PyTorch model before anything is written: the same inputs
(random codes and labels for the decoder, the run's first test examples for the encoder) at
batch sizes 1 and 7 go through both, and the largest absolute difference of every output must
stay within ``tolerance`` (onnxruntime runs the ONNX graphs; without it the ONNX check is
skipped with a note). The numbers go into ``export.json`` beside the files.

Every option is checked before the run is loaded (:data:`CHECKS`), ``out=`` must be writable
before any work, and every file is written atomically (:mod:`vae_train.files`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from vae_train.checks import BOOLEAN, Rule, number, one_of, optional
from vae_train.errors import UserError
from vae_train.files import write_bytes, write_json
from vae_train.options import PATH, check_options, check_output, count
from vae_train.runs import hydra_app

USAGE = ("usage: python -m vae_train.export run=<run dir> format=safetensors|onnx|torchscript|pt2 "
         "[parts=decoder,encoder] [out=DIR] [...] (--help lists every option)")
FORMATS = ("safetensors", "onnx", "torchscript", "pt2")
PARTS = ("decoder", "encoder")
EXTRA = 'pip install "vae-train[export]"'
# Batch sizes every exported graph is checked at (two, so a batch size baked into a graph
# is caught).
CHECK_BATCHES = (1, 7)
# The ONNX opsets an export may ask for: 18 is the oldest the torch.export-based exporter
# writes directly; newer than onnx knows is refused once onnx is imported.
OPSET_MIN = 18
# The file format of model.json; load_exported refuses newer ones.
FORMAT_VERSION = 1


def _list_rule(v) -> bool:
    items = [v] if isinstance(v, str) else list(v)
    return len(items) > 0 and all(str(i) in PARTS for i in items)


# The rules of the options (configs/commands/export.yaml); all run before anything is loaded.
CHECKS = {"run": PATH, "format": one_of(*FORMATS),
          "parts": optional(Rule(_list_rule, "decoder, encoder or both (parts=decoder,encoder)"),
                            "null (every part the model has), decoder, encoder or both"),
          "out": optional(PATH, "null (<run>/export) or a path"), "checkpoint": PATH,
          "opset": optional(count(OPSET_MIN, 99), f"null (the exporter's default) or an "
                                                    f"integer >= {OPSET_MIN}"),
          "dynamo": BOOLEAN, "check": BOOLEAN,
          "tolerance": number(0, 1, low_open=True), "progress": BOOLEAN,
          "trust_run_code": BOOLEAN, "dataset.root": optional(PATH, "null or a path")}


def _need(module: str):
    """Import an optional package of the ``export`` extra, or one line saying how to get it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{module} is not installed; install the export extra: {EXTRA}"
                        ) from None


# -- what a model exports -----------------------------------------------------------------------
@dataclass
class Port:
    """One named input or output of a graph: ``shape`` after the batch dimension."""

    name: str
    shape: tuple
    dtype: str                                  # "float32" or "int64"
    what: str = ""
    prior: dict | None = None                   # a decoder input's prior, for samplers

    def describe(self) -> dict:
        out = {"name": self.name, "shape": ["batch", *self.shape], "dtype": self.dtype,
               "what": self.what}
        if self.prior is not None:
            out["prior"] = self.prior
        return out


@dataclass
class Part:
    """A graph to export: a module whose ``forward`` takes the ``inputs`` positionally and
    returns the ``outputs`` (a tensor, or a tuple in their order)."""

    name: str
    module: nn.Module
    inputs: list[Port]
    outputs: list[Port]
    notes: list[str] = field(default_factory=list)


class DecoderGraph(nn.Module):
    """Codes (and labels) to mean images, through the model contract: ``decode_codes`` of a
    code grid (VQ-VAE), else ``decode_code`` (a one-hot or probability code for the Gumbel
    VAE, a class for M2 and conditional models)."""

    def __init__(self, model, grid: bool, labels: bool):
        super().__init__()
        self.model, self.grid, self.labels = model, grid, labels

    def forward(self, z, y=None):
        if self.grid:
            return self.model.decode_codes(z)
        return self.model.decode_code(z, y if self.labels else None)


class EncoderGraph(nn.Module):
    """Images (and labels) to the model's latents, a tuple in the order of ``names``."""

    def __init__(self, model, names: list[str], labels: bool):
        super().__init__()
        self.model, self.names, self.labels = model, list(names), labels

    def forward(self, x, y=None):
        out = self.model.latents(x, y if self.labels else None)
        return tuple(out[k] for k in self.names)


def _dtype(t: torch.Tensor) -> str:
    return "int64" if not t.is_floating_point() else "float32"


def _label_port(multi_hot: int, run) -> Port:
    """The label input; its record says the classes (the graph itself does not check them:
    a label outside 0..K-1 must be refused before the call)."""
    classes = {"kind": "class labels", "num_classes": int(run.num_classes),
               "classes": list(run.classes or []) or None}
    if multi_hot:
        return Port("y", (multi_hot,), "int64", "0/1 attribute labels (multi-hot)", classes)
    return Port("y", (), "int64", f"class labels 0..{run.num_classes - 1} (not checked inside "
                                  "the graph: check the range before the call)", classes)


def parts_of(run, which: list[str]) -> list[Part]:
    """The graphs of ``which`` parts for a loaded run; a part the model does not have is one
    line saying so."""
    from vae_train.api import needs_label
    from vae_train.models.base import CategoricalCode, CodeGrid, HasCode, SampledPrior

    model = run.model
    family = type(model).__name__
    ytest = run.data.test.y
    multi_hot = int(ytest.shape[1]) if ytest.dim() == 2 else 0
    x0 = torch.zeros(2, *run.input_shape, device=run.device)
    out = []
    for name in which:
        if name == "decoder":
            if isinstance(model, CodeGrid):
                h, w = model.codes(x0).shape[1:]
                z = Port("codes", (int(h), int(w)), "int64",
                         f"code indices 0..{model.num_codes - 1} per grid position",
                         {"kind": "code indices", "num_codes": int(model.num_codes)})
                dec = DecoderGraph(model, True, False)
                inputs = [z]
            elif isinstance(model, HasCode):
                labels = bool(model.conditional or needs_label(model))
                if isinstance(model, CategoricalCode):
                    what = ("one-hot codes or category probabilities, (B, N*K) flattened from "
                            f"(B, {model.num_latents}, {model.num_categories})")
                    prior = {"kind": "uniform categorical", "num_latents":
                             int(model.num_latents), "num_categories": int(model.num_categories)}
                else:
                    what, prior = "codes", {"kind": "standard normal"}
                    if isinstance(model, SampledPrior):
                        prior = {"kind": "sampled (the model's own prior)",
                                 "span": float(model.prior_span)}
                inputs = [Port("z", (int(model.code_dim),), "float32", what, prior)]
                if labels:
                    inputs.append(_label_port(multi_hot, run))
                dec = DecoderGraph(model, False, labels)
            else:
                raise UserError(f"parts=decoder: {family} has no code to decode (neither a "
                                "continuous code nor a code grid); export parts=encoder")
            images = Port("images", tuple(run.input_shape), "float32", "mean images")
            out.append(Part("decoder", dec.eval(), inputs, [images]))
        else:
            labels = bool(model.conditional)
            with torch.no_grad():
                lat = model.latents(x0, ytest[:2].to(run.device) if labels else None)
            if not lat:
                raise UserError(f"parts=encoder: {family} describes no latents "
                                "(Model.latents is empty); export parts=decoder")
            names = list(lat)
            inputs = [Port("x", tuple(run.input_shape), "float32",
                           "images as the model takes them (floats; see docs/export.md)")]
            if labels:
                inputs.append(_label_port(multi_hot, run))
            outputs = [Port(k, tuple(int(s) for s in v.shape[1:]), _dtype(v)) for k, v in
                       lat.items()]
            out.append(Part("encoder", EncoderGraph(model, names, labels).eval(), inputs,
                            outputs))
    return out


def check_inputs(run, part: Part, n: int, seed: int) -> tuple:
    """Inputs of batch size ``n`` for a part: random codes, categories, code indices and
    labels for the decoder; the run's first test examples (random ones when the split is
    smaller) for the encoder."""
    from vae_train.models.base import CategoricalCode

    g = torch.Generator().manual_seed(seed)
    model = run.model
    args = []
    for port in part.inputs:
        if port.name == "x":
            test = run.data.test
            if len(test) >= n:
                x = next(iter(run.batches("test", batch_size=n, n=n)))[0]
            else:
                x = torch.rand(n, *port.shape, generator=g)
            args.append(x.float().cpu())
        elif port.name == "y":
            k = max(run.num_classes, 2)
            shape = (n, *port.shape)
            args.append(torch.randint(0, 2 if port.shape else k, shape, generator=g))
        elif port.name == "codes":
            args.append(torch.randint(0, model.num_codes, (n, *port.shape), generator=g))
        elif isinstance(model, CategoricalCode):
            c = torch.randint(0, model.num_categories, (n, model.num_latents), generator=g)
            args.append(nn.functional.one_hot(c, model.num_categories).float().flatten(1))
        else:
            args.append(torch.randn(n, *port.shape, generator=g))
    return tuple(args)


def reference(part: Part, args: tuple) -> list[torch.Tensor]:
    with torch.no_grad():
        out = part.module(*args)
    return [t.detach().cpu() for t in (out if isinstance(out, tuple) else (out,))]


def differences(part: Part, got, want) -> dict:
    """The largest absolute difference of each output (integer outputs: how many entries
    differ)."""
    res = {}
    for port, a, b in zip(part.outputs, got, want):
        a = torch.as_tensor(a)
        if tuple(a.shape) != tuple(b.shape):
            raise UserError(f"{part.name}: output {port.name} has shape {tuple(a.shape)}, "
                            f"PyTorch gives {tuple(b.shape)}: the graph fixed a size it should "
                            "not have; try the other exporter (dynamo=...)")
        if port.dtype == "int64":
            res[port.name] = {"differing": int((a.long() != b.long()).sum())}
        else:
            res[port.name] = {"max_abs_diff": float((a.float() - b.float()).abs().max())}
    return res


def _other(fmt: str, dynamo: bool) -> str:
    """What to try when a graph of ``fmt`` does not compute what PyTorch does."""
    if fmt == "torchscript":
        return "use format=pt2 or onnx"
    if fmt == "onnx":
        return f"try dynamo={str(not dynamo).lower()}"
    return "try format=onnx"


def verdict(part: Part, checks: dict, tolerance: float, fmt: str, dynamo: bool = True) -> None:
    """One line when any output is beyond the tolerance."""
    for n, per in checks.items():
        for name, d in per.items():
            bad = (d.get("differing", 0) > 0 if "differing" in d
                   else not d["max_abs_diff"] <= tolerance)
            if bad:
                what = (f"{d['differing']} code indices differ" if "differing" in d
                        else f"max abs difference {d['max_abs_diff']:.3g} > tolerance "
                             f"{tolerance:g}")
                raise UserError(f"format={fmt} {part.name}: output {name} at batch size {n} "
                                f"does not match PyTorch ({what}); nothing was written "
                                f"({_other(fmt, dynamo)}, or raise tolerance=)")


# -- the formats --------------------------------------------------------------------------------
@contextlib.contextmanager
def quiet():
    """The exporters' chatter (progress prints, INFO logs of onnxscript, deprecation
    warnings) kept off the console."""
    sink = io.StringIO()
    logging.disable(logging.INFO)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), \
                contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def _first_line(e: BaseException, n: int = 300) -> str:
    from vae_train.errors import first_line

    return first_line(e)[:n]


def exported_program(part: Part, example: tuple, what: str):
    """``torch.export`` of a part with a symbolic batch size: non-strict first, then strict
    (Dynamo's tracer), which keeps ``len(x)`` symbolic where non-strict tracing fixes it."""
    batch = torch.export.Dim("batch", min=1)
    shapes = tuple({0: batch} for _ in example)
    errors = []
    for strict in (False, True):
        try:
            with quiet():
                return torch.export.export(part.module, example, dynamic_shapes=shapes,
                                           strict=strict)
        except Exception as e:  # noqa: BLE001 - try the other tracer, then report the first
            errors.append(e)
    raise UserError(f"{what} {part.name}: torch.export cannot trace it with a dynamic batch "
                    f"size: {_first_line(errors[0])}")


def _rename_batch(proto, names: list[str]) -> None:
    """The symbolic batch dimension of the graph's inputs named ``batch`` everywhere."""
    graph = proto.graph
    symbols = {i.type.tensor_type.shape.dim[0].dim_param for i in graph.input
               if i.name in names and i.type.tensor_type.shape.dim}
    symbols.discard("")
    for v in [*graph.input, *graph.output, *graph.value_info]:
        for d in v.type.tensor_type.shape.dim:
            if d.dim_param in symbols:
                d.dim_param = "batch"


def onnx_bytes(part: Part, example: tuple, opset: int | None, dynamo: bool) -> tuple[bytes, int]:
    """The ONNX model of a part (a dynamic batch dimension named ``batch``), and its opset."""
    onnx = _need("onnx")
    names_in = [p.name for p in part.inputs]
    names_out = [p.name for p in part.outputs]
    exporter = "dynamo" if dynamo else "legacy"
    try:
        if dynamo:
            _need("onnxscript")
            ep = exported_program(part, example, "format=onnx")
            with quiet():
                prog = torch.onnx.export(ep, (), input_names=names_in, output_names=names_out,
                                         opset_version=opset, dynamo=True, verbose=False,
                                         external_data=False)
            proto = prog.model_proto
        else:
            buf = io.BytesIO()
            with quiet():
                torch.onnx.export(part.module, example, buf, input_names=names_in,
                                  output_names=names_out, opset_version=opset, dynamo=False,
                                  dynamic_axes={n: {0: "batch"} for n in names_in + names_out})
            proto = onnx.load_from_string(buf.getvalue())
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - the exporter's own errors are long
        raise UserError(f"format=onnx {part.name}: the {exporter} exporter failed: "
                        f"{_first_line(e)} (try dynamo={str(not dynamo).lower()})") from None
    _rename_batch(proto, names_in)
    used = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
               default=0)
    return proto.SerializeToString(), int(used)


def run_onnx(data: bytes, part: Part, args: tuple):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4          # failures come back as exceptions
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    feed = {p.name: a.numpy() for p, a in zip(part.inputs, args)}
    return sess.run([p.name for p in part.outputs], feed)


def torchscript_bytes(part: Part, example: tuple) -> tuple[bytes, object]:
    try:
        with quiet():                            # torch.jit is deprecated in this torch
            traced = torch.jit.trace(part.module, example, check_trace=False)
            buf = io.BytesIO()
            torch.jit.save(traced, buf)
            data = buf.getvalue()
            loaded = torch.jit.load(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"format=torchscript {part.name}: torch.jit.trace failed: "
                        f"{_first_line(e)} (use format=pt2)") from None
    return data, loaded


def pt2_bytes(part: Part, example: tuple) -> tuple[bytes, object]:
    ep = exported_program(part, example, "format=pt2")
    buf = io.BytesIO()
    with quiet():
        torch.export.save(ep, buf)
    data = buf.getvalue()
    loaded = torch.export.load(io.BytesIO(data)).module()
    return data, loaded


def run_torch(loaded, args: tuple):
    with torch.no_grad():
        out = loaded(*args)
    return [t.detach() for t in (out if isinstance(out, tuple) else (out,))]


SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "pt2": ".pt2"}


def export_graphs(run, parts: list[Part], fmt: str, opset, dynamo: bool, check: bool,
                  tolerance: float, progress: bool = True) -> tuple[dict, dict]:
    """The files (name -> bytes) and the record (export.json) of the graphs, each checked
    against PyTorch at :data:`CHECK_BATCHES` batch sizes; nothing is written here."""
    files, record = {}, {}
    ort = None
    if fmt == "onnx" and check:
        try:
            import onnxruntime as ort  # noqa: F401
        except ImportError:
            ort = None
            print(f"note: onnxruntime is not installed, so the ONNX graphs are not checked "
                  f"against PyTorch ({EXTRA})", file=sys.stderr)
    for part in tqdm(parts, desc=f"export {fmt}", unit="graph", leave=False,
                     disable=None if progress else True):
        t0 = time.perf_counter()
        example = check_inputs(run, part, 2, seed=0)
        if fmt == "onnx":
            data, used = onnx_bytes(part, example, opset, dynamo)
            runner = (lambda args, d=data, p=part: run_onnx(d, p, args)) if ort else None
        elif fmt == "torchscript":
            data, loaded = torchscript_bytes(part, example)
            runner = lambda args, m=loaded: run_torch(m, args)  # noqa: E731
        else:
            data, loaded = pt2_bytes(part, example)
            runner = lambda args, m=loaded: run_torch(m, args)  # noqa: E731
        seconds = time.perf_counter() - t0
        checks = {}
        if check and runner is not None:
            for n in CHECK_BATCHES:
                args = check_inputs(run, part, n, seed=n)
                try:
                    got = runner(args)
                except UserError:
                    raise
                except Exception as e:  # noqa: BLE001 - a graph that fails on another batch size
                    raise UserError(f"format={fmt} {part.name}: the exported graph fails at "
                                    f"batch size {n}: {_first_line(e, 200)} (a batch size fixed "
                                    "in the graph; "
                                    f"{_other(fmt, dynamo)})"
                                    ) from None
                checks[str(n)] = differences(part, got, reference(part, args))
            verdict(part, checks, tolerance, fmt, dynamo)
        fname = f"{part.name}{SUFFIX[fmt]}"
        files[fname] = data
        rec = {"file": fname, "bytes": len(data), "seconds": round(seconds, 3),
               "inputs": [p.describe() for p in part.inputs],
               "outputs": [p.describe() for p in part.outputs],
               "checked": bool(checks), "check": checks}
        if fmt == "onnx":
            rec.update(opset=used, exporter="dynamo" if dynamo else "torchscript (legacy)")
        record[part.name] = rec
    return files, record


# -- safetensors ------------------------------------------------------------------------------
def model_description(run) -> dict:
    """What rebuilds the model around its weights (model.json)."""
    from omegaconf import OmegaConf

    import vae_train

    cfg = run.cfg
    loss = OmegaConf.to_container(cfg.loss, resolve=True)
    ds = cfg.dataset
    return {"format_version": FORMAT_VERSION, "vae_train_version": vae_train.__version__,
            "family": type(run.model).__name__,
            "model": OmegaConf.to_container(cfg.model, resolve=True),
            "loss": loss,
            "likelihood": {k: loss.get(k) for k in ("likelihood", "sigma", "learn_sigma",
                                                     "mixtures") if k in loss},
            "input_shape": list(run.input_shape), "num_classes": run.num_classes,
            "conditional": run.conditional, "classes": list(run.classes or []) or None,
            "data": {"name": str(ds.get("name", "")), "values": str(run.values),
                     "binarize": str(run.binarize), "stats": _plain(run.stats)},
            "checkpoint": {"epoch": run.epoch, "step": run.step},
            "source_run": str(run.run_dir)}


def _plain(obj):
    if obj is None or isinstance(obj, (int, float, str, bool)):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    try:
        import numpy as np

        if isinstance(obj, np.ndarray | np.generic):
            return obj.tolist()
    except ImportError:
        pass
    return str(obj)


def safetensors_bytes(run) -> tuple[bytes, dict]:
    st = _need("safetensors.torch")
    import vae_train

    # A copy of each tensor: tied or shared weights become separate entries (safetensors
    # refuses shared storage), every entry contiguous and on the CPU.
    state = {k: v.detach().to("cpu", copy=True).contiguous()
             for k, v in run.model.state_dict().items()}
    data = st.save(state, metadata={"format": "pt", "vae_train": vae_train.__version__})
    return data, {"tensors": len(state), "parameters": int(sum(v.numel() for v in
                                                                 state.values()))}


def load_exported(folder: str | Path, device: str | torch.device = "cpu",
                  trust_run_code: bool = False) -> nn.Module:
    """The model of a ``format=safetensors`` export, rebuilt from ``model.json`` and
    ``model.safetensors`` in ``folder`` alone (no run directory, no data), in eval mode on
    ``device``. ``trust_run_code=True`` lets model.json name classes outside vae-train (their
    modules are imported). Errors are one-line :class:`UserError`."""
    from omegaconf import OmegaConf

    from vae_train import trust
    from vae_train.build import instantiate_node
    from vae_train.checkpoint import load_model_state
    from vae_train.losses import Objective
    from vae_train.models.base import Model

    st = _need("safetensors.torch")
    folder = Path(folder).expanduser()
    desc_path, weights = folder / "model.json", folder / "model.safetensors"
    for p in (desc_path, weights):
        if not p.is_file():
            raise UserError(f"{folder}: no {p.name}; export the run with "
                            "python -m vae_train.export run=<run> format=safetensors")
    try:
        desc = json.loads(desc_path.read_text())
        model_node, loss_node = desc["model"], desc["loss"]
        shape, classes = tuple(desc["input_shape"]), int(desc["num_classes"])
        values = str(desc["data"]["values"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{desc_path} is damaged or not a vae-train export ({e}); export the "
                        "run again") from None
    if int(desc.get("format_version", 0)) > FORMAT_VERSION:
        raise UserError(f"{desc_path} is format {desc['format_version']}, newer than this "
                        f"vae-train reads ({FORMAT_VERSION}); upgrade vae-train")
    trust.check_config({"model": model_node, "loss": loss_node}, str(desc_path), trust_run_code)
    objective = instantiate_node(OmegaConf.create(loss_node), "loss", Objective)
    likelihood = objective.make_likelihood(shape[0], values, desc["data"].get("name") or "")
    model = instantiate_node(OmegaConf.create(model_node), "model", Model,
                             input_shape=shape, num_classes=classes, likelihood=likelihood)
    try:
        state = st.load_file(str(weights))
    except Exception as e:  # noqa: BLE001 - a damaged file
        raise UserError(f"{weights} cannot be read ({str(e).splitlines()[0][:200]}); export "
                        "the run again") from None
    load_model_state(model, {"model": state, "model_target": model_node.get("_target_")},
                     weights)
    return model.to(device).eval()


# -- the command ----------------------------------------------------------------------------------
def _parts_option(args) -> list[str] | None:
    p = args.parts
    if p is None:
        return None
    items = [str(p)] if isinstance(p, str) else [str(i) for i in p]
    return list(dict.fromkeys(items))


def _default_parts(model) -> list[str]:
    from vae_train.models.base import CodeGrid, HasCode

    have = []
    if isinstance(model, (HasCode, CodeGrid)):
        have.append("decoder")
    have.append("encoder")
    return have


@hydra_app("export", USAGE, path_keys=("run", "checkpoint", "out", "dataset.root"))
def _app(args):
    check_options(args, CHECKS)
    fmt = str(args.format)
    parts = _parts_option(args)
    if fmt == "safetensors" and parts is not None:
        raise UserError("parts= applies to format=onnx|torchscript|pt2; format=safetensors "
                        "holds the whole model (drop parts=)")
    # The packages the format needs, before the run is loaded.
    if fmt == "safetensors":
        _need("safetensors")
    elif fmt == "onnx":
        _need("onnx")
        if args.dynamo:
            _need("onnxscript")
        if args.opset is not None:
            import onnx

            newest = int(onnx.defs.onnx_opset_version())
            if int(args.opset) > newest:
                raise UserError(f"opset={args.opset}: the installed onnx knows opsets up to "
                                f"{newest}; use opset={OPSET_MIN}..{newest} or leave it null")
    run_dir = Path(str(args.run)).expanduser()
    out = Path(str(args.out)).expanduser() if args.out else run_dir / "export"
    check_output(out, f"out={args.out}" if args.out else f"out= (default: {out}; give "
                                                        "out=DIR to write elsewhere)")
    from vae_train.api import load

    t0 = time.perf_counter()
    run = load(args.run, args.checkpoint, "cpu", args.dataset.root,
               trust_run_code=args.trust_run_code)
    record = {"format": fmt, "run": str(run.run_dir), "checkpoint": str(args.checkpoint),
              "family": type(run.model).__name__, "epoch": run.epoch, "step": run.step,
              "torch": torch.__version__}
    if fmt == "safetensors":
        data, info = safetensors_bytes(run)
        desc = model_description(run)
        files = {"model.safetensors": data,
                 "model.json": (json.dumps(desc, indent=2) + "\n").encode()}
        record.update(info)
        checks = {}
        if args.check:
            checks = check_safetensors(run, data, desc, float(args.tolerance))
        record["check"] = checks
    else:
        which = parts or _default_parts(run.model)
        graphs = parts_of(run, which)
        files, rec = export_graphs(run, graphs, fmt, args.opset, bool(args.dynamo),
                                   bool(args.check), float(args.tolerance),
                                   bool(args.progress))
        record["parts"] = rec
    record.update(tolerance=float(args.tolerance),
                  seconds=round(time.perf_counter() - t0, 3))
    if fmt == "onnx":
        import onnx

        record["onnx"] = onnx.__version__
        try:
            import onnxruntime

            record["onnxruntime"] = onnxruntime.__version__
        except ImportError:
            record["onnxruntime"] = None
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in files.items():
        write_bytes(out / name, data)
        written.append(out / name)
    # export.json: one entry per format exported into this folder.
    json_path = out / "export.json"
    try:
        previous = json.loads(json_path.read_text()) if json_path.is_file() else {}
    except ValueError:
        previous = {}
    previous = previous if isinstance(previous, dict) else {}
    write_json(json_path, {**previous, fmt: record})
    for p in written:
        print(f"wrote {p} ({_size(p.stat().st_size)})", file=sys.stderr)
    print(f"wrote {json_path}", file=sys.stderr)
    _summary(record)
    return record


def check_safetensors(run, data: bytes, desc: dict, tolerance: float) -> dict:
    """Rebuild the model from the exported bytes (through :func:`load_exported`, in a
    temporary folder) and compare its mean images with the run's model at both batch
    sizes."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "model.safetensors").write_bytes(data)
        (Path(tmp) / "model.json").write_text(json.dumps(desc))
        rebuilt = load_exported(tmp, "cpu", trust_run_code=True)
    from vae_train.models.base import HasCode

    checks = {}
    for n in CHECK_BATCHES:
        x, y = (t.cpu() for t in next(iter(run.batches("test", batch_size=n, n=n))))
        yy = y if run.conditional else None
        with torch.no_grad():
            a = rebuilt.reconstruct(x, yy)
            b = run.model.reconstruct(x, yy)
            per = {"reconstruction": {"max_abs_diff": float((a - b).abs().max())}}
            if isinstance(run.model, HasCode):
                per["code"] = {"max_abs_diff": float((rebuilt.code(x, yy)
                                                      - run.model.code(x, yy)).abs().max())}
        checks[str(n)] = per
    if not all(d["max_abs_diff"] <= tolerance for per in checks.values() for d in per.values()):
        raise UserError(f"format=safetensors: the rebuilt model differs from the run's "
                        f"({checks}); nothing was written")
    return checks


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _summary(record: dict) -> None:
    for name, rec in record.get("parts", {}).items():
        line = (f"{rec['file']}: {', '.join(i['name'] for i in rec['inputs'])} -> "
                f"{', '.join(o['name'] for o in rec['outputs'])}")
        if rec["checked"]:
            line += (f"; checked at batch sizes {', '.join(rec['check'])} "
                     f"(max abs difference {_worst(rec['check'])})")
        else:
            line += "; not checked"
        print(line)
    if record["format"] == "safetensors" and record.get("check"):
        print(f"model.safetensors: {record['tensors']} tensors, {record['parameters']} "
              f"parameters; rebuilt with load_exported: max abs difference "
              f"{_worst(record['check'])}")


def _worst(checks: dict) -> str:
    vals = [d["max_abs_diff"] for per in checks.values() for d in per.values()
            if "max_abs_diff" in d]
    return f"{max(vals):.2g}" if vals else "0"


def _quote_parts(args: list[str]) -> list[str]:
    """``parts=decoder,encoder`` (Hydra reads a comma as a sweep) as the list it means."""
    if any(a in ("-m", "--multirun") for a in args):
        return args
    out = []
    for a in args:
        if a.startswith("parts=") and "," in a and not a[6:].startswith("["):
            a = f"parts=[{a[6:]}]"
        out.append(a)
    return out


def main(args: list[str] | None = None):
    """The command line (``vae-train-export``)."""
    args = list(sys.argv[1:] if args is None else args)
    return _app(_quote_parts(args))


if __name__ == "__main__":
    main()
