"""Data read from a file a batch at a time (``dataset.in_memory=false``, or ``auto`` when the
data are larger than a share of the free memory): the same batches as in memory, binarization
that does not depend on the batch, a background reader that stops and passes errors on, and
resident memory far below the data's size while training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from vae_train.data import DataModule, ImageData
from vae_train.data.batches import Prefetch, hash_uniform, to_float
from vae_train.data.rows import Rows


def _npy(tmp_path, name, array):
    path = tmp_path / f"{name}.npy"
    np.save(path, array)
    return np.load(path, mmap_mode="r")


@pytest.fixture
def images(tmp_path):
    g = np.random.default_rng(0)
    train = g.integers(0, 256, (500, 1, 6, 5), dtype=np.uint8)
    test = g.integers(0, 256, (80, 1, 6, 5), dtype=np.uint8)
    ty, ey = torch.arange(500) % 4, torch.arange(80) % 4
    files = ImageData("npy", Rows(_npy(tmp_path, "train", train)), ty,
                      Rows(_npy(tmp_path, "test", test)), ey, classes=list("abcd"))
    memory = ImageData("npy", torch.from_numpy(train), ty, torch.from_numpy(test), ey,
                       classes=list("abcd"))
    return files, memory


def test_rows_read_what_the_array_holds(tmp_path):
    a = np.random.default_rng(1).integers(0, 256, (300, 2, 3, 3), dtype=np.uint8)
    rows = Rows(_npy(tmp_path, "a", a))
    idx = np.random.default_rng(2).permutation(300)[:77]
    assert torch.equal(rows.take(idx), torch.from_numpy(a[idx]))     # any order, preads
    view = rows[50:250][np.array([3, 3, 199, 0])]
    assert len(view) == 4 and view.shape == (4, 2, 3, 3) and view.dtype == torch.uint8
    assert torch.equal(view.take(), torch.from_numpy(a[[53, 53, 249, 50]]))
    assert torch.equal(Rows(a).take(torch.tensor([5, 1])), torch.from_numpy(a[[5, 1]]))
    assert rows.nbytes == a.nbytes
    # a file cut short after it was opened is an error, not garbage
    short = tmp_path / "short.npy"
    np.save(short, a)
    mm = np.load(short, mmap_mode="r")
    os.truncate(short, os.path.getsize(short) - 18 * 10)
    with pytest.raises(OSError, match="short read"):
        Rows(mm).take(np.array([299]))


def test_file_backed_splits_give_the_in_memory_batches(images):
    files, memory = images
    lazy = DataModule(files, torch.device("cpu"), in_memory=False)
    eager = DataModule(memory, torch.device("cpu"), in_memory=True)
    assert not lazy.in_memory and not lazy.train.in_memory and eager.train.in_memory
    assert (len(lazy.train), len(lazy.val), len(lazy.test)) == (450, 50, 80)
    perm = torch.randperm(450, generator=torch.Generator().manual_seed(0))
    shares = [perm[i:i + 64] for i in range(0, 450, 64)]
    for (xa, ya), (xb, yb) in zip(lazy.train_batches(shares), eager.train_batches(shares),
                                  strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for split in ("val", "test"):
        a = list(lazy.eval_batches(getattr(lazy, split), 32))
        b = list(eager.eval_batches(getattr(eager, split), 32))
        assert len(a) == len(b) and all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert torch.equal(lazy.val.floats(7), eager.val.floats(7))
    assert torch.equal(lazy.test.part(10, 20).read(), eager.test.part(10, 20).read())
    sub = lazy.labeled_subset(8, seed=3)
    assert sub.in_memory and torch.equal(sub.x, eager.labeled_subset(8, seed=3).x)


def test_auto_reads_from_the_file_only_when_the_data_are_large(images):
    files, memory = images
    assert DataModule(files, torch.device("cpu"), in_memory="auto").in_memory
    tiny_share = DataModule(files, torch.device("cpu"), in_memory="auto", memory_share=1e-12)
    assert not tiny_share.in_memory
    # data parsed into memory stay there whatever the option says
    assert DataModule(memory, torch.device("cpu"), in_memory=False).in_memory


def test_binarization_from_a_file_is_a_property_of_the_row(images):
    files, _ = images
    dm = DataModule(files, torch.device("cpu"), binarize="static", in_memory=False)
    whole = dm.train.read()
    assert set(whole.unique().tolist()) <= {0, 255}
    idx = torch.tensor([7, 3, 400, 3])
    assert torch.equal(dm.train.take(idx), whole[idx])            # the same in any batch
    p = to_float(files.train_x.take()).mean()                     # ones in proportion
    assert abs(whole.float().div(255).mean() - p) < 0.02
    dyn = DataModule(files, torch.device("cpu"), binarize="dynamic", in_memory=False)
    assert set(dyn.test.read().unique().tolist()) <= {0, 255}    # evaluation: fixed
    assert torch.equal(dyn.test.read(), dyn.test.read())
    assert not torch.equal(dyn.eval_split("train").read(), dyn.train.read())


def test_hash_uniform_is_uniform_and_fixed():
    u = hash_uniform(torch.arange(2000), 50, seed=4)
    assert u.shape == (2000, 50) and 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
    assert torch.equal(hash_uniform(torch.tensor([17]), 50, 4)[0], u[17])
    assert not torch.equal(hash_uniform(torch.arange(10), 50, 5), u[:10])


def test_prefetch_passes_errors_on_and_stops_early():
    def boom(i):
        if i == 3:
            raise ValueError("bad row 3")
        return i
    with pytest.raises(ValueError, match="bad row 3"):
        list(Prefetch(boom, range(10), depth=2))
    reader = Prefetch(lambda i: i * i, range(10**9), depth=2)
    it = iter(reader)
    assert [next(it) for _ in range(3)] == [0, 1, 4]
    reader.close()
    assert not reader.thread.is_alive()


# A data set of the user's own kind whose images live in one .npy, 4x the memory cap below.
BIG_SET = '''
import numpy as np
import torch
from vae_train.data import DataSet, ImageData
from vae_train.data.rows import Rows


class BigNpy(DataSet):
    def __init__(self, path, **common):
        super().__init__(**common)
        self.path = path

    def read(self):
        x = np.load(self.path, mmap_mode="r")
        n = len(x)
        return ImageData("big", Rows(x, np.arange(0, n - 500)), torch.zeros(n - 500).long(),
                         Rows(x, np.arange(n - 500, n)), torch.zeros(500).long())
'''

# Trains in this process twice: a short warm-up (imports, TensorBoard, pictures: their memory
# is no data), then, after resetting the peak resident memory, the measured run; prints the
# growth of the peak over the memory held before it.
MEASURE = '''
import json, sys
import vae_train.train
from hydra.core.global_hydra import GlobalHydra
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
def train(args):
    sys.argv = ["train", *args]
    try:
        vae_train.train.main()
    except SystemExit as e:
        assert not e.code, e.code
    GlobalHydra.instance().clear()
args = sys.argv[1:]
train([a for a in args if not a.startswith("hydra.run.dir=")] +
      ["dataset.train_size=2000", "hydra.run.dir=" + args[-1].split("=", 1)[1] + "_warm"])
open("/proc/self/clear_refs", "w").write("5")       # reset the peak (VmHWM) to now
base = rss("VmRSS:")
train(args)
print(json.dumps({"growth": rss("VmHWM:") - base}))
'''


def _peak_growth(tmp_path, in_memory: str, data: str):
    (tmp_path / "bignpy.py").write_text(textwrap.dedent(BIG_SET))
    conf = tmp_path / "conf" / "dataset"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "bignpy.yaml").write_text(f"_target_: bignpy.BigNpy\nname: big\npath: {data}\n")
    (tmp_path / "measure.py").write_text(MEASURE)
    run_dir = tmp_path / f"run_{in_memory}"
    args = ["dataset=bignpy", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "device=cpu",
            "model=vae", "model.hidden_dims=[16]", "model.latent_dim=4",
            "trainer.epochs=1", "trainer.batch_size=64", "trainer.eval_batch_size=64",
            "trainer.progress=false",
            "trainer.num_images=8", "trainer.image_every_epochs=0",
            f"dataset.in_memory={in_memory}", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(tmp_path / "measure.py"), *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert np.isfinite(metrics["test_loss"])
    return json.loads(proc.stdout.strip().splitlines()[-1])["growth"]


@pytest.mark.slow
def test_training_from_a_file_keeps_resident_memory_far_below_the_data(tmp_path):
    """A 256 MB set trained one epoch from the file grows the process's peak resident memory by
    less than a 64 MB cap (4x smaller; what remains is a training step's working set); the
    same set loaded into memory grows it by more than its size, so the measurement can tell
    the two apart."""
    cap = 64 * 2**20
    n, shape = 21846, (3, 64, 64)                 # 21846 x 12 KB = 256 MB = 4 x cap
    path = tmp_path / "big.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, *shape))
    g = np.random.default_rng(0)
    for a in range(0, n, 2048):
        mm[a:a + 2048] = g.integers(0, 256, (min(2048, n - a), *shape), dtype=np.uint8)
    mm.flush()
    del mm
    size = os.path.getsize(path)
    assert size >= 4 * cap
    from_file = _peak_growth(tmp_path, "false", str(path))
    assert from_file < cap, f"peak resident memory grew {from_file / 2**20:.0f} MB"
    in_memory = _peak_growth(tmp_path, "true", str(path))
    assert in_memory > size, f"in memory grew only {in_memory / 2**20:.0f} MB"
