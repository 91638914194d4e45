"""Torch models on the shipped real data: datasets, featurizers, models, checkpoints.

Serving uses four names: ``load_checkpoint`` (or ``default_checkpoint`` for the shipped
ones), then ``ObdScorer`` / ``HillstromScorer``, whose ``featurizer`` turns a batch of raw
request columns into model inputs with the compiled kernels and whose ``predict`` scores
it. Nothing here knows HTTP or Ray; ``serve`` wires it in.
"""

from .checkpoint import (
    LoadedModel,
    build_module,
    checkpoint_paths,
    default_checkpoint,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from .datasets import (
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
from .errors import (
    CheckpointError,
    FeatureSpecMismatch,
    InvalidFeatures,
    InvalidFeatureType,
    ModelError,
)
from .features import (
    HillstromFeatures,
    HillstromFeaturizer,
    ObdFeatures,
    ObdFeaturizer,
    ObdItemTable,
    choose_hash_seed,
)
from .inference import (
    HillstromScorer,
    ObdScorer,
    ObdScoringModule,
    UpliftPrediction,
    UpliftScoringModule,
    select_device,
    select_precision,
)
from .nets import ObdClickModel, UpliftModel
from .specs import (
    HILLSTROM_OUTCOMES,
    HILLSTROM_TREATMENTS,
    CheckpointMetadata,
    HillstromArchitecture,
    HillstromFeatureSpec,
    ObdArchitecture,
    ObdFeatureSpec,
    TrainingInfo,
)

__all__ = [
    "HILLSTROM_OUTCOMES",
    "HILLSTROM_TREATMENTS",
    "CheckpointError",
    "CheckpointMetadata",
    "FeatureSpecMismatch",
    "HillstromArchitecture",
    "HillstromData",
    "HillstromFeatureSpec",
    "HillstromFeaturizer",
    "HillstromFeatures",
    "HillstromScorer",
    "InvalidFeatureType",
    "InvalidFeatures",
    "LoadedModel",
    "ModelError",
    "ObdArchitecture",
    "ObdClickModel",
    "ObdFeatureSpec",
    "ObdFeaturizer",
    "ObdFeatures",
    "ObdItemContext",
    "ObdItemTable",
    "ObdLog",
    "ObdScorer",
    "ObdScoringModule",
    "TrainingInfo",
    "UpliftModel",
    "UpliftPrediction",
    "UpliftScoringModule",
    "build_module",
    "checkpoint_paths",
    "choose_hash_seed",
    "default_checkpoint",
    "hillstrom_strata",
    "load_checkpoint",
    "load_hillstrom",
    "load_obd",
    "load_obd_items",
    "read_metadata",
    "save_checkpoint",
    "select_device",
    "select_precision",
    "stratified_split",
    "time_split",
]
