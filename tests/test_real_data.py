"""A smoke test on real data: Fashion-MNIST from Debian's dataset-fashion-mnist package."""

import json
from pathlib import Path

import pytest

from conftest import run_cli

DEBIAN = Path("/usr/share/datasets/fashion-mnist")

pytestmark = pytest.mark.skipif(not (DEBIAN / "train-images-idx3-ubyte.gz").is_file(),
                                reason="apt-get install dataset-fashion-mnist to run this test")


@pytest.mark.slow
def test_fashion_mnist_training_beats_the_untrained_model(tmp_path):
    common = ["dataset=fashion_mnist", f"dataset.root={tmp_path / 'empty'}",
              "dataset.download=false", "dataset.train_size=12000", "dataset.test_size=2000",
              "trainer.progress=false", "device=cpu"]
    run_cli([*common, "trainer.epochs=0", f"hydra.run.dir={tmp_path / 'untrained'}"], tmp_path)
    proc = run_cli([*common, "trainer.epochs=2", f"hydra.run.dir={tmp_path / 'trained'}"],
                   tmp_path)
    assert str(DEBIAN) in proc.stderr              # found in Debian's folder
    untrained = json.loads((tmp_path / "untrained" / "metrics.json").read_text())
    trained = json.loads((tmp_path / "trained" / "metrics.json").read_text())
    assert 500 < untrained["test_loss"] < 600      # ~784 * log 2 for a fresh decoder
    # Two short epochs reach well below it (the classic example ends near 240 after 10 full ones).
    assert trained["test_loss"] < 0.6 * untrained["test_loss"], (trained, untrained)
    assert trained["test_kl"] > 5
