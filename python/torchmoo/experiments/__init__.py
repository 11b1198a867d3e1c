"""Experiments that reproduce the papers, run by ``torchmoo run NAME`` (see :mod:`.runner`).

Each module registers one or more experiments on import; importing this package registers them all.
"""

from torchmoo.experiments.runner import (
    Experiment,
    RunContext,
    experiment_names,
    get_experiment,
    register,
    report,
    run_experiment,
)
from torchmoo.experiments import mgda_multidigits  # noqa: F401  (registers mgda-multidigits)
from torchmoo.experiments import png_diverse, png_synthetic  # noqa: F401  (registers the png-* experiments)
from torchmoo.experiments import pareto_multidigits, pareto_zdt2  # noqa: F401  (registers the pareto-* experiments)
from torchmoo.experiments import mtsgd_gaussians  # noqa: F401  (registers mtsgd-gaussians)
from torchmoo.experiments import mtsgd_multidigits, mtsgd_sarcos, mtsgd_zdt3  # noqa: F401  (the other mtsgd-*)
from torchmoo.experiments import simol_sinusoid  # noqa: F401  (registers simol-sinusoid)
from torchmoo.experiments import simol_fewshot, simol_toy  # noqa: F401  (registers simol-toy, simol-fewshot-digits)
from torchmoo.experiments import psst_fewshot  # noqa: F401  (registers psst-fewshot-digits)

__all__ = [
    "Experiment",
    "RunContext",
    "experiment_names",
    "get_experiment",
    "register",
    "report",
    "run_experiment",
]
