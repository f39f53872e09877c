"""``experiment=``: the named presets that reproduce a result of the docs. Each preset composes
and passes the checks; composed, it equals the configuration of the command (or script) that
made the documented number, parsed from the docs and scripts themselves, so the two cannot
drift; its header names that number, which must stand in the docs; a key of a preset can be
overridden; a sweep preset expands to the documented runs; two presets train for real on a
small fixture; an unknown name is Hydra's one line."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from conftest import write_mnist_like
from vae_train.config import validate
from vae_train.train import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]
DOCS, SCRIPTS = ROOT / "docs", ROOT / "scripts"
PRESETS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
# Keys that do not change a documented number (display, downloading, naming, bookkeeping).
NEUTRAL = {"trainer.progress", "dataset.download", "tags", "notes", "overwrite"}


# -- the docs' and scripts' commands ----------------------------------------------------------
def code_blocks(text: str) -> list[str]:
    """The bodies of the shell code blocks (```bash, ```sh or plain ```) of a page."""
    blocks, body, lang = [], None, None
    for line in text.splitlines():
        if line.startswith("```"):
            if body is None:
                body, lang = [], line[3:].strip()
            else:
                if lang in ("", "bash", "sh"):
                    blocks.append("\n".join(body))
                body = None
        elif body is not None:
            body.append(line)
    return blocks


def doc_commands(doc: str) -> list[str]:
    """Every ``python -m vae_train ...`` training command of a docs page: from its fenced
    blocks (continuation lines joined, a commented-out command included, ``NAME="..."``
    variables of the block substituted) and from inline code."""
    text = (DOCS / doc).read_text()
    commands = []
    for block in code_blocks(text):
        lines = [re.sub(r"^#\s+", "", line.strip()) for line in block.splitlines()]
        joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
        variables = dict(re.findall(r'^(\w+)="([^"]*)"', joined, flags=re.M))
        for line in joined.splitlines():
            for name, value in variables.items():
                line = line.replace(f"${name}", value)
            line = re.sub(r"^(nice -n \d+ |export \S+ )", "", line.split(" # ")[0].strip())
            if re.match(r"python -m vae_train(\s|$)", line):
                commands.append(line)
    commands += re.findall(r"`(python -m vae_train(?:\s[^`]*)?)`", text)
    return commands


def doc_command(doc: str, *needles: str) -> list[str]:
    """The overrides of the one training command of ``doc`` that holds every needle."""
    found = {c for c in doc_commands(doc) if all(n in shlex.split(c) for n in needles)}
    assert len(found) == 1, f"{doc}: {len(found)} commands hold {needles}: {found}"
    return [a for a in shlex.split(found.pop())[3:] if a != "-m"]


def script_call(script: str) -> list[str]:
    """The arguments docs/results.md gives ``bash scripts/<script>`` for its table."""
    text = (DOCS / "results.md").read_text()
    (line,) = set(re.findall(rf"bash scripts/{re.escape(script)} ([^\n`]*)", text))
    return shlex.split(line)


def bash_array(text: str, name: str) -> list[str]:
    return shlex.split(re.search(rf"^{name}=\((.*)\)$", text, flags=re.M).group(1))


def results_row(name: str) -> list[str]:
    """scripts/results.sh's training command of one row of the Results table."""
    text = (SCRIPTS / "results.sh").read_text()
    epochs = script_call("results.sh")[0]
    args = re.search(rf'^\s*\[{name}\]="(.*)"$', text, flags=re.M).group(1)
    args = args.replace("${paper[*]}", shlex.join(bash_array(text, "paper")))
    common = [a.replace("$epochs", epochs) for a in bash_array(text, "common")]
    return common + shlex.split(args)


def ladder_row(layers: str) -> list[str]:
    """scripts/ladder.sh's first training command (the 20-epoch copy) for ``layers``."""
    text = (SCRIPTS / "ladder.sh").read_text()
    first = script_call("ladder.sh")[1].split()[0]
    return bash_array(text, "common") + [f"model.layers={layers}", f"trainer.epochs={first}"]


def one_class_classes() -> str:
    loop = re.search(r"^for c in ([\d ]+); do", (SCRIPTS / "one_class.sh").read_text(), re.M)
    return ",".join(f"[{c}]" for c in loop.group(1).split())


# preset -> the overrides of the command that made its documented number
SOURCES = {
    "classic_vae": lambda: results_row("vae_elbo"),
    "classic_vae_k5": lambda: results_row("vae_iwae5"),
    "iwae_paper_1layer": lambda: results_row("paper_elbo"),
    "iwae_paper_1layer_k5": lambda: results_row("paper_iwae5"),
    "iwae_paper_2layer": lambda: results_row("hvae_elbo"),
    "iwae_paper_2layer_k5": lambda: results_row("hvae_iwae5"),
    "ladder_l1": lambda: ladder_row("1"),
    "ladder_l2": lambda: ladder_row("2"),
    "ladder_l4": lambda: ladder_row("4"),
    "ladder_layers_sweep": lambda: ladder_row(",".join(script_call("ladder.sh")[0].split())),
    "ladder_l2_precision": lambda: doc_command("results.md", "model.merge=precision"),
    "ladder_l4_kl_balance": lambda: doc_command("results.md", "loss.kl_balance=true"),
    "mlp_vae_fashion_mnist": lambda: doc_command("results.md", "model=vae", "trainer.epochs=10",
                                                 "dataset=fashion_mnist"),
    "conv_vae_fashion_mnist": lambda: doc_command("results.md", "model=conv_vae",
                                                  "trainer.epochs=10"),
    "dsprites_beta_sweep": lambda: doc_command("evaluate.md", "dataset=dsprites",
                                                   "dataset.num_train=50000"),
    "fid_vae": lambda: doc_command("evaluate.md", "model=vae", "dataset.train_size=12000"),
    "fid_conv_vae": lambda: doc_command("evaluate.md", "model=conv_vae",
                                        "dataset.train_size=12000"),
    "fid_vqvae": lambda: doc_command("evaluate.md", "model=vqvae", "dataset.train_size=12000"),
    "vqvae_fashion_mnist": lambda: doc_command("models.md", "model=vqvae", "model.prior_epochs=5"),
    "gumbel_vae": lambda: doc_command("models.md", "model=gumbel_vae", "trainer.epochs=15"),
    # the table's second row is the first command with model.hard=true
    "gumbel_vae_hard": lambda: [*doc_command("models.md", "model=gumbel_vae", "trainer.epochs=15"),
                                "model.hard=true"],
    "aae_mixture": lambda: doc_command("models.md", "model=aae", "model.prior=mixture",
                                       "dataset=fashion_mnist"),
    "m2_100_labels": lambda: doc_command("models.md", "model=m2", "trainer.epochs=33"),
    "one_class_fashion_mnist": lambda: [
        a.replace("[$c]", one_class_classes()) if a.startswith("dataset.exclude_classes") else a
        for a in doc_command("score.md", "dataset.exclude_classes=[$c]")],
    "sines_glitches": lambda: doc_command("score.md", "model=rnn_vae", "dataset.glitches=0.1"),
}


# -- composing ---------------------------------------------------------------------------------
def compose_train(overrides, hydra=False):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=hydra)


def flat(node, prefix=""):
    """{dotted key: value} of a plain container, NEUTRAL keys left out."""
    out = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if key in NEUTRAL:
            continue
        out.update(flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def split_sweep(overrides):
    """(plain overrides, {key: [values as override strings]}) of a command line; hydra.*
    keys and NEUTRAL keys dropped."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    plain, sweeps = [], {}
    for o, text in zip(parsed, overrides):
        key = o.key_or_group
        if key.startswith("hydra") or key in NEUTRAL:
            continue
        if o.is_sweep_override():
            sweeps[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
        else:
            plain.append(text)
    return plain, sweeps


def preset_grid(name, extra=()):
    """The jobs a sweep over the preset launches: Hydra's BasicSweeper on its params."""
    parser = OverridesParser.create()
    fixed = [o for o in extra if not parser.parse_override(o).is_sweep_override()]
    cfg = compose_train([f"experiment={name}", *fixed], hydra=True)
    params = cfg.hydra.sweeper.params or {}
    lines = [f"{k}={v}" for k, v in params.items()] + list(extra)
    (batch,) = BasicSweeper.split_arguments(parser.parse_overrides(lines), None)
    return [[j for j in job if j.split("=")[0] in params] for job in batch]


def header(name):
    """The preset's leading comment as {field: [values]} (Reproduces, Reported, ...)."""
    fields, last = {}, None
    for line in (Path(CONFIG_DIR) / "experiment" / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        m = re.match(r"# (Reproduces|Reported|CPU time|Run|Then): (.*)", line)
        if m:
            last = m.group(1)
            fields.setdefault(last, []).append(m.group(2))
        elif last in ("Reproduces", "Reported") and not line.startswith("# @"):
            fields[last][-1] += " " + line[2:]
            if not line[2:].strip():
                last = None
        else:
            last = None
    return fields


def slug(heading: str) -> str:
    """The anchor MkDocs (python-markdown's toc) gives a heading."""
    text = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


# -- the tests ---------------------------------------------------------------------------------
def test_every_preset_has_its_source_and_the_issue_asks_for_are_there():
    assert set(PRESETS) == set(SOURCES)
    assert {"iwae_paper_1layer", "iwae_paper_1layer_k5", "iwae_paper_2layer",
            "iwae_paper_2layer_k5", "dsprites_beta_sweep", "vqvae_fashion_mnist",
            "one_class_fashion_mnist", "ladder_l1", "ladder_l2", "ladder_l4"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_a_preset_composes_passes_the_checks_and_equals_the_documented_command(name):
    cfg = compose_train([f"experiment={name}"])
    validate(cfg)
    assert list(cfg.tags) == ["experiment", name]
    plain, sweeps = split_sweep(SOURCES[name]())
    grid = preset_grid(name)
    # the swept keys and their values are the documented ones, in the documented order
    expected = [list(job) for job in BasicSweeper.split_arguments(
        OverridesParser.create().parse_overrides(
            [f"{k}={','.join(v.split('=', 1)[1] for v in vals)}" for k, vals in sweeps.items()]),
        None)[0]] if sweeps else [[]]
    assert sorted(map(sorted, grid)) == sorted(map(sorted, expected)), (grid, expected)
    # every job of the preset composes to the documented command's job, key for key
    for job in grid[:1] + grid[1:][-1:]:     # the first and the last job (the grid is checked)
        ours = flat(OmegaConf.to_container(compose_train([f"experiment={name}", *job]),
                                           resolve=True))
        theirs = flat(OmegaConf.to_container(compose_train([*plain, *job]), resolve=True))
        diff = {k: (ours.get(k), theirs.get(k)) for k in ours.keys() | theirs.keys()
                if ours.get(k) != theirs.get(k)}
        assert not diff, f"{name} {job}: preset vs docs {diff}"


@pytest.mark.parametrize("name", PRESETS)
def test_the_header_names_the_docs_section_the_number_and_the_command(name):
    fields = header(name)
    assert set(fields) >= {"Reproduces", "Reported", "CPU time", "Run"}, fields
    (where,) = re.findall(r"docs/([\w-]+\.md)#([\w-]+)", fields["Reproduces"][0])[:1]
    doc = (DOCS / where[0]).read_text()
    anchors = {slug(h) for h in re.findall(r"^#+ (.*)$", doc, flags=re.M)}
    assert where[1] in anchors, f"{name}: no heading #{where[1]} in docs/{where[0]}"
    numbers = re.findall(r"\d[\d,]*\.\d+", fields["Reported"][0])
    assert numbers, fields["Reported"]
    for number in numbers:
        assert number in doc, f"{name}: reported {number} is not in docs/{where[0]}"
    sweep = bool(compose_train([f"experiment={name}"], hydra=True).hydra.sweeper.params)
    run = f"python -m vae_train {'-m ' if sweep else ''}experiment={name}"
    assert fields["Run"] == [run]
    page = (DOCS / "experiments.md").read_text()
    for line in (run, *fields.get("Then", [])):
        assert line in page, f"docs/experiments.md lacks {line!r}"


def test_experiments_page_lists_only_presets_that_exist():
    named = set(re.findall(r"experiment=(\w+)", (DOCS / "experiments.md").read_text()))
    assert named - {"mine", "my_result"} <= set(PRESETS) and set(PRESETS) <= named


def table_cell(doc, row_start, column):
    """One cell (``**`` stripped) of the docs table row that starts with ``row_start``."""
    text = (DOCS / doc).read_text()
    (row,) = [line for line in text.splitlines() if line.startswith(row_start)]
    return row.strip("|").split("|")[column].strip().strip("*")


RESULTS_ROWS = {"classic_vae": "vae_elbo", "classic_vae_k5": "vae_iwae5",
                "iwae_paper_1layer": "paper_elbo", "iwae_paper_1layer_k5": "paper_iwae5",
                "iwae_paper_2layer": "hvae_elbo", "iwae_paper_2layer_k5": "hvae_iwae5"}


@pytest.mark.parametrize("name", sorted(RESULTS_ROWS))
def test_a_results_row_preset_reports_that_rows_nll(name):
    nll = table_cell("results.md", f"| `{RESULTS_ROWS[name]}` |", 5)
    assert header(name)["Reported"][0].startswith(f"test NLL {nll} nats (k=1000)")
    assert f"k={script_call('results.sh')[1]}" in header(name)["Then"][0]


@pytest.mark.parametrize("layers", ["1", "2", "4"])
def test_a_ladder_preset_reports_its_20_epoch_rows_nll(layers):
    nll = table_cell("results.md", f"| {layers} | 20 |", 5)
    assert header(f"ladder_l{layers}")["Reported"][0].startswith(f"test NLL {nll} nats")
    assert nll in header("ladder_layers_sweep")["Reported"][0]


@pytest.mark.parametrize("name,swept,jobs", [
    ("dsprites_beta_sweep", "loss.beta", ["1", "4", "16"]),
    ("ladder_layers_sweep", "model.layers", ["1", "2", "4"]),
    ("one_class_fashion_mnist", "dataset.exclude_classes", [f"[{c}]" for c in range(10)]),
])
def test_a_sweep_preset_expands_to_the_documented_runs(name, swept, jobs):
    assert preset_grid(name) == [[f"{swept}={j}"] for j in jobs]
    narrowed = f"{swept}={jobs[0]},{jobs[-1]}"   # a row given on the command line replaces it
    assert preset_grid(name, [narrowed]) == [[f"{swept}={jobs[0]}"], [f"{swept}={jobs[-1]}"]]


def test_a_presets_keys_and_groups_can_be_overridden_on_the_command_line():
    cfg = compose_train(["experiment=iwae_paper_1layer", "trainer.epochs=1", "model.latent_dim=8",
                         "dataset.binarize=static", "loss=iwae", "tags=[mine]"])
    assert cfg.trainer.epochs == 1 and cfg.model.latent_dim == 8
    assert cfg.dataset.binarize == "static" and cfg.loss.k == 5 and list(cfg.tags) == ["mine"]
    assert list(cfg.model.hidden_dims) == [200, 200] and cfg.model.activation == "tanh"
    cfg = compose_train(["experiment=iwae_paper_1layer", "model=hvae", "dataset=synthetic"])
    assert cfg.model._target_.endswith(".HVAE") and cfg.dataset.name == "synthetic"
    cfg = compose_train(["experiment=dsprites_beta_sweep", "device=auto"])
    assert cfg.device.type == "auto"


def test_a_preset_of_your_own_is_found_through_the_searchpath(tmp_path):
    """docs/experiments.md's recipe: conf/experiment/my_result.yaml given by hydra.searchpath."""
    page = (DOCS / "experiments.md").read_text()
    yaml = re.search(r"```yaml\n(# @package _global_\ndefaults:\n.*?)```", page, re.S).group(1)
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "my_result.yaml").write_text(yaml)
    cfg = compose_train([f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
                         "experiment=my_result"])
    validate(cfg)
    assert cfg.model._target_.endswith(".ConvVAE") and cfg.model.latent_dim == 32
    assert cfg.trainer.epochs == 30 and list(cfg.tags) == ["experiment", "my_result"]


def run_main(argv, monkeypatch, tmp_path, capsys):
    """``python -m vae_train ARGV`` in this process (as test_launchers does)."""
    from vae_train import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["vae-train", *argv])
    code = 0
    try:
        train.main()
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_an_unknown_experiment_is_hydras_one_line(monkeypatch, tmp_path, capsys):
    code, err = run_main(["experiment=iwae_paper_9layer"], monkeypatch, tmp_path, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "Could not find 'experiment/iwae_paper_9layer'" in err
    assert "iwae_paper_1layer" in err                 # the available presets are listed
    assert "Traceback" not in err and not list(tmp_path.glob("outputs/**/metrics.json"))


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory):
    """An IDX fixture where dataset=fashion_mnist looks for its files."""
    root = tmp_path_factory.mktemp("data")
    write_mnist_like(root / "FashionMNIST" / "raw", 300, 100)
    return root


def small(root):
    return [f"dataset.root={root}", "dataset.download=false", "dataset.val_size=60",
            "trainer.epochs=1", "trainer.progress=false", "trainer.image_every_epochs=0",
            "device=cpu"]


def test_iwae_paper_2layer_k5_trains_a_tiny_run_with_its_settings(fmnist_root, monkeypatch,
                                                                   tmp_path, capsys):
    run = tmp_path / "run"
    code, err = run_main(["experiment=iwae_paper_2layer_k5", *small(fmnist_root),
                          "dataset.train_size=200", f"hydra.run.dir={run}"],
                         monkeypatch, tmp_path, capsys)
    assert code in (0, None), err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epoch"] == 1 and metrics["test_loss"] > 0
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert cfg.model._target_.endswith(".HVAE") and cfg.loss.k == 5
    assert cfg.dataset.binarize == "dynamic" and cfg.trainer.batch_size == 128
    assert list(cfg.tags) == ["experiment", "iwae_paper_2layer_k5"]


def test_the_one_class_sweep_trains_each_held_out_class_and_its_follow_up_scores(
        fmnist_root, monkeypatch, tmp_path, capsys, call):
    sweep = tmp_path / "sweep"
    code, err = run_main(["-m", "experiment=one_class_fashion_mnist", *small(fmnist_root),
                          "dataset.train_size=120", "dataset.exclude_classes=[3],[8]",
                          f"hydra.sweep.dir={sweep}"], monkeypatch, tmp_path, capsys)
    assert code in (0, None), err
    for num, c in enumerate((3, 8)):
        run = sweep / f"{num}_dataset.exclude_classes=[{c}]"
        assert json.loads((run / "metrics.json").read_text())["epoch"] == 1
        assert list(OmegaConf.load(run / ".hydra" / "config.yaml").dataset.exclude_classes) == [c]
    # the docs' follow-up command, for job 1 (the full sweep's job c holds out class c)
    (then,) = header("one_class_fashion_mnist")["Then"]
    score = re.search(r'python -m vae_train\.score ("run=[^"]+") statistic=\$s ("anomalies=[^"]+")',
                      then)
    args = [a.replace("<sweep dir>", str(sweep)).replace("${c}", "1").replace("$c", "8")
            for a in shlex.split(" ".join(score.groups()))]
    call("vae_train.score", [*args, "statistic=recon_error", "progress=false", "plot=false",
                             "device=cpu"])
    result = json.loads((sweep / "1_dataset.exclude_classes=[8]" / "score" /
                         "recon_error.json").read_text())
    assert result["anomalies"] == [8] and 0 <= result["auroc"] <= 1


@pytest.mark.parametrize("preset", ["experiment=dsprites_beta_sweep", "sweep=beta"])
def test_a_sweep_preset_without_m_is_refused_in_one_line(preset):
    from vae_train import launchers
    from vae_train.errors import UserError

    with pytest.raises(UserError, match=rf"{preset} is a sweep .*add -m"):
        launchers.check([preset])
    launchers.check(["-m", preset])   # with -m it runs
