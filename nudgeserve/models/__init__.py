"""Models on the shipped real data, and the decision science around them.

Three subpackages, by what they need:

- ``learn``: torch. Datasets, featurizers, nets, checkpoints, inference, training and the
  uplift ensemble. Serving uses ``load_checkpoint`` (or ``default_checkpoint``), then
  ``ObdScorer`` / ``HillstromScorer``.
- ``policies``: NumPy only. Slot marginals (exact propensities) of slate policies, the
  linear bandit, the intervention rule.
- ``evaluation``: NumPy only (pyarrow for log files). Off-policy estimators, interval
  statistics, causal impact, Qini, uplift calibration, plots; only ``hillstrom_impact``
  drives a torch model (and loads torch only when it does).

Importing this package, or any NumPy-only module under it, never imports torch: the names
below are resolved on first use (PEP 562), so ``from nudgeserve.models import load_obd``
costs what ``learn.datasets`` costs. Nothing here knows HTTP or Ray.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "HILLSTROM_OUTCOMES": "nudgeserve.models.specs",
    "HILLSTROM_TREATMENTS": "nudgeserve.models.specs",
    "build_module": "nudgeserve.models.learn.checkpoint",
    "checkpoint_paths": "nudgeserve.models.learn.checkpoint",
    "CheckpointError": "nudgeserve.models.errors",
    "CheckpointMetadata": "nudgeserve.models.specs",
    "choose_hash_seed": "nudgeserve.models.learn.features",
    "default_checkpoint": "nudgeserve.models.learn.checkpoint",
    "FeatureSpecMismatch": "nudgeserve.models.errors",
    "hillstrom_strata": "nudgeserve.models.learn.datasets",
    "HillstromArchitecture": "nudgeserve.models.specs",
    "HillstromData": "nudgeserve.models.learn.datasets",
    "HillstromFeatures": "nudgeserve.models.learn.features",
    "HillstromFeatureSpec": "nudgeserve.models.specs",
    "HillstromFeaturizer": "nudgeserve.models.learn.features",
    "HillstromScorer": "nudgeserve.models.learn.inference",
    "InvalidFeatures": "nudgeserve.models.errors",
    "InvalidFeatureType": "nudgeserve.models.errors",
    "InvalidLogs": "nudgeserve.models.errors",
    "InvalidLogsType": "nudgeserve.models.errors",
    "InvalidPolicyInput": "nudgeserve.models.errors",
    "InvalidPolicyInputType": "nudgeserve.models.errors",
    "load_checkpoint": "nudgeserve.models.learn.checkpoint",
    "load_hillstrom": "nudgeserve.models.learn.datasets",
    "load_obd": "nudgeserve.models.learn.datasets",
    "load_obd_items": "nudgeserve.models.learn.datasets",
    "LoadedModel": "nudgeserve.models.learn.checkpoint",
    "ModelError": "nudgeserve.models.errors",
    "ObdArchitecture": "nudgeserve.models.specs",
    "ObdClickModel": "nudgeserve.models.learn.nets",
    "ObdFeatures": "nudgeserve.models.learn.features",
    "ObdFeatureSpec": "nudgeserve.models.specs",
    "ObdFeaturizer": "nudgeserve.models.learn.features",
    "ObdItemContext": "nudgeserve.models.learn.datasets",
    "ObdItemTable": "nudgeserve.models.learn.features",
    "ObdLog": "nudgeserve.models.learn.datasets",
    "ObdScorer": "nudgeserve.models.learn.inference",
    "ObdScoringModule": "nudgeserve.models.learn.inference",
    "read_metadata": "nudgeserve.models.learn.checkpoint",
    "save_checkpoint": "nudgeserve.models.learn.checkpoint",
    "select_device": "nudgeserve.models.learn.inference",
    "select_precision": "nudgeserve.models.learn.inference",
    "stratified_split": "nudgeserve.models.learn.datasets",
    "time_split": "nudgeserve.models.learn.datasets",
    "TrainingInfo": "nudgeserve.models.specs",
    "UpliftModel": "nudgeserve.models.learn.nets",
    "UpliftPrediction": "nudgeserve.models.learn.inference",
    "UpliftScoringModule": "nudgeserve.models.learn.inference",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # what type checkers and readers see
    from nudgeserve.models.errors import (  # noqa: F401
        CheckpointError,
        FeatureSpecMismatch,
        InvalidFeatures,
        InvalidFeatureType,
        InvalidLogs,
        InvalidLogsType,
        InvalidPolicyInput,
        InvalidPolicyInputType,
        ModelError,
    )
    from nudgeserve.models.learn.checkpoint import (  # noqa: F401
        LoadedModel,
        build_module,
        checkpoint_paths,
        default_checkpoint,
        load_checkpoint,
        read_metadata,
        save_checkpoint,
    )
    from nudgeserve.models.learn.datasets import (  # noqa: F401
        HillstromData,
        ObdItemContext,
        ObdLog,
        hillstrom_strata,
        load_hillstrom,
        load_obd,
        load_obd_items,
        stratified_split,
        time_split,
    )
    from nudgeserve.models.learn.features import (  # noqa: F401
        HillstromFeatures,
        HillstromFeaturizer,
        ObdFeatures,
        ObdFeaturizer,
        ObdItemTable,
        choose_hash_seed,
    )
    from nudgeserve.models.learn.inference import (  # noqa: F401
        HillstromScorer,
        ObdScorer,
        ObdScoringModule,
        UpliftPrediction,
        UpliftScoringModule,
        select_device,
        select_precision,
    )
    from nudgeserve.models.learn.nets import (  # noqa: F401
        ObdClickModel,
        UpliftModel,
    )
    from nudgeserve.models.specs import (  # noqa: F401
        HILLSTROM_OUTCOMES,
        HILLSTROM_TREATMENTS,
        CheckpointMetadata,
        HillstromArchitecture,
        HillstromFeatureSpec,
        ObdArchitecture,
        ObdFeatureSpec,
        TrainingInfo,
    )
