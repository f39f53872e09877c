"""``python -m vae_train.export``: safetensors weights that rebuild the model, ONNX and
TorchScript / torch.export graphs that compute what the PyTorch model computes (dynamic batch
size), the docs' ONNX example run without vae-train, and the one-line errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, run_cli

FIXTURE = Path(__file__).parent / "fixtures" / "run_v0_1"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "export.md"


def _ort():
    """onnxruntime (and onnx, onnxscript), or the test is skipped: the export extra."""
    for name in ("onnx", "onnxscript"):
        pytest.importorskip(name)
    return pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """The kept tiny VAE run (1x8x8 synthetic images, 2-D code), copied."""
    run = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(FIXTURE, run)
    return run


# Tiny runs of the other families: small 8x8 synthetic images, one epoch.
SMALL = [a for a in TINY if not a.startswith(("dataset.num_train", "dataset.num_test"))] + [
    "dataset.num_train=400", "dataset.num_test=100", "dataset.image_size=8",
    "trainer.epochs=1"]
FAMILIES = {"cvae": ["model=cvae", "model.hidden_dims=[32]", "model.latent_dim=4"],
            "hvae": ["model=hvae"],
            "gumbel_vae": ["model=gumbel_vae"],
            "vqvae": ["model=vqvae", "model.prior_epochs=0"],
            "aae": ["model=aae"],
            "rnn_vae": ["model=rnn_vae", "model.hidden_dim=16"],
            "m2": ["model=m2"],
            "conv_vae": ["model=conv_vae"]}


@pytest.fixture(scope="module")
def family_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("families")
    out = {}
    for name, extra in FAMILIES.items():
        out[name] = base / name
        run_cli([*SMALL, *extra, f"hydra.run.dir={out[name]}"], base)
    return out


def _load(run):
    import vae_train

    return vae_train.load(run, device="cpu")


def _inputs(trained, names, n, seed):
    """Inputs for a graph's named inputs (batch n), as numpy arrays."""
    from vae_train.models.base import CategoricalCode, CodeGrid

    g = np.random.default_rng(seed)
    model = trained.model
    feed = {}
    for name, shape in names.items():
        if name == "x":
            feed[name] = next(iter(trained.batches("test", batch_size=n, n=n)))[0].numpy()
        elif name == "y":
            feed[name] = g.integers(0, trained.num_classes, n).astype(np.int64)
        elif name == "codes":
            assert isinstance(model, CodeGrid)
            feed[name] = g.integers(0, model.num_codes, (n, *shape)).astype(np.int64)
        elif isinstance(model, CategoricalCode):
            c = g.integers(0, model.num_categories, (n, model.num_latents))
            feed[name] = np.eye(model.num_categories, dtype=np.float32)[c].reshape(n, -1)
        else:
            feed[name] = g.standard_normal((n, *shape)).astype(np.float32)
    return feed


def _want(trained, part, feed):
    """What the PyTorch model gives through the Python API (vae_train.api)."""
    if part == "decoder":
        z = feed.get("z", feed.get("codes"))
        return {"images": trained.decode(torch.as_tensor(z), feed.get("y")).numpy()}
    out = trained.encode(torch.as_tensor(feed["x"]), feed.get("y"))
    return {k: v.numpy() for k, v in out.items()}


def _compare(got: dict, want: dict, tol=1e-4):
    assert set(got) == set(want)
    for k in want:
        assert got[k].shape == want[k].shape, k
        if np.issubdtype(want[k].dtype, np.integer):
            assert (got[k] == want[k]).all(), k
        else:
            assert np.abs(got[k] - want[k]).max() <= tol, k


def _check_onnx(trained, folder: Path):
    """Both graphs run by onnxruntime equal the API's outputs at batch sizes 1 and 7."""
    ort = _ort()
    for part in ("decoder", "encoder"):
        sess = ort.InferenceSession(str(folder / f"{part}.onnx"),
                                    providers=["CPUExecutionProvider"])
        ins = {i.name: tuple(i.shape[1:]) for i in sess.get_inputs()}
        assert all(i.shape[0] == "batch" for i in sess.get_inputs())
        assert all(o.shape[0] == "batch" for o in sess.get_outputs())
        for n in (1, 7):
            feed = _inputs(trained, ins, n, seed=n)
            names = [o.name for o in sess.get_outputs()]
            got = dict(zip(names, sess.run(names, feed)))
            _compare(got, _want(trained, part, feed))


def _check_torch(trained, folder: Path, fmt: str):
    for part in ("decoder", "encoder"):
        rec = json.loads((folder / "export.json").read_text())[fmt]["parts"][part]
        if fmt == "torchscript":
            m = torch.jit.load(str(folder / rec["file"]))
        else:
            m = torch.export.load(str(folder / rec["file"])).module()
        ins = {i["name"]: tuple(i["shape"][1:]) for i in rec["inputs"]}
        for n in (1, 7):
            feed = _inputs(trained, ins, n, seed=n)
            with torch.no_grad():
                out = m(*(torch.as_tensor(v) for v in feed.values()))
            out = out if isinstance(out, tuple) else (out,)
            got = {o["name"]: t.numpy() for o, t in zip(rec["outputs"], out)}
            _compare(got, _want(trained, part, feed))


# -- safetensors (fast: the kept VAE run) ----------------------------------------------------------
def test_safetensors_rebuilds_the_model_without_the_run(vae_run, tmp_path, call):
    pytest.importorskip("safetensors")
    out = tmp_path / "st"
    res = call("vae_train.export", [f"run={vae_run}", "format=safetensors", f"out={out}",
                                    "progress=false"])
    assert "rebuilt with load_exported" in res.stdout
    desc = json.loads((out / "model.json").read_text())
    assert desc["model"]["_target_"] == "vae_train.models.vae.VAE"
    assert desc["input_shape"] == [1, 8, 8] and desc["num_classes"] >= 0
    assert desc["likelihood"]["likelihood"] == "bernoulli"
    assert desc["checkpoint"]["epoch"] == 3 and desc["checkpoint"]["step"] > 0
    assert desc["data"]["binarize"] == "none" and desc["vae_train_version"]
    # The run directory is gone: the two files rebuild the model alone.
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    trained = _load(vae_run)
    from safetensors.torch import load_file

    from vae_train.export import load_exported

    weights = load_file(str(moved / "model.safetensors"))
    assert set(weights) == set(trained.model.state_dict())
    model = load_exported(moved)
    assert type(model) is type(trained.model) and not model.training
    x = next(iter(trained.batches("test", batch_size=7, n=7)))[0]
    z = torch.randn(5, 2)
    with torch.no_grad():
        assert torch.equal(model.reconstruct(x), trained.model.reconstruct(x))
        assert torch.equal(model.decode_code(z), trained.model.decode_code(z))
        mine, theirs = model.latents(x), trained.model.latents(x)
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    rec = json.loads((out / "export.json").read_text())["safetensors"]
    assert rec["check"]["7"]["reconstruction"]["max_abs_diff"] == 0.0


def test_load_exported_refuses_a_damaged_folder(tmp_path):
    pytest.importorskip("safetensors")
    from vae_train.errors import UserError
    from vae_train.export import load_exported

    with pytest.raises(UserError, match="no model.json"):
        load_exported(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="damaged"):
        load_exported(tmp_path)
    # A model.json naming code outside vae-train is not built unless trusted.
    desc = {"model": {"_target_": "os.system", "command": "true"}, "loss": {},
            "input_shape": [1, 8, 8], "num_classes": 0, "data": {"values": "unit"}}
    (tmp_path / "model.json").write_text(json.dumps(desc))
    with pytest.raises(UserError, match="os.system.*not one of vae-train's classes"):
        load_exported(tmp_path)


# -- one-line errors -----------------------------------------------------------------------------
def test_unknown_format_is_one_line_before_loading(tmp_path, call):
    res = call("vae_train.export", [f"run={tmp_path / 'nowhere'}", "format=keras"],
               check=False)
    assert res.returncode == 2
    line = res.stderr.strip()
    assert "\n" not in line and "format=" in line and "keras" in line and "onnx" in line


def test_parts_are_checked(tmp_path, call):
    res = call("vae_train.export", [f"run={tmp_path}", "format=onnx", "parts=decoder,latent"],
               check=False)
    assert res.returncode == 2 and "parts=" in res.stderr and "encoder" in res.stderr
    res = call("vae_train.export", [f"run={tmp_path}", "format=safetensors", "parts=decoder"],
               check=False)
    assert res.returncode == 2 and "whole model" in res.stderr


@pytest.mark.parametrize("fmt,module", [("safetensors", "safetensors"), ("onnx", "onnx")])
def test_missing_extra_names_the_pip_extra(vae_run, tmp_path, call, monkeypatch, fmt, module):
    monkeypatch.setitem(sys.modules, module, None)        # import module -> ImportError
    res = call("vae_train.export", [f"run={vae_run}", f"format={fmt}", f"out={tmp_path}"],
               check=False)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0
    assert f"{module} is not installed" in res.stderr and 'vae-train[export]' in res.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_out_is_refused_before_work(vae_run, tmp_path, call):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        res = call("vae_train.export", [f"run={vae_run}", "format=safetensors",
                                        f"out={ro / 'x'}"], check=False)
    finally:
        ro.chmod(0o700)
    assert res.returncode == 2 and "out=" in res.stderr and "cannot write" in res.stderr


def test_out_that_is_a_file_is_refused(vae_run, tmp_path, call):
    f = tmp_path / "file"
    f.write_text("x")
    res = call("vae_train.export", [f"run={vae_run}", "format=onnx", f"out={f / 'sub'}"],
               check=False)
    assert res.returncode == 2 and "out=" in res.stderr and "is a file" in res.stderr
    assert res.stderr.strip().count("\n") == 0


def test_a_part_the_model_lacks_is_refused():
    from vae_train.errors import UserError
    from vae_train.export import parts_of
    from vae_train.models.base import Model

    class Bare(Model):                                   # no code, no code grid, no latents
        def __init__(self):
            super().__init__((1, 4, 4))
            self.w = torch.nn.Linear(1, 1)

        def reconstruct(self, x, y=None):
            return x

        def sample(self, n, y=None, generator=None):
            return torch.zeros(n, 1, 4, 4)

    run = types.SimpleNamespace(model=Bare(), input_shape=(1, 4, 4), device="cpu",
                                data=types.SimpleNamespace(
                                    test=types.SimpleNamespace(y=torch.zeros(3).long())))
    with pytest.raises(UserError, match="parts=decoder: Bare has no code"):
        parts_of(run, ["decoder"])
    with pytest.raises(UserError, match="parts=encoder: Bare describes no latents"):
        parts_of(run, ["encoder"])


def test_parts_on_the_command_line_become_a_list():
    from vae_train.export import _quote_parts

    assert _quote_parts(["parts=decoder,encoder"]) == ["parts=[decoder,encoder]"]
    assert _quote_parts(["parts=decoder"]) == ["parts=decoder"]
    assert _quote_parts(["-m", "parts=decoder,encoder"]) == ["-m", "parts=decoder,encoder"]


# -- graphs (slow: the exporters take seconds per graph) ------------------------------------------
@pytest.fixture(scope="module")
def vae_onnx(vae_run, tmp_path_factory):
    from vae_train.export import main

    _ort()
    out = tmp_path_factory.mktemp("onnx")
    main([f"run={vae_run}", "format=onnx", f"out={out}", "progress=false"])
    return out


@pytest.mark.slow
def test_onnx_graphs_equal_pytorch_at_batch_1_and_7(vae_run, vae_onnx):
    _check_onnx(_load(vae_run), vae_onnx)
    rec = json.loads((vae_onnx / "export.json").read_text())["onnx"]
    dec, enc = rec["parts"]["decoder"], rec["parts"]["encoder"]
    assert [i["name"] for i in dec["inputs"]] == ["z"] and dec["opset"] >= 18
    assert [o["name"] for o in enc["outputs"]] == ["mean", "logvar", "code"]
    assert dec["check"]["7"]["images"]["max_abs_diff"] <= 1e-4 and dec["exporter"] == "dynamo"
    assert enc["bytes"] == (vae_onnx / "encoder.onnx").stat().st_size


@pytest.mark.slow
def test_legacy_exporter_and_a_chosen_opset(vae_run, tmp_path, call, monkeypatch):
    """dynamo=false, opset=18, one part; without onnxruntime the graph is written unchecked,
    with a note."""
    ort = _ort()
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "onnxruntime", None)
        res = call("vae_train.export", [f"run={vae_run}", "format=onnx", "dynamo=false",
                                        "opset=18", "parts=decoder", f"out={tmp_path}",
                                        "progress=false"])
    assert "onnxruntime is not installed" in res.stderr and "not checked" in res.stdout
    rec = json.loads((tmp_path / "export.json").read_text())["onnx"]
    assert set(rec["parts"]) == {"decoder"} and not (tmp_path / "encoder.onnx").exists()
    assert rec["parts"]["decoder"]["opset"] == 18 and rec["onnxruntime"] is None
    assert rec["parts"]["decoder"]["checked"] is False
    assert rec["parts"]["decoder"]["exporter"].startswith("torchscript")
    sess = ort.InferenceSession(str(tmp_path / "decoder.onnx"))
    z = np.random.default_rng(0).standard_normal((7, 2)).astype(np.float32)
    want = _load(vae_run).decode(torch.as_tensor(z)).numpy()
    assert np.abs(sess.run(["images"], {"z": z})[0] - want).max() <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_torch_graphs_equal_pytorch(vae_run, tmp_path, call, fmt):
    call("vae_train.export", [f"run={vae_run}", f"format={fmt}", f"out={tmp_path}",
                              "progress=false"])
    _check_torch(_load(vae_run), tmp_path, fmt)


@pytest.mark.slow
def test_docs_example_runs_without_vae_train(vae_onnx, tmp_path):
    """The ONNX example of docs/export.md, run where neither vae_train nor torch can be
    imported, writes a PNG of decoded images."""
    text = DOCS.read_text()
    block = re.search(r"<!-- onnx-example -->\s*```python\n(.*?)```", text, re.S)
    assert block, "docs/export.md has no ```python block after <!-- onnx-example -->"
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 14
    (tmp_path / "export").mkdir()
    shutil.copy(vae_onnx / "decoder.onnx", tmp_path / "export" / "decoder.onnx")
    guard = (
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('vae_train', 'torch'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, _Block())\n"
        "try:\n"
        "    import vae_train\n"
        "except ImportError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('vae_train importable')\n")
    script = tmp_path / "example.py"
    script.write_text(guard + code)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    from PIL import Image

    png = Image.open(tmp_path / "samples.png")
    assert png.size == (4 * 8, 4 * 8)                 # a 4 x 4 grid of 8 x 8 images
    pixels = np.asarray(png)
    assert pixels.std() > 0                          # images, not a blank page


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_exports(family_runs, family, tmp_path, call):
    _ort()
    run = family_runs[family]
    trained = _load(run)
    call("vae_train.export", [f"run={run}", "format=onnx", f"out={tmp_path}",
                              "progress=false"])
    _check_onnx(trained, tmp_path)
    rec = json.loads((tmp_path / "export.json").read_text())["onnx"]["parts"]
    inputs = [i["name"] for i in rec["decoder"]["inputs"]]
    assert inputs == {"cvae": ["z", "y"], "m2": ["z", "y"],
                      "vqvae": ["codes"]}.get(family, ["z"])
    if family == "vqvae":
        assert rec["decoder"]["inputs"][0]["dtype"] == "int64"
    call("vae_train.export", [f"run={run}", "format=pt2", f"out={tmp_path}",
                              "progress=false"])
    _check_torch(trained, tmp_path, "pt2")
    if family != "gumbel_vae":          # its traced encoder fixes the batch: the test below
        call("vae_train.export", [f"run={run}", "format=torchscript", f"out={tmp_path}",
                                  "progress=false"])
        _check_torch(trained, tmp_path, "torchscript")
    call("vae_train.export", [f"run={run}", "format=safetensors", f"out={tmp_path}",
                              "progress=false"])
    from vae_train.export import load_exported

    model = load_exported(tmp_path)
    x, y = next(iter(trained.batches("test", batch_size=7, n=7)))
    yy = y if trained.conditional else None
    with torch.no_grad():
        assert torch.equal(model.reconstruct(x, yy), trained.model.reconstruct(x, yy))


@pytest.mark.slow
def test_torchscript_refuses_a_graph_that_fixes_its_batch(family_runs, tmp_path, call):
    """The Gumbel VAE's encoder reshapes by len(x): torch.jit.trace bakes the batch size in,
    which the check at two batch sizes catches (format=pt2 and onnx keep it symbolic)."""
    res = call("vae_train.export", [f"run={family_runs['gumbel_vae']}", "format=torchscript",
                                    f"out={tmp_path}", "progress=false"], check=False)
    assert res.returncode == 2 and "encoder" in res.stderr and "batch size" in res.stderr
    assert "format=pt2" in res.stderr and not (tmp_path / "encoder.pt").exists()
