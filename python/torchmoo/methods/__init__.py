"""Multi-objective methods: aggregators that turn a Jacobian ``J`` (m, n) into an update direction.

Every aggregator is callable on a Jacobian and exposes the weights of its last call::

    agg = torchmoo.methods.MGDA()
    d = agg(J)            # (n,), the vector that goes into .grad
    agg.weights           # (m,)

Use them through :func:`torchmoo.backward` with any ``torch.optim`` optimizer.
"""

from torchmoo.methods.aggregator import Aggregator
from torchmoo.methods.baselines import CAGrad, ImprovementFunction, LinearScalarization, PCGrad, cagrad_weights
from torchmoo.methods.mgda import MGDA, MinNormCorrection, min_norm_correction, min_norm_weights, pareto_stationarity
from torchmoo.methods.png import (
    PNG,
    ComplexCosine,
    Criterion,
    EnergyDistance,
    LossCriterion,
    NonUniformity,
    PNGDirection,
    PNGStats,
    WeightedDistance,
    png_direction,
    png_dual,
)
from torchmoo.methods.epo import EPO
from torchmoo.methods.pareto_exploration import (
    EvaluationCounter,
    Expansion,
    ExploredPoint,
    OptimizeResult,
    ParetoExplorer,
    pareto_expand,
    pareto_explore,
    pareto_optimize,
)
from torchmoo.methods.continuous_front import ContinuousFront, ConvexHullFamily, stitch
from torchmoo.methods.simol import (
    MAML,
    BaseLearner,
    ProtoNet,
    SIMOL,
    MetaLearner,
    ReweightingNetwork,
    TaskTableWeights,
    soft_improvement_objective,
)
from torchmoo.methods.mtsgd import MOOSVGD, MTSGD, SteinStep, median_bandwidth, stein_task_matrix, stein_update
from torchmoo.methods.psst import (
    PSST,
    AngularRegion,
    PartitionRegion,
    PreferenceRegion,
    PreferenceVectors,
    PSSTExploration,
    PSSTStep,
    angular_regions,
    explore_solution,
    partition_regions,
    partition_subsets,
    preference_vectors,
    psst_direction,
    psst_weights,
)

__all__ = [
    "PNG",
    "PNGStats",
    "PNGDirection",
    "png_direction",
    "png_dual",
    "Criterion",
    "WeightedDistance",
    "ComplexCosine",
    "NonUniformity",
    "EnergyDistance",
    "LossCriterion",
    "EPO",
    "Aggregator",
    "MGDA",
    "LinearScalarization",
    "PCGrad",
    "CAGrad",
    "ImprovementFunction",
    "cagrad_weights",
    "min_norm_weights",
    "pareto_stationarity",
    "MinNormCorrection",
    "min_norm_correction",
    "ParetoExplorer",
    "pareto_optimize",
    "pareto_expand",
    "pareto_explore",
    "EvaluationCounter",
    "OptimizeResult",
    "Expansion",
    "ExploredPoint",
    "ContinuousFront",
    "ConvexHullFamily",
    "stitch",
    "MTSGD",
    "MOOSVGD",
    "SteinStep",
    "median_bandwidth",
    "stein_task_matrix",
    "stein_update",
    "SIMOL",
    "MAML",
    "ProtoNet",
    "BaseLearner",
    "MetaLearner",
    "ReweightingNetwork",
    "TaskTableWeights",
    "soft_improvement_objective",
    "PSST",
    "PSSTStep",
    "PreferenceRegion",
    "AngularRegion",
    "PartitionRegion",
    "PreferenceVectors",
    "PSSTExploration",
    "preference_vectors",
    "angular_regions",
    "partition_subsets",
    "partition_regions",
    "psst_weights",
    "psst_direction",
    "explore_solution",
]
