"""The experiment runner: registry, run context (incremental results, checkpoints, figures) and report.

An experiment is a config dataclass (its defaults are the small setting that finishes in minutes on
two CPU cores; ``full()`` gives the paper's setting) and a function ``run(config, ctx) -> summary``.
It splits its work into named *units* (one training run, one exploration pass, ...). Each finished unit
is recorded in ``results.json`` at once; a unit in progress checkpoints itself through ``ctx``. Rerunning
the same command on the same folder skips the finished units and resumes the one that was interrupted,
so an interrupted run loses nothing and ends with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

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


def versions() -> Dict[str, str]:
    import torchmoo

    return {
        "torchmoo": torchmoo.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


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

    # ---- units -------------------------------------------------------------------------------
    def done(self, unit: str) -> bool:
        """True when ``unit`` finished in this or an earlier (interrupted) run."""
        return unit in self.results["units"]

    def result(self, unit: str) -> Dict[str, Any]:
        return self.results["units"][unit]

    def record(self, unit: str, result: Dict[str, Any], seconds: float, evaluations: int = 0) -> None:
        """Stores a finished unit's result in ``results.json`` (atomically) and drops its checkpoint."""
        self.results["units"][unit] = result
        self.results["timings"][unit] = seconds
        self.results["evaluations"][unit] = evaluations
        self._write()
        self.checkpoint_path(unit).unlink(missing_ok=True)

    # ---- checkpoints of the unit in progress --------------------------------------------------
    def checkpoint_path(self, unit: str) -> Path:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in unit)
        return self.out / "checkpoints" / f"{safe}.pt"

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
        self.results.setdefault("figures", [])
        if path.name not in self.results["figures"]:
            self.results["figures"].append(path.name)
            self._write()
        return path

    def _write(self) -> None:
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
            results of the same experiment, config and seed is resumed.
        device: torch device string.
        progress: show progress bars.
        config: an explicit config object (overrides ``full``), e.g. for tests.
    """
    exp = get_experiment(name)
    if config is None:
        config = exp.full() if full else exp.config()
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available in this torch build or on this machine.")
    out_dir = Path(out) if out is not None else Path("runs") / f"{name}-seed{seed}{'-full' if full else ''}"
    out_dir.mkdir(parents=True, exist_ok=True)
    config_dict = _plain(dataclasses.asdict(config))
    results_path = out_dir / RESULTS_FILE
    if results_path.exists():
        results = storage.read_json(results_path)
        same = (
            results.get("experiment") == name and results.get("config") == config_dict and results.get("seed") == seed
        )
        if not same:
            raise ValueError(
                f"{out_dir} holds results of another run ({results.get('experiment')}, seed {results.get('seed')}, "
                "or a different config); pass another --out or delete that folder."
            )
        results["resumed"] = results.get("resumed", 0) + 1
    else:
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
    ctx._write()
    summary = exp.run(config, ctx)
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


def report(paths: Sequence[str]) -> str:
    """Markdown report of one or more result folders."""
    parts = []
    for path in find_results(paths):
        res = storage.read_json(path)
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
    return "\n\n".join(parts) + "\n"
