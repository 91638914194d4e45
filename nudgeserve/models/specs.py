"""Feature specs and checkpoint metadata (msgspec Structs, stored as JSON beside weights).

A feature spec says everything needed to turn raw request columns into model tensors:
hash buckets and seeds, standardisation statistics, clipping bounds, the catalog size.
It is written into the checkpoint when a model is trained and read back by the
featurizer that serves it, so training and serving cannot disagree silently: loading a
checkpoint with an ``expected_spec`` that differs raises ``FeatureSpecMismatch``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

# Bumped when the checkpoint layout changes incompatibly; loaders refuse other versions.
CHECKPOINT_FORMAT_VERSION = 1

OBD_USER_FEATURES = ("user_feature_0", "user_feature_1", "user_feature_2", "user_feature_3")
OBD_ITEM_CATEGORICAL = ("item_feature_1", "item_feature_2", "item_feature_3")
OBD_ITEM_NUMERIC = ("item_feature_0",)

HILLSTROM_CATEGORICAL = ("history_segment", "zip_code", "channel")
HILLSTROM_NUMERIC = ("recency", "history", "mens", "womens", "newbie")
# Columns log1p-transformed before standardising: ``history`` is dollars, heavily skewed.
HILLSTROM_LOG1P = ("history",)
HILLSTROM_TREATMENTS = ("No E-Mail", "Mens E-Mail", "Womens E-Mail")
HILLSTROM_CONTROL = "No E-Mail"
HILLSTROM_OUTCOMES = ("visit", "conversion", "spend")


class ObdFeatureSpec(msgspec.Struct, frozen=True, kw_only=True, tag="obd"):
    """How raw Open Bandit contexts become click-model inputs.

    campaign: the OBD campaign whose catalog the model scores (``all``/``men``/``women``).
    n_items: catalog size; item ids are ``0..n_items-1``.
    n_positions: slots on the page (OBD: 3); position ``p`` is 0-based here (the logs
        number them 1..3).
    user_feature_names: raw context columns, each a categorical string hashed into
        ``n_buckets`` buckets with ``hash_seed`` (one embedding table per column).
    item_categorical_names / item_numeric_names: item-context columns.
    item_numeric_mean / item_numeric_std: standardisation of the item numeric columns.
    affinity_clip: ``log1p(affinity)`` is clipped to ``[0, affinity_clip]``.
    """

    campaign: str
    n_items: int
    n_positions: int = 3
    user_feature_names: tuple[str, ...] = OBD_USER_FEATURES
    item_categorical_names: tuple[str, ...] = OBD_ITEM_CATEGORICAL
    item_numeric_names: tuple[str, ...] = OBD_ITEM_NUMERIC
    n_buckets: int = 64
    hash_seed: int = 0
    item_numeric_mean: tuple[float, ...] = (0.0,)
    item_numeric_std: tuple[float, ...] = (1.0,)
    affinity_clip: float = 3.0

    def __post_init__(self) -> None:
        if self.n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {self.n_items}")
        if self.n_positions < 1:
            raise ValueError(f"n_positions must be >= 1, got {self.n_positions}")
        if self.n_buckets < 2:
            raise ValueError(f"n_buckets must be >= 2, got {self.n_buckets}")
        if not 0 <= self.hash_seed < 2**32:
            raise ValueError(f"hash_seed must be in [0, 2**32), got {self.hash_seed}")
        n_num = len(self.item_numeric_names)
        if len(self.item_numeric_mean) != n_num or len(self.item_numeric_std) != n_num:
            raise ValueError(
                f"item_numeric_mean/std must have {n_num} entries (one per item_numeric_names)"
            )
        if any(s <= 0 for s in self.item_numeric_std):
            raise ValueError(f"item_numeric_std must be > 0, got {self.item_numeric_std}")
        if not self.affinity_clip > 0:
            raise ValueError(f"affinity_clip must be > 0, got {self.affinity_clip}")


class HillstromFeatureSpec(msgspec.Struct, frozen=True, kw_only=True, tag="hillstrom"):
    """How raw Hillstrom customer rows become uplift-model inputs.

    categorical_names: string columns hashed into ``n_buckets`` buckets with
        ``hash_seed`` (one embedding table per column).
    numeric_names: numeric columns; those in ``log1p_names`` go through ``log1p`` first,
        then every one is standardised with ``numeric_mean``/``numeric_std`` and clipped to
        ``[-numeric_clip, numeric_clip]`` (a $3,000 history must not dominate the trunk).
    treatments: the arms in model-output order; ``control`` is the reference arm.
    """

    categorical_names: tuple[str, ...] = HILLSTROM_CATEGORICAL
    numeric_names: tuple[str, ...] = HILLSTROM_NUMERIC
    log1p_names: tuple[str, ...] = HILLSTROM_LOG1P
    numeric_mean: tuple[float, ...]
    numeric_std: tuple[float, ...]
    numeric_clip: float = 5.0
    n_buckets: int = 64
    hash_seed: int = 0
    treatments: tuple[str, ...] = HILLSTROM_TREATMENTS
    control: str = HILLSTROM_CONTROL

    def __post_init__(self) -> None:
        n = len(self.numeric_names)
        if len(self.numeric_mean) != n or len(self.numeric_std) != n:
            raise ValueError(f"numeric_mean/std must have {n} entries (one per numeric_names)")
        if any(s <= 0 for s in self.numeric_std):
            raise ValueError(f"numeric_std must be > 0, got {self.numeric_std}")
        unknown = set(self.log1p_names) - set(self.numeric_names)
        if unknown:
            raise ValueError(f"log1p_names {sorted(unknown)} are not in numeric_names")
        if self.n_buckets < 2:
            raise ValueError(f"n_buckets must be >= 2, got {self.n_buckets}")
        if not 0 <= self.hash_seed < 2**32:
            raise ValueError(f"hash_seed must be in [0, 2**32), got {self.hash_seed}")
        if not self.numeric_clip > 0:
            raise ValueError(f"numeric_clip must be > 0, got {self.numeric_clip}")
        if self.control not in self.treatments:
            raise ValueError(f"control {self.control!r} is not one of treatments {self.treatments}")

    @property
    def control_index(self) -> int:
        return self.treatments.index(self.control)


FeatureSpec = ObdFeatureSpec | HillstromFeatureSpec


class ObdArchitecture(msgspec.Struct, frozen=True, kw_only=True, tag="obd_click"):
    """Sizes of ``ObdClickModel`` (enough to rebuild it before loading weights)."""

    dim: int = 8
    hidden: int = 16


class HillstromArchitecture(msgspec.Struct, frozen=True, kw_only=True, tag="hillstrom_uplift"):
    """Sizes of ``UpliftModel``."""

    embedding_dim: int = 4
    hidden: int = 32


Architecture = ObdArchitecture | HillstromArchitecture


class DataFile(msgspec.Struct, frozen=True, kw_only=True):
    """A training input: path inside the package, SHA-256 of its bytes, rows used."""

    path: str
    sha256: str
    rows: int


class TrainingInfo(msgspec.Struct, frozen=True, kw_only=True):
    """How a checkpoint was made, so it can be reproduced."""

    command: str
    seed: int
    epochs_requested: int
    epochs_run: int
    best_epoch: int
    device: str
    data: tuple[DataFile, ...]
    split: str
    train_rows: int
    validation_rows: int
    torch_version: str
    seconds: float


class CheckpointMetadata(msgspec.Struct, frozen=True, kw_only=True):
    """Everything stored beside a checkpoint's weights (``<name>.json``).

    kind: ``"obd_click"`` or ``"hillstrom_uplift"``.
    weights_sha256: SHA-256 of the ``.safetensors`` file, checked on load so a weights
        file never runs with someone else's metadata.
    metrics: evaluation summary written by training (model vs baselines, intervals).
    """

    kind: Literal["obd_click", "hillstrom_uplift"]
    feature_spec: FeatureSpec
    architecture: Architecture
    training: TrainingInfo
    metrics: dict[str, Any]
    weights_sha256: str
    nudgeserve_version: str
    format_version: int = CHECKPOINT_FORMAT_VERSION


def spec_differences(expected: FeatureSpec, found: FeatureSpec) -> dict[str, tuple[Any, Any]]:
    """``{field: (expected, found)}`` for every field that differs (type counts as one)."""
    if type(expected) is not type(found):
        return {"kind": (type(expected).__name__, type(found).__name__)}
    return {
        name: (getattr(expected, name), getattr(found, name))
        for name in expected.__struct_fields__
        if getattr(expected, name) != getattr(found, name)
    }
