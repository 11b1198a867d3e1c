"""The experiment runner: registry, run context (incremental results, checkpoints, figures) and report.

An experiment is a config dataclass (its defaults are the small setting that finishes in minutes on
two CPU cores; ``full()`` gives the paper's setting) and a function ``run(config, ctx) -> summary``.
It splits its work into named *units* (one training run, one exploration pass, ...). Each finished unit
is recorded in ``results.json`` at once; a unit in progress checkpoints itself through ``ctx``. Rerunning
the same command on the same folder skips the finished units and resumes the one that was interrupted,
so an interrupted run loses nothing and ends with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import ast
import collections.abc
import dataclasses
import hashlib
import platform
import threading
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch

from torchmoo.experiments import storage

RESULTS_FILE = "results.json"


@dataclass(frozen=True)
class Experiment:
    """A registered experiment.

    Attributes:
        name: command-line name, e.g. ``"mgda-multidigits"``.
        description: one line for ``torchmoo list``.
        config: dataclass type whose defaults are the small setting.
        full: returns the paper-sized config (``--full``).
        run: ``run(config, ctx) -> dict`` returning the summary (with a ``"table"``: list of row dicts).
    """

    name: str
    description: str
    config: type
    full: Callable[[], Any]
    run: Callable[[Any, "RunContext"], Dict[str, Any]]


_REGISTRY: Dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    if experiment.name in _REGISTRY:
        raise ValueError(f"experiment {experiment.name!r} is registered twice")
    _REGISTRY[experiment.name] = experiment
    return experiment


def experiment_names() -> List[str]:
    return sorted(_REGISTRY)


def get_experiment(name: str) -> Experiment:
    if name not in _REGISTRY:
        raise ValueError(f"unknown experiment {name!r}; known experiments: {', '.join(experiment_names())}.")
    return _REGISTRY[name]


def default_out(name: str, seed: int, full: bool = False) -> Path:
    """The result folder of a run when none is given: ``runs/<name>-seed<seed>[-full]``."""
    return Path("runs") / f"{name}-seed{seed}{'-full' if full else ''}"


def synchronize(device: Union[str, torch.device]) -> None:
    """Waits for the device's queued work (CUDA), so that a clock read after it times the work itself."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_device(device: Union[str, torch.device]) -> torch.device:
    """``device`` as a ``torch.device``; ``ValueError`` with a readable message when it is not a device
    string or names an accelerator this machine does not have."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"--device {device}: not a torch device (e.g. cpu, cuda, cuda:1).") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available in this torch build or on this machine.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available on this machine.")
    return dev


# ---- config settings from the command line (--set KEY=VALUE) --------------------------------------

_NONE_WORDS = ("none", "null")
_TRUE_WORDS = ("true", "yes", "on")
_FALSE_WORDS = ("false", "no", "off")


def _literal(text: str) -> Any:
    """A Python literal (number, list, quoted string, True, None), else the text itself."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` (command-line text, or a value parsed from it) as the config field type ``hint``:
    int, float, bool, str, Optional[...], List[...] / Tuple[..., ...] (``[1, 2]`` or ``1,2``)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS)):
            return None
        error: Optional[ValueError] = None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option)
            except ValueError as err:
                error = error or err
        raise error if error is not None else ValueError(f"expected none, got {value!r}.")
    if origin in (list, tuple, collections.abc.Sequence):
        item = args[0] if args else Any
        out = None
        if isinstance(value, str):
            parsed = _literal(value)
            nested = typing.get_origin(item) in (list, tuple, collections.abc.Sequence)
            if nested and isinstance(parsed, (list, tuple)) and parsed and \
                    not any(isinstance(v, (list, tuple)) for v in parsed):
                parsed = [parsed]  # one pair of a list of pairs (0.5,0.5): that pair, not [[0.5], [0.5]]
            if isinstance(parsed, (list, tuple)):
                try:
                    out = [_coerce(v, item) for v in parsed]
                except ValueError:  # e.g. 1,2 for a list of text: read the items from the text instead
                    pass
            if out is None:  # a,b,c without brackets, or a single item
                inner = value.strip()
                if inner[:1] in "[(" and inner[-1:] in "])":
                    inner = inner[1:-1]
                items = [v.strip() for v in inner.split(",")] if inner.strip() else []
                out = [_coerce(v, item) for v in items]
        elif isinstance(value, (list, tuple)):
            out = [_coerce(v, item) for v in value]
        else:
            out = [_coerce(value, item)]
        return tuple(out) if origin is tuple else out
    if hint is str:
        if isinstance(value, str):
            text = value.strip()
            quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""
            return _literal(text) if quoted else value
        raise ValueError(f"expected text, got {value!r}.")
    if hint not in (bool, int, float):
        return _literal(value) if isinstance(value, str) else value
    if isinstance(value, str):
        parsed = _literal(value)
        if isinstance(parsed, str):
            word = parsed.strip().lower()
            if hint is bool and word in _TRUE_WORDS + _FALSE_WORDS:
                parsed = word in _TRUE_WORDS
            elif hint is float:
                try:
                    parsed = float(word)  # inf, nan
                except ValueError:
                    pass
        value = parsed
    if hint is bool:
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return bool(value)
        raise ValueError(f"expected true or false, got {value!r}.")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"expected an integer, got {value!r}.")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"expected a number, got {value!r}.")


def configure(name: str, *, full: bool = False, assignments: Sequence[str] = ()) -> Any:
    """The config of experiment ``name`` (its small default, or ``full()``) with ``KEY=VALUE``
    assignments applied, as ``torchmoo run NAME --set KEY=VALUE`` does.

    Values are read as the field's type: ``epochs=3``, ``lr=1e-3``, ``correction=true``,
    ``mnist_root=/data/mnist``, ``weights=0.2,0.8`` or ``weights=[0.2, 0.8]``, ``ws_weights=[[1, 0], [0, 1]]``,
    ``image_folder=none`` for an optional one.

    Raises:
        ValueError: unknown experiment, an assignment without ``=``, a key that is not a field of the
            config (the message lists them), or a value that does not fit the field's type.
    """
    exp = get_experiment(name)
    config = exp.full() if full else exp.config()
    if not assignments:
        return config
    fields = [f.name for f in dataclasses.fields(config)]
    try:
        hints = typing.get_type_hints(type(config))
    except Exception:  # annotations that cannot be resolved: fall back on the current values' types
        hints = {}
    changes: Dict[str, Any] = {}
    for text in assignments:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {text!r}: expected KEY=VALUE, e.g. --set epochs=2.")
        if key not in fields:
            raise ValueError(f"--set {key}: {name} has no setting {key!r}; its settings are {', '.join(fields)}.")
        current = getattr(config, key)
        hint = hints.get(key, Any if current is None else type(current))
        try:
            changes[key] = _coerce(value, hint)
        except ValueError as err:
            raise ValueError(f"--set {key}={value}: {err}") from None
    return dataclasses.replace(config, **changes)


def versions() -> Dict[str, str]:
    import torchmoo

    return {
        "torchmoo": torchmoo.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def check_unique_units(names: Sequence[str], message: str) -> None:
    """``ValueError(message)`` when two units share a name: the second would reuse the first's result
    and checkpoint."""
    if len(set(names)) < len(names):
        raise ValueError(message)


def file_name(unit: str) -> str:
    """A unit's name as a file name: other characters become ``_``, and a name that had to be changed
    (or shortened) gets a hash of the unit, so that two units ("w=0.5" and "w 0.5") never share a file."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in unit)
    if safe != unit or len(safe) > 100:
        safe = f"{safe[:100]}-{hashlib.sha256(unit.encode()).hexdigest()[:10]}"
    return safe


class RunContext:
    """What an experiment's ``run`` uses to record results, checkpoint and report progress.

    Args:
        out: the run's folder (created); holds ``results.json``, ``checkpoints/`` and figures.
        seed: the run's seed; experiments derive every random stream from it.
        device: torch device for models and data.
        progress: show tqdm progress bars.
    """

    def __init__(self, out: Path, seed: int, device: torch.device, progress: bool, results: Dict[str, Any]):
        self.out = out
        self.seed = seed
        self.device = device
        self.show_progress = progress
        self.results = results
        self._lock = threading.RLock()  # units recorded from several threads

    # ---- units -------------------------------------------------------------------------------
    def done(self, unit: str) -> bool:
        """True when ``unit`` finished in this or an earlier (interrupted) run."""
        return unit in self.results["units"]

    def result(self, unit: str) -> Dict[str, Any]:
        return self.results["units"][unit]

    def record(self, unit: str, result: Dict[str, Any], seconds: float, evaluations: int = 0) -> None:
        """Stores a finished unit's result in ``results.json`` (atomically) and drops its checkpoint."""
        with self._lock:
            self.results["units"][unit] = result
            self.results["timings"][unit] = seconds
            self.results["evaluations"][unit] = evaluations
            self._write()
        self.checkpoint_path(unit).unlink(missing_ok=True)

    # ---- checkpoints of the unit in progress --------------------------------------------------
    def model_path(self, unit: str) -> Path:
        """``models/<unit>.pt``: a model an experiment keeps for later units (e.g. a seed to expand)."""
        return self.out / "models" / f"{file_name(unit)}.pt"

    def checkpoint_path(self, unit: str) -> Path:
        """``checkpoints/<unit>.pt`` (the unit's name made a file name by :func:`file_name`)."""
        return self.out / "checkpoints" / f"{file_name(unit)}.pt"

    def save_state(self, unit: str, state: Dict[str, Any]) -> None:
        storage.save_checkpoint(self.checkpoint_path(unit), state)

    def load_state(self, unit: str) -> Optional[Dict[str, Any]]:
        path = self.checkpoint_path(unit)
        return storage.load_checkpoint(path) if path.exists() else None

    # ---- output --------------------------------------------------------------------------------
    def progress(self, iterable: Iterable, desc: str, total: Optional[int] = None, initial: int = 0):
        if not self.show_progress:
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, initial=initial, leave=False, dynamic_ncols=True)

    def save_figure(self, fig, name: str) -> Path:
        """Saves a matplotlib figure as ``<out>/<name>.png`` and closes it."""
        import matplotlib.pyplot as plt

        path = self.out / f"{name}.png"
        tmp = self.out / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        plt.close(fig)
        tmp.replace(path)
        with self._lock:
            self.results.setdefault("figures", [])
            if path.name not in self.results["figures"]:
                self.results["figures"].append(path.name)
                self._write()
        return path

    def _write(self) -> None:
        with self._lock:
            storage.write_json(self.out / RESULTS_FILE, self.results)


def run_experiment(
    name: str,
    *,
    full: bool = False,
    seed: int = 0,
    out: Optional[str] = None,
    device: str = "cpu",
    progress: bool = True,
    config: Any = None,
) -> Dict[str, Any]:
    """Runs (or resumes) one experiment and returns its ``results.json`` content.

    Args:
        name: a registered experiment (see :func:`experiment_names`).
        full: use the paper's setting instead of the small default.
        seed: seed of every random stream of the run.
        out: result folder; default ``runs/<name>-seed<seed>[-full]``. A folder that already holds
            results of the same experiment, config and seed is resumed; one that holds another run's
            is refused, unless that run stopped before it finished a unit or wrote a checkpoint. A run that
            stops so (a missing data path, say) leaves no ``results.json``.
        device: torch device string. A folder that holds finished units or a checkpoint is resumed on
            the device it was run on only.
        progress: show progress bars.
        config: an explicit config object of the experiment's config type (overrides ``full``), e.g. for tests.

    Raises:
        TypeError: ``config`` is not of the experiment's config type.
        ValueError: unknown experiment, a negative seed, an unavailable device, a folder that cannot be
            written, holds another run (or a ``results.json`` that is not a torchmoo results file, or
            checkpoints without their ``results.json``) or is in use by a run in progress.
    """
    exp = get_experiment(name)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {seed!r}.")
    if config is None:
        config = exp.full() if full else exp.config()
    elif not isinstance(config, exp.config):  # else a confusing error deep inside the run
        raise TypeError(f"config must be a {exp.config.__module__}.{exp.config.__qualname__} (the config of {name}), "
                        f"got {type(config).__name__}.")
    dev = check_device(device)
    out_dir = Path(out) if out is not None else default_out(name, seed, full)
    config_dict = _plain(dataclasses.asdict(config))
    lock = storage.FolderLock(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as err:  # read-only place, a file in the way, ...
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"{out_dir} is a file, not a folder; pass another --out.") from None
        raise ValueError(f"cannot write the results folder {out_dir}: {err.strerror or err}; pass another --out.") from None
    try:
        return _run_locked(exp, config, config_dict, seed, dev, out_dir, progress)
    finally:
        lock.release()


def _holds_work(out_dir: Path, results: Dict[str, Any]) -> bool:
    """True when a folder holds finished units or a unit's checkpoint, i.e. something a rerun could lose.
    The temporary file of a checkpoint write that was killed is not one."""
    ckpts = out_dir / "checkpoints"
    return bool(results.get("units")) or (ckpts.is_dir() and any(ckpts.glob("*.pt")))


def _device_key(device: Union[str, torch.device]) -> str:
    """A device as results.json records it: ``cpu:0`` and ``cpu`` alike (one CPU device), ``cuda`` as
    ``cuda:0`` (the device a fresh process picks for it)."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        return str(device)
    if d.type == "cpu":
        return "cpu"
    return f"{d.type}:{0 if d.index is None else d.index}"


def _run_locked(exp: Experiment, config: Any, config_dict: Any, seed: int, dev: torch.device, out_dir: Path,
                progress: bool) -> Dict[str, Any]:
    name = exp.name
    results_path = out_dir / RESULTS_FILE
    for folder in (out_dir, out_dir / "checkpoints", out_dir / "models"):  # the lock is held: no write in progress
        storage.remove_temporaries(folder)
    try:
        results = storage.read_json(results_path) if results_path.exists() else None
    except ValueError as err:  # not JSON: damaged by hand or by another program (our writes are atomic)
        raise ValueError(f"{str(err).rstrip('.')}; pass another --out or delete it.") from None
    if results is not None:
        # another program's results.json is refused, never overwritten
        if not (isinstance(results, dict) and isinstance(results.get("experiment"), str)
                and isinstance(results.get("units"), dict)):
            raise ValueError(f"{results_path} is not a torchmoo results file; pass another --out or delete it.")
        same = (
            results.get("experiment") == name
            and results.get("config") == config_dict
            and results.get("seed") == seed
        )
        ran_on = results.get("device")
        holds_work = _holds_work(out_dir, results)
        if same and ran_on is not None and _device_key(ran_on) != _device_key(dev) and holds_work:
            # units computed on two devices would not match an uninterrupted run bit for bit
            raise ValueError(f"{out_dir} was run on {ran_on}: resume it with --device {ran_on}, or pass another --out.")
        if same:
            results["resumed"] = results.get("resumed", 0) + 1
            if not holds_work:  # nothing was computed on the recorded device: record the one that computes
                results["device"] = str(dev)
        elif holds_work:
            raise ValueError(
                f"{out_dir} holds results of another run ({results.get('experiment')}, seed {results.get('seed')}, "
                "or a different config); pass another --out or delete that folder."
            )
        else:  # a run killed before its first unit or checkpoint (while loading its data, say): nothing to keep
            results = None
    elif _holds_work(out_dir, {}):
        # checkpoints whose results.json was deleted: of an unknown config and seed, they must not be resumed
        raise ValueError(f"{out_dir} holds checkpoints but no {RESULTS_FILE}, so it is not known which run they "
                         f"belong to; pass another --out or delete {out_dir / 'checkpoints'}.")
    if results is None:
        results = {
            "experiment": name,
            "config": config_dict,
            "seed": seed,
            "device": str(dev),
            "versions": versions(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "units": {},
            "timings": {},
            "evaluations": {},
            "complete": False,
        }
    ctx = RunContext(out_dir, seed, dev, progress, results)
    try:
        ctx._write()
    except OSError as err:
        raise ValueError(f"cannot write the results folder {out_dir}: {err.strerror or err}; pass another --out.") from None
    try:
        summary = exp.run(config, ctx)
    except BaseException:
        # stopped before it finished a unit or wrote a checkpoint (a missing data path, Ctrl-C while loading):
        # a results.json without units would be listed by `report` as a run, and there is nothing to resume
        if not _holds_work(out_dir, results):
            try:
                results_path.unlink(missing_ok=True)
            except OSError:  # the run's own error says more
                pass
        raise
    results["summary"] = _plain(summary)
    results["complete"] = True
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    ctx._write()
    return results


def _plain(obj: Any) -> Any:
    """JSON-ready copy: tuples to lists, tensors / numpy to lists or numbers."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ---- report ----------------------------------------------------------------------------------------


def find_results(paths: Sequence[str]) -> List[Path]:
    """``results.json`` files in the given folders (searched recursively) or given directly."""
    found: List[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found.extend(sorted(p.rglob(RESULTS_FILE)))
        else:
            raise ValueError(f"{p} does not exist.")
    if not found:
        raise ValueError(f"no {RESULTS_FILE} found under {', '.join(map(str, paths))}.")
    return found


def markdown_table(rows: List[Dict[str, Any]]) -> str:
    """Rows of dicts as a markdown table (columns in first-seen order; floats with 4 significant digits)."""
    if not rows:
        return "(no rows)"
    cols: List[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, list):
            return "(" + ", ".join(fmt(x) for x in v) + ")"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _read_results(path: Path) -> Dict[str, Any]:
    """A ``results.json`` as written by :func:`run_experiment` (finished or not), else ``ValueError``."""
    res = storage.read_json(path)
    if not isinstance(res, dict):
        raise ValueError(f"{path} is not a torchmoo results file (it holds a JSON {type(res).__name__}).")
    expected = {"units": dict, "timings": dict, "versions": dict, "summary": (dict, type(None))}
    for key, kind in expected.items():
        if key in res and not isinstance(res[key], kind):
            kind_found = type(res[key]).__name__
            raise ValueError(f"{path} is not a torchmoo results file (its {key!r} is a JSON {kind_found}).")
    if not isinstance(res.get("experiment"), str) or "units" not in res:
        raise ValueError(f"{path} is not a torchmoo results file (no experiment name or units).")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in res.get("timings", {}).values()):
        raise ValueError(f"{path} is not a torchmoo results file (a timing is not a number).")
    table = (res.get("summary") or {}).get("table", [])
    if not isinstance(table, list) or not all(isinstance(r, dict) for r in table):
        raise ValueError(f"{path} is not a torchmoo results file (its summary table is not a list of rows).")
    return res


def report(paths: Sequence[str]) -> str:
    """Markdown report of one or more result folders.

    A file that is not a readable torchmoo results file is named in the report and the others are
    reported. When no file is readable, the first file's error is raised (``ValueError`` for a file that
    is not a torchmoo results file, ``OSError`` for one that cannot be read); ``ValueError`` when no
    results file is found."""
    parts, unreadable = [], []
    for path in find_results(paths):
        try:
            res = _read_results(path)
        except (ValueError, OSError) as err:  # one broken file does not hide the other runs
            unreadable.append(err)
            continue
        status = "complete" if res.get("complete") else f"incomplete ({len(res.get('units', {}))} units done)"
        total = sum(res.get("timings", {}).values())
        head = (
            f"## {res.get('experiment')} (seed {res.get('seed')}, {status}, {total:.1f} s, "
            f"torchmoo {res.get('versions', {}).get('torchmoo')})\n\n`{path.parent}`"
        )
        summary = res.get("summary") or {}
        body = markdown_table(summary.get("table", [])) if summary else "(no summary yet)"
        notes = "\n".join(f"- {k}: {v}" for k, v in summary.items() if k != "table" and not isinstance(v, (list, dict)))
        parts.append("\n\n".join(x for x in (head, body, notes) if x))
    if not parts:
        raise unreadable[0]
    if unreadable:
        parts.append("## not reported\n\n" + "\n".join(f"- {err}" for err in unreadable))
    return "\n\n".join(parts) + "\n"
