"""scripts/benchmark.py on a tiny generated Fashion-MNIST: the rows, the JSON and the table
(the structure and that every number is positive; no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import load_script, write_mnist_like



@pytest.fixture(scope="module")
def bench():
    return load_script("benchmark")


@pytest.fixture(autouse=True)
def keep_threads():
    """--threads changes torch's thread count for the process: put it back."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("fm")
    write_mnist_like(root / "FashionMNIST" / "raw", n_train=300, n_test=100)
    return root


def test_bare_rows_json_and_table(bench, tiny, tmp_path, capsys):
    out = tmp_path / "b.json"
    report = bench.main(["--models", "vae", "vqvae", "aae", "--no-cli", "--epochs", "1", "--reps", "1",
                         "--train-size", "256", "--peak-size", "128", "--threads", "1",
                         "--data-root", str(tiny), "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["results"] == json.loads(json.dumps(report["results"]))
    for key in ("device", "device_name", "threads", "torch", "date", "epochs", "command"):
        assert saved[key] not in (None, "")
    assert saved["device"] == "cpu" and saved["threads"] == 1 and saved["epochs"] == 1
    assert set(saved["matmul_peak_flops"]) == {"32", "bf16"}   # bf16: the vae's second row
    assert all(v["peak"] > 0 and v["size"] == 128 for v in saved["matmul_peak_flops"].values())
    assert saved["classic"]["images_per_sec"] > 0 and saved["classic"]["train_images"] == 300

    rows = {(r["model"], r["stage"], r["precision"]): r for r in saved["results"]}
    assert set(rows) == {("vae", None, "32"), ("vae", None, "bf16"), ("aae", None, "32"),
                         ("vqvae", "autoencoder", "32"), ("vqvae", "prior", "32")}
    assert rows[("aae", None, "32")]["phases"] == ["autoencoder", "discriminator", "generator"]
    assert rows[("vqvae", "prior", "32")]["phases"] == ["prior"]
    for r in rows.values():
        assert "errors" not in r, r.get("errors")
        assert r["dataset_train_size"] == 256
        assert r["bare"]["train_images"] == 256 - round(0.1 * 256)   # a tenth validates
        assert r["bare"]["images_per_sec"] > 0 and r["train_flops_per_image"] > 0
        assert 0 < r["bare"]["fraction_of_peak"]
        assert "vae_train" not in r and "ratio" not in r
    # 784-400-20: 2 * (784*400 + 400*40 + 20*400 + 400*784) forward; the backward twice that
    # less the input gradient of the first layer
    fwd = 2 * (784 * 400 + 400 * 40 + 20 * 400 + 400 * 784)
    assert rows[("vae", None, "32")]["train_flops_per_image"] == 3 * fwd - 2 * 784 * 400
    assert rows[("vae", None, "32")]["bare_vs_classic"] > 0
    assert "vs_classic" not in rows[("vae", None, "32")]   # no vae-train row to compare
    assert rows[("vqvae", "prior", "32")]["bare_test_loss"] > 0
    assert "bare_test_loss" not in rows[("vqvae", "autoencoder", "32")]

    text = capsys.readouterr().out
    assert "vqvae:prior" in text and "vae (classic)" in text and f"wrote {out}" in text


def test_cli_rows_arguments_and_ratio(bench, tiny, tmp_path, monkeypatch):
    """The vae-train row: the command line it runs, and metrics.json's history split by
    stage, averaged after the first epoch, divided by the bare row."""
    seen = {}

    def fake_cli(args_, tmp, name, env):
        seen["args"] = args_
        h = [{"train_seconds": s, "epoch_seconds": s + 1.0, "train_images": 230}
             for s in (2.0, 1.0, 4.0, 2.0)]
        return {"epochs": h, "test_loss": 123.0}

    monkeypatch.setattr(bench, "run_vae_train", fake_cli)
    args = bench.parse_args(["--models", "vqvae", "--epochs", "2", "--train-size", "256",
                             "--compile", "--reps", "1", "--data-root", str(tiny)])
    args.compile = False   # the flag's argument list is checked below; no compiling here
    rows = bench.bench_family("vqvae", "32", args, tiny, tmp_path, bench.resolve("cpu"), {},
                              log=lambda m: None)
    assert [r["stage"] for r in rows] == ["autoencoder", "prior"]
    assert "model=vqvae" in seen["args"] and "model.prior_epochs=2" in seen["args"]
    assert "dataset.train_size=256" in seen["args"] and "device.precision=32" in seen["args"]
    ae, prior = rows
    assert ae["vae_train"]["train_seconds"] == 1.0 and prior["vae_train"]["train_seconds"] == 2.0
    assert ae["vae_train"]["epoch_seconds"] == 2.0 and ae["vae_train"]["epochs_averaged"] == 1
    assert ae["vae_train"]["images_per_sec"] == 230.0
    assert ae["ratio"] == pytest.approx(230.0 / ae["bare"]["images_per_sec"])
    assert prior["vae_train_test_loss"] == 123.0 and "vae_train_test_loss" not in ae
    assert ae["seconds_per_full_epoch"] == pytest.approx(54000 / 230)
    text = bench.table({"results": rows})
    line = next(x for x in text.splitlines() if x.startswith("vqvae:autoencoder"))
    assert "230" in line.split() and f"{ae['ratio']:.2f}" in line.split()

    assert "device.compile=true" not in seen["args"]

    # --compile asks vae-train for device.compile=true (this vae-train has the key)
    args.compile = True
    monkeypatch.setattr(bench, "run_bare", lambda *a, **k: {"stages": {}, "test_loss": 1.0,
                                                            "channels_last": False})
    rows = bench.bench_family("vqvae", "32", args, tiny, tmp_path, bench.resolve("cpu"), {},
                              log=lambda m: None)
    assert "device.compile=true" in seen["args"]
    assert rows[0]["compile"] and rows[0]["compile_cli"] and "bare" not in rows[0]


def test_cli_run_reads_metrics(bench, tmp_path, monkeypatch):
    """run_vae_train: the command it starts and what it reads back from metrics.json."""
    import subprocess

    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        run_dir = Path(next(a for a in cmd if a.startswith("hydra.run.dir=")).split("=", 1)[1])
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text(json.dumps({"test_loss": 250.5, "history": [
            {"train_images_per_sec": 1000.0, "train_seconds": 2.0, "epoch_seconds": 2.5},
            {"train_images_per_sec": 2000.0, "train_seconds": 1.0, "epoch_seconds": 1.25}]}))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    out = bench.run_vae_train(["model=vae"], tmp_path, "vae-32", {})
    assert calls[0][1:4] == ["-m", "vae_train", "model=vae"]
    assert "trainer.progress=false" in calls[0]
    assert out["test_loss"] == 250.5
    assert [e["train_images"] for e in out["epochs"]] == [2000, 2000]
    assert bench.summarise(out["epochs"]) == {"train_images": 2000, "train_seconds": 1.0,
                                              "images_per_sec": 2000.0, "epochs_averaged": 1,
                                              "best_images_per_sec": 2000.0,
                                              "epoch_seconds": 1.25}
    three = [{"train_seconds": s, "train_images": 100} for s in (9.0, 1.0, 0.5)]
    assert bench.summarise(three)["images_per_sec"] == pytest.approx(100 / 0.75)
    assert bench.summarise(three)["best_images_per_sec"] == 200.0

    monkeypatch.setattr(bench.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 2, "", "error: model.latent_dim=0 is invalid"))
    with pytest.raises(RuntimeError, match="(?s)exited with 2.*latent_dim=0"):
        bench.run_vae_train(["model=vae"], tmp_path, "bad", {})


@pytest.mark.slow
def test_data_paths_rows(bench, tiny, tmp_path):
    """--data: Fashion-MNIST written out as PNGs, decoded with 1 worker and every core, the
    cache's first load and hit, and the conv VAE trained in memory and from the file."""
    out = tmp_path / "data.json"
    report = bench.main(["--data", "--images", "120", "--data-root", str(tiny), "--reps", "1",
                         "--train-size", "60", "--epochs", "1", "--model", "vae",
                         "--override", "model.hidden_dims=[8]", "trainer.batch_size=20",
                         "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    d = report["decode"]
    assert d["images"] == 120 + 20 and d["cores"] >= 1
    assert min(d["decode_1_worker_img_per_s"], d["decode_all_cores_img_per_s"],
               d["cache_first_load_s"], d["cache_hit_s"]) > 0
    t = report["train"]
    assert len(t["in_memory_img_per_s"]) == len(t["from_file_img_per_s"]) == 1
    assert t["ratio_min"] <= t["ratio_median"] <= t["ratio_max"] and t["ratio_median"] > 0


def test_the_cpu_subset_of_a_costly_family_is_an_integer_option(bench):
    import torch
    cpu = torch.device("cpu")
    size = bench.default_train_size({"train": 4.8e8}, cpu)      # the conv ladder's cost
    assert isinstance(size, int) and size % 1000 == 0 and 1000 <= size < bench.FULL_EPOCH
    assert bench.default_train_size({"train": 1e6}, cpu) is None       # a full epoch fits
    assert bench.default_train_size({"train": 4.8e8}, torch.device("cuda")) is None


def test_rows_are_interleaved_and_ratios_are_taken_within_a_repetition(bench, tiny, tmp_path,
                                                                       monkeypatch, capsys):
    """--reps 3: classic, bare, vae-train in every repetition (bare and vae-train swapped in
    odd ones); each ratio is the median of the per-repetition ratios, with their range."""
    calls = []
    bare_ips, vt_ips, classic_ips = iter([100, 200, 400]), iter([90, 100, 400]), \
        iter([50, 100, 100])

    def epochs(n):
        return [{"train_seconds": 1.0, "epoch_seconds": 1.5, "train_images": n}]

    def fake_bare(cfg, n_epochs, device, amp_dtype, compile_=False):
        calls.append("bare")
        return {"stages": {"train": epochs(next(bare_ips))}, "test_loss": 2.0,
                "channels_last": False}

    def fake_cli(args_, tmp, name, env):
        calls.append("vae-train")
        return {"epochs": epochs(next(vt_ips)), "test_loss": 3.0}

    def fake_classic(root, n_epochs, device):
        calls.append("classic")
        return {"stages": {"train": epochs(next(classic_ips))}, "test_loss": 4.0}

    monkeypatch.setattr(bench, "run_bare", fake_bare)
    monkeypatch.setattr(bench, "run_vae_train", fake_cli)
    monkeypatch.setattr(bench, "run_classic", fake_classic)
    out = tmp_path / "b.json"
    report = bench.main(["--models", "vae", "--precision", "32", "--reps", "3", "--epochs", "1",
                         "--train-size", "256", "--peak-size", "64", "--threads", "1",
                         "--data-root", str(tiny), "--out", str(out)])
    assert calls == ["classic", "bare", "vae-train", "classic", "vae-train", "bare",
                     "classic", "bare", "vae-train"]
    (row,) = report["results"]
    assert row["ratio_reps"] == pytest.approx([0.9, 0.5, 1.0])
    assert row["ratio"] == pytest.approx(0.9) and row["ratio_range"] == pytest.approx([0.5, 1.0])
    assert row["vae_train"]["images_per_sec"] == 100 and row["bare"]["images_per_sec"] == 200
    assert row["vae_train"]["images_per_sec_range"] == [90, 400]
    assert row["vs_classic"] == pytest.approx(1.8)                      # 90/50, 100/100, 400/100
    assert row["vs_classic_range"] == pytest.approx([1.0, 4.0])
    assert row["bare_vs_classic"] == pytest.approx(2.0)                 # 2, 2, 4
    assert report["classic"]["images_per_sec"] == 100 and report["classic"]["reps"] == 3
    assert json.loads(out.read_text())["reps"] == 3
    text = capsys.readouterr().out
    line = next(x for x in text.splitlines() if x.startswith("vae ") and "classic" not in x)
    assert "0.90" in line.split() and "0.50..1.00" in line.split() and "1.00..4.00" in line.split()
    assert "medians of 3 interleaved repetition(s)" in text


def test_a_failing_row_is_not_run_again(bench, tiny, tmp_path, monkeypatch):
    """A row that fails in one repetition records why and is skipped in the later ones; the
    other row still gives its median."""
    calls = []

    def broken_cli(args_, tmp, name, env):
        calls.append(name)
        raise RuntimeError("vae-train exited with 2")

    monkeypatch.setattr(bench, "run_vae_train", broken_cli)
    args = bench.parse_args(["--models", "vae", "--epochs", "1", "--train-size", "256",
                             "--reps", "2", "--data-root", str(tiny)])
    (row,) = bench.bench_family("vae", "32", args, tiny, tmp_path, bench.resolve("cpu"), {},
                                log=lambda m: None)
    assert calls == ["vae-32-0"]
    assert row["errors"] == {"vae_train": "vae-train exited with 2"}
    assert row["bare"]["reps"] == 2 and "ratio" not in row


def test_a_variant_row_runs_in_the_same_repetitions_and_compares_with_the_default(
        bench, tiny, tmp_path, monkeypatch, capsys):
    """--variant NAME:KEY=VALUE: another vae-train row with those overrides, interleaved with
    the others; its ratio to the bare loop and to the default row, per repetition."""
    calls = []
    ips = {"bare": iter([100, 100]), "default": iter([90, 80]), "every_step": iter([81, 80])}

    def epochs(n):
        return [{"train_seconds": 1.0, "epoch_seconds": 1.5, "train_images": n}]

    def fake_bare(cfg, n_epochs, device, amp_dtype, compile_=False):
        calls.append("bare")
        return {"stages": {"train": epochs(next(ips["bare"]))}, "test_loss": 2.0,
                "channels_last": False}

    def fake_cli(args_, tmp, name, env):
        which = "every_step" if "trainer.nonfinite_check=every_step" in args_ else "default"
        calls.append(which)
        return {"epochs": epochs(next(ips[which])), "test_loss": 3.0}

    monkeypatch.setattr(bench, "run_bare", fake_bare)
    monkeypatch.setattr(bench, "run_vae_train", fake_cli)
    report = bench.main(["--models", "vae", "--precision", "32", "--reps", "2", "--epochs", "1",
                         "--train-size", "256", "--peak-size", "64", "--threads", "1",
                         "--no-classic", "--variant",
                         "every_step:trainer.nonfinite_check=every_step",
                         "--data-root", str(tiny), "--out", str(tmp_path / "b.json")])
    assert calls == ["bare", "default", "every_step", "every_step", "default", "bare"]
    default, variant = report["results"]
    assert variant["model"] == "vae [every_step]"
    assert variant["variant_overrides"] == ["trainer.nonfinite_check=every_step"]
    assert variant["ratio_reps"] == pytest.approx([0.81, 0.80])
    assert variant["vs_default"] == pytest.approx((0.9 + 1.0) / 2)      # 81/90, 80/80
    assert "x default 0.950 (0.90..1.00)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="NAME:KEY=VALUE"):
        bench.parse_variants(["no-colon"])
