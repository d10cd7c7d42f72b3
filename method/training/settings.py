"""Everything a training run is built from, as one value: the parts each piece of the loop receives."""
from __future__ import annotations

from dataclasses import dataclass, field

from method.data.options import DataOptions
from method.losses.objective import LossSettings
from method.models.model import ModelConfig
from method.training.optim import OptimSettings
from method.training.runtime import RuntimePolicy
from method.training.schedules import EpochSchedule


@dataclass(frozen=True)
class TrainSettings:
    """A training run's settings, built once from the recipe table and the flags (``method.config.settings``).

    ``model`` has no input sizes yet: the data check gives them. ``record`` is
    the flat flag dict written as the run's ``opt.json``.
    """

    recipe: str
    seed: int
    n_epoch: int
    max_es_cnt: int
    bsz: int
    data: DataOptions
    model: ModelConfig
    loss: LossSettings
    schedule: EpochSchedule
    optim: OptimSettings
    runtime: RuntimePolicy
    fusion: dict
    reuse_query_encoding: bool = False  # GMMFormer family, fixes quirk Q5
    record: dict = field(default_factory=dict)
