"""Short runs start fast: what ``import vae_train.train`` leaves out, the cache of parsed IDX
arrays (used the second time, rebuilt when stale or damaged, never in the way), the grids
drawn without torchvision, and scripts/startup.py (its statistics, and that it runs and
prints its table). No timing is asserted."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import load_script, write_mnist_like

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "startup.py"

# Modules that cost seconds to import and that `import vae_train.train` must not pull in: they
# are imported where they are used (a logger of that kind, torch.compile, a data set's download,
# the report's plots).
HEAVY = ["torchvision", "torchvision.models", "tensorboard", "torch.utils.tensorboard",
         "torch._dynamo", "sympy", "triton", "scipy", "matplotlib", "wandb", "mlflow"]


def test_import_vae_train_train_leaves_the_heavy_modules_out():
    code = ("import sys, json, vae_train.train\n"
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


LOOP = """
import sys, torch
if sys.argv[1] == "patched":
    from vae_train import patches
    assert patches.lazy_dynamo() > 0
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
opts = [torch.optim.Adam(model[0].parameters(), lr=1e-2, fused=True),
        torch.optim.SGD(model[2].parameters(), lr=1e-2, momentum=0.9)]
with torch.device("meta"):                       # the memory estimate's kind of work
    torch.nn.functional.linear(torch.empty(3, 6), torch.empty(5, 6), torch.empty(5)).relu()
for i in range(5):
    for o in opts:
        o.zero_grad()
    model(torch.randn(8, 6)).pow(2).mean().backward()
    for o in opts:
        o.step()
state = [opts[0].state_dict()["state"][0]["exp_avg"].sum().item()]
print("DYNAMO", "torch._dynamo" in sys.modules)
if sys.argv[1] == "patched":                     # once imported, PyTorch's own wrappers
    import torch._dynamo
    from vae_train.patches import _DisableWhenLoaded
    opts[0].zero_grad()
    opts[0].step()
    fn = torch.optim.Optimizer.zero_grad.__wrapped__
    print("REAL", not isinstance(getattr(fn, "__dynamo_disable"), _DisableWhenLoaded))
print("WEIGHTS", [p.detach().double().sum().item() for p in model.parameters()], state)
"""


def _loop(mode: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", LOOP, mode], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in proc.stdout.splitlines()}


@pytest.mark.slow
def test_lazy_dynamo_keeps_torch_dynamo_out_and_changes_nothing():
    """Optimizers built, stepped and zeroed and ops on meta tensors, without importing
    torch._dynamo; the same weights as without the patch; once torch._dynamo is imported,
    PyTorch's own disabled functions are used."""
    patched, plain = _loop("patched"), _loop("plain")
    assert patched["DYNAMO"] == "False" and plain["DYNAMO"] == "True"
    assert patched["REAL"] == "True"
    assert patched["WEIGHTS"] == plain["WEIGHTS"]


QUICK_EXIT = """
import atexit, pathlib, sys, threading
from vae_train.__main__ import exit_status, quick_exit
assert (exit_status(None), exit_status(2)) == (0, 2)
ev = threading.Event()
t = threading.Thread(target=ev.wait)
t.start()
quick_exit(3)                   # another thread is running: the interpreter's own exit
print("returned", flush=True)
ev.set()
t.join()
atexit.register(lambda: pathlib.Path(sys.argv[1]).write_text("exit handlers ran"))
sys.stdout.write("unflushed")
quick_exit(5)
print("not reached")
"""


def test_the_quick_exit_runs_the_exit_handlers_and_flushes(tmp_path):
    """``python -m vae_train`` ends with os._exit after the exit handlers and a flush (no
    interpreter teardown); with another thread alive it leaves the exit to the interpreter."""
    proc = subprocess.run([sys.executable, "-c", QUICK_EXIT, str(tmp_path / "ran")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 5, proc.stderr
    assert proc.stdout == "returned\nunflushed"
    assert (tmp_path / "ran").read_text() == "exit handlers ran"


# -- the array cache ---------------------------------------------------------------------------
@pytest.fixture
def fashion(tmp_path):
    """A tiny Fashion-MNIST in torchvision's layout, and a data set reading it with its own
    cache folder."""
    from vae_train.data.torchvision_sets import FashionMNIST

    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    written = write_mnist_like(raw, n_train=40, n_test=10)
    cache = tmp_path / "cache"

    def make(**kw):
        return FashionMNIST(root=str(tmp_path / "data"), download=False,
                            **{"cache_dir": str(cache), **kw})

    return make, raw, cache, written


@pytest.fixture
def parses(monkeypatch):
    """The IDX files read by the parser (not by the cache)."""
    import vae_train.data.torchvision_sets as tv

    seen = []
    real = tv.read_idx

    def counting(path, expect_dims=None):
        seen.append(Path(path).name)
        return real(path, expect_dims)

    monkeypatch.setattr(tv, "read_idx", counting)
    return seen


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / "arrays").glob("*.npz"))


def test_the_parsed_arrays_are_read_from_the_cache_the_second_time(fashion, parses):
    make, _, cache, written = fashion
    first = make().read()
    assert len(parses) == 4 and len(_entries(cache)) == 1
    second = make().read()
    assert len(parses) == 4                               # nothing parsed again
    for a, b in ((first.train_x, second.train_x), (first.test_y, second.test_y)):
        assert torch.equal(a, b)
    assert second.train_x.dtype == torch.uint8 and second.train_y.dtype == torch.int64
    assert np.array_equal(second.train_x[:, 0].numpy(), written["train"][0])
    assert np.array_equal(second.test_y.numpy(), written["t10k"][1])


def test_a_changed_source_file_rebuilds_the_cache(fashion, parses):
    make, raw, cache, _ = fashion
    make().read()
    old = _entries(cache)
    # new contents in the same place (other images, another time stamp)
    write_mnist_like(raw, n_train=40, n_test=10, seed=7)
    st = (raw / "train-images-idx3-ubyte.gz").stat()
    os.utime(raw / "train-images-idx3-ubyte.gz", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    data = make().read()
    assert len(parses) == 8                               # parsed again
    new = _entries(cache)
    assert len(new) == 1 and new != old                   # the stale entry was replaced
    fresh = write_mnist_like(raw.parent / "check", n_train=40, n_test=10, seed=7)
    assert np.array_equal(data.train_x[:, 0].numpy(), fresh["train"][0])


def test_a_damaged_entry_is_rebuilt_with_a_warning(fashion, parses, caplog):
    make, _, cache, written = fashion
    make().read()
    (entry,) = _entries(cache)
    raw_bytes = bytearray(entry.read_bytes())
    raw_bytes[len(raw_bytes) // 2] ^= 0xFF                # one byte changed inside the images
    entry.write_bytes(bytes(raw_bytes))
    with caplog.at_level(logging.WARNING):
        data = make().read()
    assert len(parses) == 8
    assert any("not usable" in r.getMessage() for r in caplog.records)
    assert np.array_equal(data.train_x[:, 0].numpy(), written["train"][0])
    assert make().read() is not None and len(parses) == 8   # the rebuilt entry is used


def test_an_unwritable_cache_folder_costs_the_speed_only(tmp_path, parses, caplog):
    from vae_train.data.torchvision_sets import FashionMNIST

    write_mnist_like(tmp_path / "data" / "FashionMNIST" / "raw", n_train=40, n_test=10)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    ds = FashionMNIST(root=str(tmp_path / "data"), download=False, cache_dir=str(blocker))
    with caplog.at_level(logging.WARNING):
        data = ds.read()
    assert len(data.train_x) == 40 and len(parses) == 4
    (msg,) = [r.getMessage() for r in caplog.records if "array cache" in r.getMessage()]
    assert str(blocker) in msg and "dataset.cache_dir" in msg
    assert blocker.read_text() == "not a folder"


def test_entries_of_deleted_copies_are_removed_when_a_new_one_is_written(tmp_path):
    """A copy read once from a temporary folder leaves no 55 MB behind for good: the next entry
    written for the same data set removes the entries whose files are gone."""
    import shutil

    from vae_train.data.torchvision_sets import FashionMNIST

    cache = tmp_path / "cache"

    def read(folder):
        write_mnist_like(tmp_path / folder / "FashionMNIST" / "raw", n_train=20, n_test=5)
        FashionMNIST(root=str(tmp_path / folder), download=False, cache_dir=str(cache)).read()
        return set(_entries(cache))

    a = read("a")
    ab = read("b")
    assert len(ab) == 2 and a < ab                        # both copies exist: both kept
    shutil.rmtree(tmp_path / "a")
    abc = read("c")
    assert len(abc) == 2 and not (a & abc) and (ab - a) < abc


def test_cache_false_neither_reads_nor_writes(fashion, parses):
    make, _, cache, _ = fashion
    make(cache=False).read()
    make(cache=False).read()
    assert len(parses) == 8 and not (cache / "arrays").exists()


def test_bad_cache_options_are_one_line(fashion):
    from vae_train.errors import UserError

    make = fashion[0]
    with pytest.raises(UserError, match="cache"):
        make(cache="sometimes")
    with pytest.raises(UserError, match="cache_dir"):
        make(cache_dir="")


# -- grids without torchvision --------------------------------------------------------------------
@pytest.mark.parametrize("shape,kw", [((64, 1, 28, 28), {"nrow": 8, "pad_value": 0.5}),
                                      ((7, 3, 5, 9), {"nrow": 3}),
                                      ((5, 3, 4, 4), {"nrow": 2, "padding": 3}),
                                      ((1, 1, 6, 6), {}), ((1, 6, 6), {}), ((6, 6), {})])
def test_make_grid_lays_images_out_as_torchvision_does(shape, kw):
    from torchvision.utils import make_grid as reference

    from vae_train.pictures.image import make_grid

    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(make_grid(x, **kw), reference(x, **kw))


def test_make_grid_layout_by_hand():
    from vae_train.pictures.image import make_grid

    x = torch.stack([torch.full((1, 2, 2), float(i)) for i in range(3)])
    g = make_grid(x, nrow=2, padding=1, pad_value=9.0)
    assert g.shape == (3, 2 * 3 + 1, 2 * 3 + 1)          # 2 rows, 2 columns of 2+1 pixels
    assert torch.all(g[:, 1:3, 1:3] == 0) and torch.all(g[:, 1:3, 4:6] == 1)
    assert torch.all(g[:, 4:6, 1:3] == 2) and torch.all(g[:, 4:6, 4:6] == 9)   # no 4th image
    assert torch.all(g[:, 0, :] == 9) and torch.all(g[:, :, 3] == 9)


def test_save_image_writes_the_bytes_torchvision_writes(tmp_path):
    from torchvision.utils import save_image as reference

    from vae_train.pictures.image import save_image

    x = torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    save_image(x, tmp_path / "ours.png", nrow=4, pad_value=0.5)
    reference(x, str(tmp_path / "theirs.png"), nrow=4, pad_value=0.5)
    assert (tmp_path / "ours.png").read_bytes() == (tmp_path / "theirs.png").read_bytes()


# -- scripts/startup.py -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def startup():
    return load_script("startup")


def test_spread_and_ratios(startup):
    s = startup.spread([3.0, 1.0, 2.0, 10.0])
    assert (s["median"], s["min"], s["max"]) == (2.5, 1.0, 10.0)
    assert s["q1"] == pytest.approx(1.75) and s["q3"] == pytest.approx(4.75)
    assert startup.spread([4.0])["q1"] == startup.spread([4.0])["q3"] == 4.0
    seconds = {"import torch": [2.0, 4.0], "import vae_train": [2.4, 4.4],
               "first step": [5.0, 9.0], "vae-train 2 ep": [10.0, 10.0],
               "vae-train 2 ep bf16": [5.0, 8.0], "classic 2 ep": [20.0, 30.0]}
    r = startup.ratios(seconds, 2, ["32", "bf16"])
    assert r["import vae_train / import torch"][0] == pytest.approx([1.2, 1.1])
    assert r["first step / import torch"][0] == pytest.approx([2.5, 2.25])
    assert r["classic / vae-train 2 ep"][0] == pytest.approx([2.0, 3.0])
    assert r["classic / vae-train 2 ep bf16"][0] == pytest.approx([4.0, 3.75])
    assert r["classic / vae-train 2 ep"][1:] == (2.5, True)
    report = {"seconds": {k: startup.spread(v) for k, v in seconds.items()},
              "ratios": {k: {**startup.spread(v), "target": t, "higher_is_better": hi}
                         for k, (v, t, hi) in r.items()}}
    lines = startup.table(report).splitlines()
    first = next(x for x in lines if x.startswith("first step / import torch"))
    assert first.split()[-1] == "NO" and "<=2.0" in first and "2.38" in first.split()
    imp = next(x for x in lines if x.startswith("import vae_train / import torch"))
    assert imp.split()[-1] == "yes"


@pytest.mark.slow
def test_quick_mode_runs_every_row_and_prints_its_table(tmp_path):
    write_mnist_like(tmp_path / "fm" / "FashionMNIST" / "raw", n_train=300, n_test=100)
    out = tmp_path / "startup.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--data-root",
                           str(tmp_path / "fm"), "--out", str(out)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert set(report["seconds"]) == {"import torch", "import vae_train", "first step",
                                      "vae-train 1 ep", "classic 1 ep"}
    assert all(s["n"] == 1 and s["median"] > 0 for s in report["seconds"].values())
    assert set(report["ratios"]) == {"import vae_train / import torch",
                                     "first step / import torch", "classic / vae-train 1 ep"}
    for name in list(report["seconds"]) + list(report["ratios"]):
        assert name in proc.stdout
    assert f"wrote {out}" in proc.stdout


# -- sympy: kept out of a run whose memory estimate is cached ----------------------------------

def test_broadcasts_to_agrees_with_torch():
    import itertools

    from vae_train.distributions import broadcasts_to

    shapes = [(), (1,), (3,), (2, 3), (1, 3), (2, 1), (4, 2, 3), (4, 1, 3), (5, 4, 2, 3)]
    for a, b in itertools.product(shapes, shapes):
        try:
            ref = torch.broadcast_shapes(b, a) == torch.Size(b)
        except RuntimeError:
            ref = False
        assert broadcasts_to(a, b) == ref, (a, b)


def test_the_memory_estimate_is_measured_once_per_configuration(tmp_path, monkeypatch):
    from vae_train import memory
    from vae_train.models.vae import VAE
    from vae_train.losses import ELBO

    def make():
        return VAE((1, 28, 28), latent_dim=4, hidden_dims=[40])

    cache = tmp_path / "memory" / "one.json"
    first = memory.estimate(make, ELBO(), (8, 1, 28, 28), None, cache=cache)
    assert first.activation_bytes and cache.is_file()
    monkeypatch.setattr(memory, "_activation_bytes", lambda *a: pytest.fail("measured again"))
    again = memory.estimate(make, ELBO(), (8, 1, 28, 28), None, cache=cache)
    assert again == first
    cache.write_text("not json")                 # a damaged entry: measured (and rewritten)
    monkeypatch.setattr(memory, "_activation_bytes", lambda *a: 123)
    assert memory.estimate(make, ELBO(), (8, 1, 28, 28), None, cache=cache).activation_bytes == 123
    blocked = tmp_path / "file"
    blocked.write_text("")                       # a cache folder that cannot be made
    assert memory.estimate(make, ELBO(), (8, 1, 28, 28), None,
                           cache=blocked / "x.json").activation_bytes == 123


RUN_TWICE = """
import sys
sys.argv = ["vae_train", "dataset=synthetic", "dataset.num_train=300", "dataset.num_test=50",
            "trainer.epochs=1", "trainer.progress=false", "logger=[]", "device=cpu",
            "hydra.run.dir=" + sys.argv[1], "overwrite=true"]
from vae_train.train import main
try:
    main()
except SystemExit:
    pass
print("SYMPY", "sympy" in sys.modules)
"""


@pytest.mark.slow
def test_a_run_whose_estimate_is_cached_does_not_import_sympy(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VAE_CACHE_DIR": str(tmp_path / "cache")}
    seen = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", RUN_TWICE, str(tmp_path / "run")],
                              capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        seen.append(proc.stdout.strip().splitlines()[-1])
    assert seen == ["SYMPY True", "SYMPY False"]
