"""Bad arguments of ``evaluate`` and ``sample``, through their real entry points (in this
process, to keep it quick): a non-zero exit, one line that names the option (and the limit, for
values too large to be done), no traceback; values checked before the run is loaded, output
folders before any work."""

import json
import logging
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from vae_train import evaluate, memory, sample

FIXTURE = Path(__file__).parent / "fixtures" / "run_v0_1"   # 8x8 synthetic, 2-D code, 100 test


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small trained VAE (the kept fixture run, copied)."""
    path = tmp_path_factory.mktemp("args") / "run"
    shutil.copytree(FIXTURE, path)
    return path


@pytest.fixture(autouse=True)
def restore_logging():
    """Hydra configures logging in this process (handlers on pytest's captured streams): put
    every logger back as it was, so later tests do not log into closed files."""
    def loggers():
        return [logging.root, *(lg for lg in logging.Logger.manager.loggerDict.values()
                                if isinstance(lg, logging.Logger))]

    saved = {lg: (lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers()}
    yield
    for lg in loggers():
        handlers, level, propagate, disabled = saved.get(lg, ([], logging.NOTSET, True, False))
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate, lg.disabled = propagate, disabled


def refused(main, args, capfd) -> str:
    """Run a command that must refuse: its one line of stderr (checked here)."""
    with pytest.raises(SystemExit) as exit_:
        main(args)
    out, err = capfd.readouterr()
    text = out + err
    assert exit_.value.code not in (0, None), text
    assert "Traceback" not in text and "unexpected error" not in text, text
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    return text


@contextmanager
def read_only(path: Path):
    """``path`` made read-only for this process (as root: the immutable attribute, which root
    obeys too); skipped where that cannot be done."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(
                ["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a folder read-only for root here (chattr +i)")
        undo = ["chattr", "-i", str(path)]
    else:
        mode = path.stat().st_mode
        path.chmod(0o555)
        undo = None
    try:
        try:
            (path / ".probe").touch()
        except OSError:
            pass
        else:
            (path / ".probe").unlink()
            pytest.skip(f"{path} is still writable")
        yield
    finally:
        if undo:
            subprocess.run(undo, check=True)
        else:
            path.chmod(mode)


# (arguments, text the one line must contain); every value is refused before the run is loaded
EVALUATE_BEFORE_LOADING = [
    (["k=abc"], "k='abc' is invalid"),
    (["k=nan"], "k=nan is invalid"),
    (["k=inf"], "k=inf is invalid"),
    (["k=-5"], "k=-5 is invalid"),
    (["k=true"], "k=True is invalid"),
    (["k=2.5"], "k=2.5 is invalid"),
    (["k=1000000000000"], "k=1000000000000 is invalid: it must be an integer in [1, 1000000]"),
    (["k="], "k= is empty"),
    (["n=-3"], "n=-3 is invalid"),
    (["n=1e9"], "n=1000000000.0 is invalid"),
    (["n=[1,2]"], "n=[1, 2] is invalid"),
    (["batch_size=0"], "batch_size=0 is invalid"),
    (["batch_size=false"], "batch_size=False is invalid"),
    (["max_batch=-1"], "max_batch=-1 is invalid"),
    (["max_batch=nan"], "max_batch=nan is invalid"),
    (["seed=9223372036854775808"], "seed=9223372036854775808 is invalid"),
    (["seed=18446744073709551617"], "seed=18446744073709551617 is invalid"),
    (["seed=-1"], "seed=-1 is invalid: it must be an integer in [0, 2^63-1]"),
    (["seed=1.5"], "seed=1.5 is invalid"),
    (["threshold=nan"], "threshold=nan is invalid"),
    (["threshold=-1"], "threshold=-1 is invalid"),
    (["threshold=abc"], "threshold='abc' is invalid"),
    (["metric_samples=10000000"], "metric_samples=10000000 is invalid"),
    (["metric_samples=1"], "metric_samples=1 is invalid"),
    (["mig_bins=1"], "mig_bins=1 is invalid"),
    (["mig_bins=1000000000"], "mig_bins=1000000000 is invalid"),
    (["factorvae_votes=100000"], "factorvae_votes=100000 x factorvae_l=100 = 10000000 images"),
    (["factorvae_l=inf"], "factorvae_l=inf is invalid"),
    (["split="], "split= is empty"),
    (["split=dev"], "split='dev' is invalid"),
    (["progress=maybe"], "progress='maybe' is invalid"),
    (["checkpoint="], "checkpoint= is empty"),
    (["device=tpu"], "device='tpu' is invalid"),
]


@pytest.mark.parametrize("args,needle", EVALUATE_BEFORE_LOADING,
                         ids=[" ".join(a) for a, _ in EVALUATE_BEFORE_LOADING])
def test_evaluate_refuses_bad_values_before_loading(run, args, needle, capfd):
    text = refused(evaluate.main, [f"run={run}", *args], capfd)
    assert needle in text, text
    assert "loaded " not in text, text                   # nothing was loaded
    assert not (run / "eval_dev.json").exists()


def test_evaluate_refuses_a_decode_batch_that_cannot_fit(run, capfd):
    """max_batch=10^12 (example, sample) pairs at once: refused with the estimate and the
    memory available, before the evaluation starts."""
    before = (run / "eval.json").read_bytes()
    text = refused(evaluate.main, [f"run={run}", "max_batch=1000000000000", "k=5"], capfd)
    assert "max_batch=1000000000000 needs about" in text and "is available on cpu" in text
    assert "use max_batch=" in text
    assert (run / "eval.json").read_bytes() == before            # nothing written


def test_huge_n_and_batch_size_are_min_d_with_the_split(run, capfd):
    """n is min'd with the split (100 examples), and so is a batch: both fit."""
    evaluate.main([f"run={run}", "batch_size=1000000000000", "n=100000000000000", "k=5",
                   "progress=false"])
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert json.loads((run / "eval.json").read_text())["n"] == 100


def test_the_memory_estimate_is_the_models_largest_row(run):
    """Per (example, sample) pair: MEMORY_FACTOR x the largest of a module's output per pair
    and the decoded example with its latents (8x8 images, 2 latents: (64 + 2) x 4 bytes; the
    fixture's MLP is 64-16-2, so no layer's output is wider than the image)."""
    from vae_train.runs import load_run

    loaded = load_run(str(run), "best", "cpu")
    x, y = next(iter(loaded.data.eval_batches(loaded.data.test.part(0, 1), 1)))
    assert memory.bytes_per_pair(loaded.model, x, y) == memory.MEMORY_FACTOR * (64 + 2) * 4


def test_evaluate_refuses_a_read_only_run_before_evaluating(run, tmp_path, capfd):
    ro = tmp_path / "ro"
    shutil.copytree(run, ro)
    with read_only(ro):
        text = refused(evaluate.main, [f"run={ro}", "k=5"], capfd)
    assert f"run={ro} (where eval.json is written)" in text and "cannot write" in text
    assert "loaded " not in text


def test_evaluate_refuses_an_eval_json_that_is_a_folder(run, tmp_path, capfd):
    other = tmp_path / "other"
    shutil.copytree(run, other)
    (other / "eval_val.json").mkdir()
    text = refused(evaluate.main, [f"run={other}", "split=val", "k=5"], capfd)
    assert "eval_val.json is a folder" in text


SAMPLE_BEFORE_LOADING = [
    (["n=0"], "n=0 is invalid"),
    (["n=abc"], "n='abc' is invalid"),
    (["n=nan"], "n=nan is invalid"),
    (["n=1000000000"], "n=1000000000 is invalid: it must be an integer in [1, 10000]"),
    (["n=true"], "n=True is invalid"),
    (["image=-1"], "image=-1 is invalid"),
    (["image=1e3"], "image=1000.0 is invalid"),
    (["dims=0"], "dims=0 is invalid"),
    (["dims=5000"], "dims=5000 x (steps=9 + 1) = 50000 images in traversals.png is too many"),
    (["steps=1000000000"], "steps=1000000000 is invalid: it must be an integer in [1, 9999]"),
    (["steps=-2"], "steps=-2 is invalid"),
    (["pairs=1e9"], "pairs=1000000000.0 is invalid"),
    (["interp_steps=-1"], "interp_steps=-1 is invalid"),
    (["interp_steps=5000"], "pairs=8 x (interp_steps=5000 + 2) = 40016 images"),
    (["span=0"], "span=0 is invalid"),
    (["span=nan"], "span=nan is invalid"),
    (["span=1e308"], "span=1e+308 is invalid: it must be a number in (0, 100]"),
    (["seed=18446744073709551616"], "seed=18446744073709551616 is invalid"),
    (["seed=true"], "seed=True is invalid"),
    (["seed="], "seed= is empty"),
    (["device=gpu9"], "device='gpu9' is invalid"),
]


@pytest.mark.parametrize("args,needle", SAMPLE_BEFORE_LOADING,
                         ids=[" ".join(a) for a, _ in SAMPLE_BEFORE_LOADING])
def test_sample_refuses_bad_values_before_loading(run, args, needle, tmp_path, capfd):
    text = refused(sample.main, [f"run={run}", f"out={tmp_path / 'pics'}", *args], capfd)
    assert needle in text, text
    assert "loaded " not in text, text
    assert not (tmp_path / "pics").exists()


# What only the loaded run can tell: the test split has 100 images.
SAMPLE_AFTER_LOADING = [
    (["image=100"], "image=100 is beyond the test split (100 images: image=0..99)"),
    (["image=9223372036854775807"], "image=9223372036854775807 is beyond the test split"),
    (["n=101"], "n=101 is invalid here: the reconstructions show n test images and the test "
                "split has 100; use n<=100"),
    (["pairs=51"], "pairs=51 needs 102 test images and the test split has 100; use pairs<=50"),
]


@pytest.mark.parametrize("args,needle", SAMPLE_AFTER_LOADING,
                         ids=[" ".join(a) for a, _ in SAMPLE_AFTER_LOADING])
def test_sample_refuses_what_the_test_split_cannot_give(run, args, needle, tmp_path, capfd):
    text = refused(sample.main, [f"run={run}", f"out={tmp_path / 'pics'}", *args], capfd)
    assert needle in text, text
    assert not list(tmp_path.glob("pics/*.png"))


def test_sample_refuses_an_unwritable_out_before_any_work(run, tmp_path, capfd):
    afile = tmp_path / "afile"
    afile.write_text("a file, not a folder")
    text = refused(sample.main, [f"run={run}", f"out={afile}"], capfd)
    assert f"out={afile}: cannot write {afile}: {afile} is a file, not a folder" in text
    assert "loaded " not in text
    text = refused(sample.main, [f"run={run}", f"out={afile / 'pics'}"], capfd)
    assert f"out={afile / 'pics'}" in text and "is a file, not a folder" in text
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only(ro):
        text = refused(sample.main, [f"run={run}", f"out={ro / 'pics'}"], capfd)
    assert f"out={ro / 'pics'}: cannot write" in text and "loaded " not in text


def test_sample_into_a_read_only_run(run, tmp_path, capfd):
    """A shared run that cannot be written: the default out= (its samples/) is refused in one
    line saying how to write elsewhere; with out= elsewhere the pictures are written and not
    logged to the run's TensorBoard (said in a note)."""
    ro = tmp_path / "ro"
    shutil.copytree(run, ro)
    shutil.rmtree(ro / "samples", ignore_errors=True)
    events = sorted(p.name for p in ro.glob("events.out.tfevents*"))
    with read_only(ro):
        text = refused(sample.main, [f"run={ro}"], capfd)
        assert f"out= (default: {ro / 'samples'}; give out=DIR to write elsewhere)" in text
        sample.main([f"run={ro}", f"out={tmp_path / 'pics'}", "n=4"])
        out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert "not logged to its TensorBoard" in err
    assert (tmp_path / "pics" / "samples.png").is_file()
    assert sorted(p.name for p in ro.glob("events.out.tfevents*")) == events


def test_sample_traverses_every_dimension_of_a_smaller_code(run, tmp_path, capfd):
    """dims larger than the code (the fixture's code has 2 dimensions): all of them, said."""
    from PIL import Image

    sample.main([f"run={run}", f"out={tmp_path}", "dims=50", "steps=3", "n=4"])
    _, err = capfd.readouterr()
    assert "dims=50: the code has 2 dimensions; traversing all 2" in err
    with Image.open(tmp_path / "traversals.png") as im:
        w, h = im.size
    # torchvision's grid: 2 rows of (1 + 3) images of 8 px with 2 px padding
    assert (w, h) == (4 * 10 + 2, 2 * 10 + 2)


def test_sample_refuses_pictures_that_cannot_fit(run, tmp_path, capfd, monkeypatch):
    """The decoded images of the largest picture against the memory available (here made
    100 KB): one line with the estimate, what is available and what would fit."""
    monkeypatch.setattr(memory, "available", lambda device: 100 * 1024)
    text = refused(sample.main, [f"run={run}", f"out={tmp_path}", "n=100"], capfd)
    per = memory.MEMORY_FACTOR * (64 + 2) * 4
    assert (f"n=100 needs about {memory.human(100 * per)} of memory (100 images at once"
            in text), text
    assert f"but 100 KB is available on cpu; use n={100 * 1024 // per} or less" in text
    assert not list(tmp_path.glob("*.png"))


def test_a_relative_checkpoint_path_is_found_in_the_run_directory(run, tmp_path, monkeypatch):
    """checkpoint=checkpoints/last.pt from another working directory: the run's file (review
    17 #17); a relative path that is in neither place is one line that does not say "train
    the run first"."""
    from vae_train.errors import UserError
    from vae_train.runs import load_run

    monkeypatch.chdir(tmp_path)
    loaded = load_run(str(run), "checkpoints/last.pt", "cpu")
    import torch

    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert loaded.state["step"] == last["step"] and loaded.state["epoch"] == last["epoch"]
    with pytest.raises(UserError) as e:
        load_run(str(run), "checkpoints/top/nope.pt", "cpu")
    text = str(e.value)
    assert "no checkpoint checkpoints/top/nope.pt" in text and str(run / "checkpoints") in text
    assert "train the run first" not in text


def test_evaluate_ignores_the_runs_own_logger_classes(run, tmp_path):
    """A run trained with a logger of the user's own (a class outside vae-train) loads for
    evaluate/sample without trust_run_code: they never build loggers (review 17 #8)."""
    import torch

    from vae_train.runs import load_run

    other = tmp_path / "mylog"
    shutil.copytree(run, other)
    for name in ("best.pt", "last.pt"):
        path = other / "checkpoints" / name
        state = torch.load(path, weights_only=True)
        state["config"]["logger"] = {"mine": {"_target_": "my_package.mylog.MyLogger"}}
        torch.save(state, path)
    loaded = load_run(str(other), "best", "cpu")
    assert "logger" in loaded.cfg               # the run's config as it was
