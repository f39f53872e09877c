"""``python -m vae_train.report <sweep dir> [x=loss.beta] [lines=model.latent_dim] [out=DIR]``
(a Hydra app: options and defaults in ``configs/commands/report.yaml``; ``--help`` lists
them).

Turns a sweep directory into a result that accounts for every job Hydra launched. The sweep's
``multirun.yaml`` (Hydra writes it at the top of the sweep directory) holds the command line
and the sweeper's ``params``; expanded as Hydra's basic sweeper does, they give each job's
overrides, number and directory name (``<num>_<override_dirname>``). Each job is then found by
its directory name, or by its overrides (a renamed folder), and has one status:

* ``ok``          ``metrics.json`` holds its results (``eval.json`` too, where ``evaluate`` ran);
* ``failed``      ``failed.json``, or a ``metrics.json`` that says the training diverged;
* ``corrupt``     ``metrics.json`` is not a JSON object (truncated, damaged, unreadable);
* ``running``     no results yet, and its ``.lock`` names a live process of this host;
* ``unknown``     no results, locked by a process of another host (this host cannot tell);
* ``unfinished``  no results and no live owner: killed or stopped (resume it);
* ``missing``     no directory: deleted, or the job never started.

Sweeps whose jobs are chosen as they run (``search=optuna`` and other sweepers) cannot be
expanded: the report lists the runs it finds and says so, as it does without a
``multirun.yaml``. Written into the sweep directory (or ``out=``):

* ``report.csv``   one row per job: status, the swept values, every metric (``eval_*`` from
                   ``eval.json``), the run's ``tags`` and ``notes``, what is known of a job
                   without results;
* ``report.md``    the same as a table (with tags and notes columns when a run has them),
                   the jobs without results with their reasons, and the plots;
* ``metrics.png``  each metric against the x key (``loss.beta`` when it was swept), one line per
                   value of the other swept keys (for a beta x latent-size sweep: per latent size);
* ``rate_distortion.png``  every run as a point in the plane of KL (rate, nats) against
                   reconstruction loss (distortion, nats), labelled with its swept values.

With ``tag=T`` only the runs tagged ``T`` are reported, into ``report_T.csv``, ``report_T.md``,
``metrics_T.png`` and ``rate_distortion_T.png``: the full report's files are left as they are.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
import shlex
import socket
import sys
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from vae_train.checks import optional
from vae_train.errors import UserError
from vae_train.options import KEY, PATH, check_options, check_output
from vae_train.runs import hydra_app

USAGE = ("usage: python -m vae_train.report <sweep dir> [x=KEY] [lines=KEY] [out=DIR] [tag=TAG] "
         "(--help explains them)")
CHECKS = {"sweep": PATH, "out": optional(PATH, "null (the sweep directory) or a path"),
          "x": optional(KEY, "null or a swept key"), "lines": optional(KEY, "null or a swept key")}

# Metrics plotted (when present), in this order.
PLOTTED = ["test_loss", "test_recon", "test_kl", "eval_nll", "eval_active_units", "eval_mig",
           "eval_factorvae_metric", "test_error", "test_perplexity", "test_disc_acc"]
NOT_METRICS = {"history", "device", "precision"}
# Every status a job can have, in the order the summary counts them.
STATUSES = ("ok", "failed", "unfinished", "running", "unknown", "corrupt", "missing")
SUMMARY_WORDS = {"ok": "finished"}
MISSING = "directory missing: deleted, or the job never started"
MULTIRUN = "multirun.yaml"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
DEFAULT_SUBDIR = "${hydra.job.num}_${hydra.job.override_dirname}"
# A grid larger than this is not expanded (a damaged multirun.yaml must not exhaust memory).
MAX_JOBS = 100_000
# A results file larger than this is not read (metrics.json of a long run is a few MB).
MAX_JSON_BYTES = 256 * 2**20


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _number(text: str):
    """'4' -> 4, '0.5' -> 0.5, 'vae' -> 'vae'."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _read_json(path: Path) -> tuple[object, str | None]:
    """(the parsed content, None), or (None, why it cannot be read) for a file that exists."""
    if path.is_dir():
        return None, "is a folder, not a file"
    if not path.is_file():              # a device, a pipe: reading it might never end
        return None, "is not a regular file"
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            return None, f"is larger than {MAX_JSON_BYTES // 2**20} MB (damaged)"
        text = path.read_text()
    except IsADirectoryError:
        return None, "is a folder, not a file"
    except UnicodeDecodeError:
        return None, "is not text (damaged)"
    except OSError as e:
        return None, f"cannot be read ({e.strerror or e})"
    if not text.strip():
        return None, "is empty (truncated: the job was killed while writing it, or the disk " \
                     "was full)"
    try:
        return json.loads(text), None
    except ValueError as e:
        where = f"{e.msg}, line {e.lineno} column {e.colno}" if hasattr(e, "msg") else str(e)
        return None, f"is not valid JSON ({where}): truncated or damaged"


def _parse_overrides(items) -> dict:
    """``key=value`` strings -> {key: value}, the key without Hydra's ``+``/``++``/``~``."""
    out = {}
    for item in items:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = _number(value)
    return out


# -- the jobs Hydra launched -------------------------------------------------------------------
@dataclass
class Job:
    num: int
    overrides: list[str]        # as Hydra passed them to the job (its .hydra/overrides.yaml)
    dirname: str | None         # its folder, relative to the sweep directory (None: unknown)


class NotExpanded(Exception):
    """The sweep's jobs cannot be listed from multirun.yaml (the reason is the message)."""


def _raw(tree: dict, key: str, default=None):
    """A value of multirun.yaml (``tree``: its content as written, interpolations such as
    ``${now:...}`` unresolved) by its dotted key."""
    node = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _grid(params: list[str]) -> tuple[list[tuple[str, list[str]]], bool]:
    """Each override of the command line as (key_or_group, the job strings it gives), in the
    order and with the later-wins rule of Hydra's basic sweeper; and whether any sweep is
    shuffled (job numbers then unknown)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import RangeSweep

    try:
        parsed = OverridesParser.create().parse_overrides(params)
    except Exception as e:  # noqa: BLE001 - Hydra's parser: any message of its own
        raise NotExpanded(f"its overrides cannot be parsed ({_first_line(e)})") from None
    rows: OrderedDict[str, tuple[str, list[str]]] = OrderedDict()
    shuffled = False
    for o in parsed:
        key = o.get_key_element()
        if not o.is_sweep_override():
            rows[key] = (o.key_or_group, [f"{key}={o.get_value_element_as_str()}"])
            continue
        if not o.is_discrete_sweep():
            raise NotExpanded(f"{o.input_line} is not a list of values (the basic sweeper "
                              "cannot have run it)")
        value = o.value()
        if isinstance(value, RangeSweep):
            try:
                size = max(0, math.ceil((value.stop - value.start) / value.step))
            except (TypeError, ValueError, ZeroDivisionError, OverflowError):
                raise NotExpanded(f"{o.input_line} is not a range it can count") from None
            if size > MAX_JOBS:
                raise NotExpanded(f"{o.input_line} has {size} values (more than {MAX_JOBS})")
        shuffled |= bool(getattr(value, "shuffle", False))
        try:
            strings = [f"{key}={v}" for v in o.sweep_string_iterator()]
        except Exception as e:  # noqa: BLE001 - glob(...) needs Hydra's config loader
            raise NotExpanded(f"{o.input_line} cannot be expanded here "
                              f"({_first_line(e)})") from None
        rows[key] = (o.key_or_group, strings)
    return list(rows.values()), shuffled


def _dirname(num: int, job: list[str], keys: list[str], settings: dict, subdir) -> str | None:
    """The folder Hydra gives job ``num``: ``hydra.sweep.subdir`` with ``hydra.job.num`` and
    ``hydra.job.override_dirname`` (the job's overrides but the excluded keys, sorted, joined;
    as Hydra's config loader makes it)."""
    lines = sorted(s for s, key in zip(job, keys) if key not in settings["exclude_keys"])
    try:
        override_dirname = re.sub("[=]", settings["kv_sep"], settings["item_sep"].join(lines))
    except re.error:             # a separator Hydra could not have used either
        return None
    if subdir == DEFAULT_SUBDIR:
        return f"{num}_{override_dirname}"
    if not isinstance(subdir, str):
        return None
    try:
        mini = OmegaConf.create({"hydra": {"job": {"num": num, "id": num,
                                                   "override_dirname": override_dirname}},
                                 "subdir": subdir})
        return str(mini.subdir)
    except Exception:  # noqa: BLE001 - a template naming other keys: matched by overrides
        return None


def expected_jobs(sweep: Path) -> list[Job]:
    """The jobs Hydra launched into ``sweep``, from its ``multirun.yaml``; :class:`NotExpanded`
    (why) when they cannot be known from it."""
    path = sweep / MULTIRUN
    if not path.is_file():
        raise NotExpanded(f"there is no {MULTIRUN} in {sweep}" if not path.exists()
                          else f"{MULTIRUN} is not a file")
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise NotExpanded(f"{MULTIRUN} is larger than {MAX_JSON_BYTES // 2**20} MB (damaged)")
        cfg = OmegaConf.load(path)
    except NotExpanded:
        raise
    except Exception as e:  # noqa: BLE001 - damaged YAML: any of the parser's errors
        raise NotExpanded(f"{MULTIRUN} cannot be read ({_first_line(e)})") from None
    tree = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_dict(cfg) else None
    if not isinstance(tree, dict) or not isinstance(tree.get("hydra"), dict):
        raise NotExpanded(f"{MULTIRUN} holds no hydra: section")
    sweeper = _raw(tree, "hydra.sweeper._target_")
    if sweeper != BASIC_SWEEPER:
        raise NotExpanded(f"the sweep was run by {sweeper or 'an unknown sweeper'}, which "
                          "chooses its jobs as it runs (a search), so the jobs it launched "
                          "cannot be listed from " + MULTIRUN)
    task = _raw(tree, "hydra.overrides.task", [])
    params = _raw(tree, "hydra.sweeper.params") or {}
    if not isinstance(task, list) or not isinstance(params, dict):
        raise NotExpanded(f"{MULTIRUN}: hydra.overrides.task or hydra.sweeper.params is damaged")
    rows, shuffled = _grid([f"{k}={v}" for k, v in params.items()] + [str(t) for t in task])
    total = math.prod(len(strings) for _, strings in rows)
    if total > MAX_JOBS:
        raise NotExpanded(f"its grid has {total} jobs (more than {MAX_JOBS})")
    settings = _raw(tree, "hydra.job.config.override_dirname")
    settings = {"exclude_keys": [], "kv_sep": "=", "item_sep": ",",
                **(settings if isinstance(settings, dict) else {})}
    if not (isinstance(settings["exclude_keys"], list) and isinstance(settings["kv_sep"], str)
            and isinstance(settings["item_sep"], str)):
        raise NotExpanded(f"{MULTIRUN}: hydra.job.config.override_dirname is damaged")
    settings["exclude_keys"] = {str(k) for k in settings["exclude_keys"]}
    subdir = None if shuffled else _raw(tree, "hydra.sweep.subdir")
    keys = [key for key, _ in rows]
    return [Job(num, list(job), _dirname(num, list(job), keys, settings, subdir))
            for num, job in enumerate(itertools.product(*(s for _, s in rows)))]


# -- what is known of a job --------------------------------------------------------------------
def _lock_state(run_dir: Path) -> tuple[str, str] | None:
    """(status, text) from the job's ``.lock`` (vae_train.lock: pid, host, started), or None
    when it has none or names no owner."""
    from vae_train.lock import owner_alive

    lock = run_dir / ".lock"
    if not lock.exists():
        return None
    owner, _ = _read_json(lock)
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
        return None
    pid, host, since = owner.get("pid"), owner.get("host"), owner.get("started", "?")
    here = socket.gethostname()
    if host == here:
        if owner_alive(owner, here):
            return "running", f"running: process {pid} since {since}"
        return None
    return "unknown", (f"no results yet; locked by process {pid} on host {host} since {since}: "
                       "running there, or killed (this host cannot tell)")


def _unfinished(run_dir: Path) -> str:
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return ("killed or stopped: no metrics.json; resume with python -m vae_train "
                f"resume={shlex.quote(str(run_dir))}")
    return ("killed or stopped before its first checkpoint: no metrics.json and nothing to "
            "resume; run the job again")


def labels_of(run_dir: Path, metrics) -> tuple[list[str], str]:
    """The run's tags and notes: from ``metrics.json`` (a finished run), else from its
    composed config (``.hydra/config.yaml``: a failed or unfinished run); none when neither
    has them."""
    source = metrics if isinstance(metrics, dict) and "tags" in metrics else None
    if source is None:
        config = run_dir / ".hydra" / "config.yaml"
        try:
            if config.is_file() and config.stat().st_size <= MAX_JSON_BYTES:
                loaded = OmegaConf.load(config)
                source = {k: OmegaConf.select(loaded, k, default=None) for k in ("tags", "notes")}
                source = OmegaConf.to_container(OmegaConf.create(source))
        except Exception:  # noqa: BLE001 - damaged YAML: the run's labels are unknown
            source = None
    source = source or {}
    tags = source.get("tags")
    tags = [str(t) for t in tags] if isinstance(tags, list) else \
        ([str(tags)] if isinstance(tags, (str, int, float)) and str(tags) else [])
    notes = source.get("notes")
    return tags, "" if notes is None else str(notes)


def read_run(sweep: Path, run_dir: Path) -> dict:
    """One job's record from its folder: status, overrides, metrics, tags and notes, error
    (or note)."""
    overrides, note = {}, []
    ov_file = run_dir / ".hydra" / "overrides.yaml"
    if ov_file.is_file():
        try:
            items = OmegaConf.to_container(OmegaConf.load(ov_file))
            overrides = _parse_overrides(items if isinstance(items, list) else [])
        except Exception:  # noqa: BLE001 - damaged YAML: the sweep's own record is used
            note.append(".hydra/overrides.yaml is unreadable")
    rec = {"run": str(run_dir.relative_to(sweep)), "job": "", "overrides": overrides,
           "metrics": {}, "status": "unfinished", "error": "", "note": note}
    metrics = None
    if (run_dir / "metrics.json").exists():
        metrics, why = _read_json(run_dir / "metrics.json")
        if why is None and not isinstance(metrics, dict):
            why = f"holds a {type(metrics).__name__}, not an object of metrics (damaged)"
        if why is not None:
            rec["status"], rec["error"] = "corrupt", f"metrics.json {why}"
        elif metrics.get("status") == "failed":                  # stopped on NaN/Inf
            rec["status"] = "failed"
            rec["error"] = (str(metrics.get("error", "")).splitlines() or ["failed"])[0]
        else:
            rec["status"] = "ok"
            rec["metrics"].update({k: v for k, v in metrics.items()
                                   if k not in NOT_METRICS and _is_scalar(v)})
            if (run_dir / "eval.json").exists():
                ev, why = _read_json(run_dir / "eval.json")
                if why is None and not isinstance(ev, dict):
                    why = f"holds a {type(ev).__name__}, not an object"
                if why is not None:
                    note.append(f"eval.json {why}: no eval_* columns")
                else:
                    rec["metrics"].update({f"eval_{k}": v for k, v in ev.items()
                                           if _is_scalar(v)
                                           and k not in ("n", "seconds", "epoch", "k")})
    elif (run_dir / "failed.json").exists():
        failed, why = _read_json(run_dir / "failed.json")
        rec["status"] = "failed"
        if why is None and isinstance(failed, dict):
            rec["error"] = (str(failed.get("error", "")).splitlines() or ["failed"])[0]
        else:
            rec["error"] = f"failed.json {why or 'is damaged'}; the reason is lost"
    else:
        state = _lock_state(run_dir)
        if state is not None:
            rec["status"], rec["error"] = state
        else:
            rec["error"] = _unfinished(run_dir)
    rec["tags"], rec["notes"] = labels_of(run_dir, metrics)
    return rec


def _found_runs(sweep: Path) -> dict[str, Path]:
    """Every run folder under ``sweep`` (one with ``.hydra/``), by its path relative to it."""
    return {str(h.parent.relative_to(sweep)): h.parent for h in sorted(sweep.rglob(".hydra"))
            if h.is_dir() and h.parent != sweep}


def _same_job(job: dict, run: dict) -> bool:
    return all(run.get(k) == v for k, v in job.items())


def collect(sweep: Path) -> tuple[list[dict], list[str]]:
    """One record per job Hydra launched (from ``multirun.yaml``), in job order, then the
    runs found that it does not list; and notes for the report on how they were found."""
    found = _found_runs(sweep)
    try:
        jobs = expected_jobs(sweep)
    except NotExpanded as e:
        notes = [f"The jobs Hydra launched cannot be listed: {e}. Listed are the {len(found)} "
                 "run folders found; a job whose folder is gone, or that never started, does "
                 "not appear."]
        return [read_run(sweep, path) for path in found.values()], notes
    records, used = [], set()
    read = {}

    def record_of(rel: str) -> dict:
        if rel not in read:
            read[rel] = read_run(sweep, found[rel]) if rel in found \
                else read_run(sweep, sweep / rel)
        return read[rel]

    # First by the folder Hydra named, then (a folder renamed, or named by another template)
    # by the overrides the job was given: a resumed run's record holds more keys, never others.
    chosen: dict[int, str] = {}
    for job in jobs:
        if job.dirname is not None and job.dirname not in used and (
                job.dirname in found or (sweep / job.dirname).is_dir()):
            chosen[job.num] = job.dirname
            used.add(job.dirname)
    left = [r for r in found if r not in used]
    for job in jobs:
        if job.num not in chosen and left:
            expected = _parse_overrides(job.overrides)
            rel = next((r for r in left if _same_job(expected, record_of(r)["overrides"])),
                       None)
            if rel is not None:
                chosen[job.num] = rel
                used.add(rel)
                left.remove(rel)
    for job in jobs:
        expected = _parse_overrides(job.overrides)
        if job.num in chosen:
            rec = dict(record_of(chosen[job.num]))
            rec["overrides"] = {**expected, **rec["overrides"]}
        else:
            rec = {"run": job.dirname or f"job {job.num}", "overrides": expected,
                   "metrics": {}, "status": "missing", "error": MISSING, "note": [],
                   "tags": [], "notes": ""}
        rec["job"] = job.num
        records.append(rec)
    extra = [r for r in found if r not in used]
    for rel in extra:
        rec = record_of(rel)
        rec["note"] = [*rec["note"], f"not one of the {len(jobs)} jobs {MULTIRUN} lists "
                       "(another sweep into the same folder?)"]
        records.append(rec)
    notes = [f"{len(jobs)} jobs launched (from `{MULTIRUN}`)"
             + (f", and {len(extra)} run folders it does not list" if extra else "") + "."]
    return records, notes


def _is_scalar(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def swept_keys(runs: list[dict]) -> list[str]:
    """Keys whose value differs between runs, in command-line order (``tags`` and ``notes``
    aside: they are the report's own columns)."""
    values: dict[str, set] = defaultdict(set)
    order: list[str] = []
    for r in runs:
        for k, v in r["overrides"].items():
            if k.startswith("hydra") or k in ("dataset.root", "resume", "tags", "notes"):
                continue
            values[k].add(str(v))
            if k not in order:
                order.append(k)
    return [k for k in order if len(values[k]) > 1 or any(k not in r["overrides"] for r in runs)]


def _sort_key(run: dict, keys: list[str]):
    return [(0, v, "") if isinstance(v := run["overrides"].get(k), (int, float)) else (1, 0, str(v))
            for k in keys]


def summary(runs: list[dict]) -> str:
    """``8 jobs: 5 finished, 1 failed, 1 unfinished, 0 running, 0 corrupt, 1 missing``."""
    counts = {st: sum(r["status"] == st for r in runs) for st in STATUSES}
    parts = [f"{n} {SUMMARY_WORDS.get(st, st)}" for st, n in counts.items()
             if n or st != "unknown"]
    return f"{len(runs)} job{'' if len(runs) == 1 else 's'}: " + ", ".join(parts)


def write_csv(runs, keys, metric_names, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "job", "status", *keys, *metric_names, "tags", "notes", "error",
                    "note"])
        for r in runs:
            w.writerow([r["run"], r["job"], r["status"],
                        *(r["overrides"].get(k, "") for k in keys),
                        *(r["metrics"].get(m, "") for m in metric_names),
                        ", ".join(r.get("tags", [])), r.get("notes", ""), r["error"],
                        "; ".join(r["note"])])


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


def _cell(text: str) -> str:
    """Free text in one Markdown table cell: one line, no column breaks."""
    return " ".join(str(text).split()).replace("|", "\\|")


def write_markdown(sweep, runs, keys, metric_names, plots, notes, path: Path) -> None:
    ok = [r for r in runs if r["status"] == "ok"]
    bad = [r for r in runs if r["status"] != "ok"]
    shown = [m for m in PLOTTED if any(m in r["metrics"] for r in ok)]
    shown += [m for m in ("best_epoch", "train_seconds") if m in metric_names]
    lines = [f"# Sweep report: {sweep}", "",
             f"{summary(runs)}. " + " ".join(notes) + " Swept: "
             + (", ".join(f"`{k}`" for k in keys) or "nothing") + ". Losses in nats per example "
             "(test split, best checkpoint); `eval_*` from `python -m vae_train.evaluate`. Every "
             "metric of every run is in `report.csv`.", ""]
    labels = [c for c in ("tags", "notes") if any(r.get(c) for r in ok)]
    header = ["run", *keys, *shown, *labels]
    lines += ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    for r in ok:
        cells = [r["run"], *(_fmt(r["overrides"].get(k, "")) for k in keys),
                 *(_fmt(r["metrics"].get(m, "")) for m in shown),
                 *(", ".join(r["tags"]) if c == "tags" else r["notes"] for c in labels)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if bad:
        lines += ["", "## Jobs without results", ""]
        lines += [f"- `{r['run']}` ({r['status']}): {r['error']}" for r in bad]
    noted = [r for r in runs if r["note"]]
    if noted:
        lines += ["", "## Notes", ""]
        lines += [f"- `{r['run']}`: {'; '.join(r['note'])}" for r in noted]
    for title, name in plots:
        lines += ["", f"## {title}", "", f"![{title}]({name})"]
    path.write_text("\n".join(lines) + "\n")


def _choose_axes(runs, keys, x, lines):
    if x is not None and x not in keys:
        raise UserError(f"x={x} was not swept; swept keys: {', '.join(keys) or 'none'}")
    if lines is not None and lines not in keys:
        raise UserError(f"lines={lines} was not swept; swept keys: {', '.join(keys) or 'none'}")
    numeric = [k for k in keys if all(isinstance(r["overrides"].get(k), (int, float))
                                      for r in runs)]
    if x is None:
        x = "loss.beta" if "loss.beta" in numeric else (numeric or keys or [None])[0]
    group = [lines] if lines else [k for k in keys if k != x]
    return x, group


def plot(runs, keys, x_key, group_keys, out: Path, suffix: str = "") -> list[tuple[str, str]]:
    """metrics<suffix>.png and rate_distortion<suffix>.png; (title, file name) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in runs if r["status"] == "ok"]
    if not ok:
        return []
    made = []
    numeric_x = x_key is not None and all(isinstance(r["overrides"].get(x_key), (int, float))
                                          for r in ok)
    groups: dict[str, list] = defaultdict(list)
    for r in ok:
        label = ", ".join(f"{k}={r['overrides'].get(k, '-')}" for k in group_keys) or "all runs"
        groups[label].append(r)
    xs_all = sorted({r["overrides"].get(x_key) for r in ok}, key=lambda v: (str(type(v)), v))
    log_x = numeric_x and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 8

    metrics = [m for m in PLOTTED if any(m in r["metrics"] for r in ok)]
    if metrics and x_key is not None:
        cols = min(3, len(metrics))
        rows = math.ceil(len(metrics) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
        for ax, m in zip(axes.flat, metrics):
            for label, rs in sorted(groups.items(), key=lambda kv: _sort_key(kv[1][0], group_keys)):
                pts = sorted(((r["overrides"].get(x_key), r["metrics"][m]) for r in rs
                              if m in r["metrics"]), key=lambda p: (str(type(p[0])), p[0]))
                if not pts:
                    continue
                px = [p[0] if numeric_x else xs_all.index(p[0]) for p in pts]
                ax.plot(px, [p[1] for p in pts], marker="o", label=label)
            ax.set_title(m)
            ax.set_xlabel(x_key)
            if log_x:
                ax.set_xscale("log")
                ax.set_xticks(xs_all, [str(v) for v in xs_all])
                ax.minorticks_off()
            elif not numeric_x:
                ax.set_xticks(range(len(xs_all)), [str(v) for v in xs_all])
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(metrics):]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        if len(labels) > 1 or group_keys:
            fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)),
                       bbox_to_anchor=(0.5, 0), fontsize="small")
        fig.suptitle(f"metrics against {x_key}" + (f", one line per {', '.join(group_keys)}"
                                                   if group_keys else ""))
        fig.tight_layout(rect=(0, 0.06 if group_keys else 0, 1, 0.96))
        fig.savefig(out / f"metrics{suffix}.png", dpi=110)
        plt.close(fig)
        made.append((f"Metrics against {x_key}", f"metrics{suffix}.png"))

    rd = [r for r in ok if "test_kl" in r["metrics"] and "test_recon" in r["metrics"]]
    if rd:
        fig, ax = plt.subplots(figsize=(6.4, 4.8))
        for label, rs in sorted(groups.items(), key=lambda kv: _sort_key(kv[1][0], group_keys)):
            rs = [r for r in rs if r in rd]
            if not rs:
                continue
            rs.sort(key=lambda r: _sort_key(r, [x_key] if x_key else []))
            line, = ax.plot([r["metrics"]["test_kl"] for r in rs],
                            [r["metrics"]["test_recon"] for r in rs], marker="o", label=label)
            for r in rs:
                if x_key is not None:
                    ax.annotate(f"{x_key.rsplit('.', 1)[-1]}={r['overrides'].get(x_key)}",
                                (r["metrics"]["test_kl"], r["metrics"]["test_recon"]),
                                textcoords="offset points", xytext=(4, 4), fontsize=7,
                                color=line.get_color())
        ax.set_xlabel("rate: KL(q(z|x) || p(z)), nats per example")
        ax.set_ylabel("distortion: -log p(x|z), nats per example")
        ax.set_title("rate-distortion plane (test split)")
        ax.grid(alpha=0.3)
        if len(groups) > 1:
            ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(out / f"rate_distortion{suffix}.png", dpi=110)
        plt.close(fig)
        made.append(("Rate-distortion plane", f"rate_distortion{suffix}.png"))
    return made


def tag_suffix(tag: str | None) -> str:
    """``_<tag>`` for the file names of a report filtered by ``tag`` (characters other than
    letters, digits, ``_ . -`` as ``_``); "" for the full report."""
    return "" if tag is None else "_" + re.sub(r"[^A-Za-z0-9_.\-]", "_", str(tag))


def report(sweep: Path | str, x=None, lines=None, out: Path | str | None = None,
           tag: str | None = None) -> dict:
    """The report of ``sweep`` (see the module); ``tag``: only the runs that carry it, written
    as ``report_<tag>.md``, ``report_<tag>.csv`` and ``<plot>_<tag>.png`` beside the full
    report's files (never over them)."""
    sweep = Path(sweep).expanduser()
    out = None if out is None else Path(out).expanduser()
    if not sweep.is_dir():
        what = "is a file, not a directory" if sweep.exists() else "no such directory"
        raise UserError(f"{sweep}: {what}; give a sweep directory "
                        "(outputs/multirun/<date>/<time>)")
    out = out or sweep
    check_output(out, f"out={out}")
    runs, notes = collect(sweep)
    if not runs:
        raise UserError(f"{sweep}: no runs found (no sub-folder with .hydra/, and no "
                        f"{MULTIRUN}); give a sweep directory (outputs/multirun/<date>/<time>)")
    if tag is not None:
        tagged = [r for r in runs if str(tag) in r.get("tags", [])]
        if not tagged:
            known = sorted({t for r in runs for t in r.get("tags", [])})
            raise UserError(f"tag={tag}: no run of {sweep} carries it; its tags: "
                            + (", ".join(known) or "none"))
        notes = [*notes, f"Only the {len(tagged)} of {len(runs)} runs tagged `{tag}`."]
        runs = tagged
    keys = swept_keys(runs)
    runs.sort(key=lambda r: _sort_key(r, keys))
    metric_names = sorted({m for r in runs for m in r["metrics"]},
                          key=lambda m: (m.startswith("eval_"), not m.startswith("test_"), m))
    x_key, group_keys = _choose_axes(runs, keys, x, lines)
    out.mkdir(parents=True, exist_ok=True)
    suffix = tag_suffix(tag)
    plots = plot(runs, keys, x_key, group_keys, out, suffix)
    write_csv(runs, keys, metric_names, out / f"report{suffix}.csv")
    write_markdown(sweep, runs, keys, metric_names, plots, notes, out / f"report{suffix}.md")
    return {"runs": runs, "keys": keys, "notes": notes,
            "files": [out / f"report{suffix}.md", out / f"report{suffix}.csv",
                      *(out / name for _, name in plots)]}


@hydra_app("report", USAGE, path_keys=("sweep", "out"), positional="sweep")
def main(args):
    check_options(args, CHECKS)
    tag = args.get("tag")
    if tag is not None and (not isinstance(tag, (str, int, float)) or not str(tag).strip()):
        raise UserError(f"tag={tag} is invalid: it must be one tag of the runs (tag=baseline)")
    result = report(Path(str(args.sweep)).expanduser(), args.x, args.lines,
                    Path(str(args.out)).expanduser() if args.out else None,
                    None if tag is None else str(tag))
    runs = result["runs"]
    print(f"{summary(runs)}; swept: {', '.join(result['keys']) or 'nothing'}", file=sys.stderr)
    for note in result["notes"]:
        print(f"  {note}", file=sys.stderr)
    for r in runs:
        if r["status"] != "ok":
            print(f"  {r['status']}: {r['run']}: {r['error']}", file=sys.stderr)
    for f in result["files"]:
        print(f"wrote {f}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
