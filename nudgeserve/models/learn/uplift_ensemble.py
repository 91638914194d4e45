"""Per-unit intervals for each treatment's uplift, from a bootstrap ensemble of uplift models.

Method. ``K`` members (8 shipped), each the shipped ``UpliftModel`` architecture trained
on its own bootstrap resample of the training split (resampled within each arm, so every
member sees the experiment's arm sizes) with its own initialisation seed, early-stopped on
the same validation split and sharing one feature spec. The members' spread is the
sampling and optimisation variability of the estimated uplift. A unit's interval for
treatment ``t`` in outcome ``o`` is

    mean_k u_k  +-  z(level) * scale_o * sd_k u_k,     u_k = member k's uplift of t over control

where ``scale_o >= 1`` is fitted per outcome on the validation split (``fit_interval_scale``):
a bootstrap of a regularised, early-stopped network sees its variance but not its bias, and
the scale widens the intervals by as much as the validation data says they miss. The floor
of 1 means the data can widen the ensemble's intervals but never narrow them.

Calibration can only be checked where the truth is observable: for groups of customers.
``group_calibration`` sorts held-out customers into groups (deciles) by predicted uplift and
asks, per group, whether the experiment's own difference in means lies where the model's
interval of the group mean plus the difference's sampling error says it should
(``z = (observed - predicted) / sqrt(model_sd^2 + se^2)``; calibrated: ``|z| <= 1.96`` in
about 95% of groups, mean ``z^2`` about 1).

Serving cost: the ``K`` members run as one stacked module (``StackedUpliftModule``), a few
batched matmuls per request batch whatever ``K`` is.
"""

from __future__ import annotations

import importlib.resources
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any, Literal

import msgspec
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nudgeserve import __version__
from nudgeserve.models.errors import CheckpointError
from nudgeserve.models.evaluation.metrics import ate_difference_in_means
from nudgeserve.models.learn.checkpoint import (
    checkpoint_paths,
    load_verified_weights,
    read_versioned_metadata,
    write_weights_and_metadata,
)
from nudgeserve.models.learn.datasets import HillstromData
from nudgeserve.models.learn.features import HillstromFeatures, HillstromFeaturizer
from nudgeserve.models.learn.inference import UpliftPrediction, select_device
from nudgeserve.models.learn.nets import UpliftModel, compose_outcomes
from nudgeserve.models.learn.training import (
    HillstromTrainConfig,
    _data_file,
    _format_table,
    _hillstrom_tensors,
    _seed_everything,
    fit,
    hillstrom_base_rates,
    hillstrom_splits,
    uplift_loss,
)
from nudgeserve.models.specs import (
    HILLSTROM_OUTCOMES,
    HillstromArchitecture,
    HillstromFeatureSpec,
    TrainingInfo,
)

__all__ = [
    "DEFAULT_ENSEMBLE",
    "ENSEMBLE_KIND",
    "CalibrationSummary",
    "EnsemblePrediction",
    "EnsembleTrainConfig",
    "EnsembleTrainResult",
    "GroupCalibration",
    "StackedUpliftModule",
    "UpliftEnsemble",
    "UpliftEnsembleMetadata",
    "UpliftInterval",
    "bootstrap_within_arms",
    "calibration_summary",
    "calibration_table",
    "default_ensemble_path",
    "fit_interval_scale",
    "group_calibration",
    "load_uplift_ensemble",
    "read_ensemble_metadata",
    "save_uplift_ensemble",
    "train_uplift_ensemble",
]

ENSEMBLE_KIND = "hillstrom_uplift_ensemble"
ENSEMBLE_FORMAT_VERSION = 1
DEFAULT_ENSEMBLE = "hillstrom_ensemble"


def _z(level: float) -> float:
    """Two-sided normal quantile: ``level`` 0.95 -> 1.96."""
    if isinstance(level, bool) or not isinstance(level, int | float):
        raise TypeError(f"level must be a number in (0, 1), got {type(level).__name__}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    return NormalDist().inv_cdf(0.5 + level / 2.0)


# ---------------------------------------------------------------------------- serving


# On CPU, batched matmuls over the members beat a loop over them while per-call overhead
# dominates (2.5x at 128 rows, one thread); on these thin [rows, 32] shapes the two are even
# near 1,000 rows and the loop of one addmm per member wins beyond (1.1x at 4,096).
_CPU_LOOP_FROM_ROWS = 1024


class StackedUpliftModule(nn.Module):
    """``K`` ``UpliftModel`` members evaluated together.

    forward(categorical: int64[B, C], numeric: float32[B, N]) -> float32[K, B, 3, T]:
    member k's (P(visit), P(conversion), E[spend]) per treatment, equal to
    ``members[k](categorical, numeric)``.
    """

    def __init__(self, members: Sequence[UpliftModel]) -> None:
        super().__init__()
        if not members:
            raise ValueError("members must hold at least one UpliftModel")
        first = members[0]
        for m in members:
            if not isinstance(m, UpliftModel):
                raise TypeError(f"members must be UpliftModel, got {type(m).__name__}")
            if m.embedding.weight.shape != first.embedding.weight.shape or len(m.heads) != len(
                first.heads
            ):
                raise ValueError("members must share one architecture")
        k = len(members)
        vocabulary, dim = first.embedding.weight.shape
        n_embedded = first.n_categorical * dim
        with torch.no_grad():

            def stack(get) -> torch.Tensor:
                return torch.stack([get(m).detach().float() for m in members]).contiguous()

            # One table for all members: member k's rows start at k * vocabulary.
            self.register_buffer(
                "embedding", stack(lambda m: m.embedding.weight).reshape(k * vocabulary, dim)
            )
            self.register_buffer("member_offsets", (torch.arange(k) * vocabulary).view(k, 1, 1))
            self.register_buffer("categorical_offsets", first.categorical_offsets.clone())
            # The first layer split by input block, so no [K, B, F] concatenation is built.
            self.register_buffer("w1_embedded", stack(lambda m: m.trunk[0].weight.T[:n_embedded]))
            self.register_buffer("w1_numeric", stack(lambda m: m.trunk[0].weight.T[n_embedded:]))
            self.register_buffer("b1", stack(lambda m: m.trunk[0].bias[None, :]))
            self.register_buffer("w2", stack(lambda m: m.trunk[2].weight.T))
            self.register_buffer("b2", stack(lambda m: m.trunk[2].bias[None, :]))
            self.register_buffer(
                "head_weight", stack(lambda m: torch.cat([h.weight for h in m.heads], dim=0).T)
            )
            self.register_buffer(
                "head_bias", stack(lambda m: torch.cat([h.bias for h in m.heads], dim=0)[None, :])
            )
        self.n_members = k
        self.n_treatments = first.n_treatments

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        k, b = self.n_members, categorical.shape[0]
        rows = categorical + self.categorical_offsets
        if categorical.device.type == "cpu" and b >= _CPU_LOOP_FROM_ROWS:
            raw = torch.stack([self._member_raw(i, rows, numeric) for i in range(k)])
        else:
            embedded = F.embedding(rows.unsqueeze(0) + self.member_offsets, self.embedding)
            hidden = torch.baddbmm(self.b1, embedded.reshape(k, b, -1), self.w1_embedded)
            hidden = F.relu(hidden + torch.matmul(numeric, self.w1_numeric))
            hidden = F.relu(torch.baddbmm(self.b2, hidden, self.w2))
            raw = torch.baddbmm(self.head_bias, hidden, self.head_weight)
        out = compose_outcomes(raw.view(k * b, self.n_treatments, 3))
        return out.view(k, b, 3, self.n_treatments)

    def _member_raw(self, i: int, rows: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        """Member ``i``'s head outputs float32[B, 3T] with one addmm per layer."""
        embedded = F.embedding(rows + self.member_offsets[i, 0, 0], self.embedding)
        hidden = torch.addmm(self.b1[i], embedded.flatten(1), self.w1_embedded[i])
        hidden = F.relu(torch.addmm(hidden, numeric, self.w1_numeric[i]))
        hidden = F.relu(torch.addmm(self.b2[i], hidden, self.w2[i]))
        return torch.addmm(self.head_bias[i], hidden, self.head_weight[i])


@dataclass(frozen=True)
class UpliftInterval:
    """Uplift of each treatment over the control in one outcome, with intervals.

    mean, sd, low, high: float32[B, T] (the control's column is 0); ``sd`` already
        includes the fitted ``scale``; ``low``/``high`` = mean -+ z(level) * sd.
    baseline: float32[B] the predicted outcome with no intervention (members' mean).
    """

    outcome: str
    level: float
    scale: float
    mean: np.ndarray
    sd: np.ndarray
    low: np.ndarray
    high: np.ndarray
    baseline: np.ndarray
    treatments: tuple[str, ...]
    control_index: int


@dataclass(frozen=True)
class EnsemblePrediction:
    """What every member predicts for a batch of B customers.

    members: float32[K, B, 3, T] (outcomes in ``HILLSTROM_OUTCOMES`` order).
    interval_scale: ``{outcome: scale}`` applied to the members' sd by ``uplift``.
    """

    members: np.ndarray
    treatments: tuple[str, ...]
    control_index: int
    interval_scale: Mapping[str, float]

    def __len__(self) -> int:
        return int(self.members.shape[1])

    def mean(self) -> UpliftPrediction:
        """The members' mean prediction, as the single model's ``UpliftPrediction``."""
        m = self.members.mean(axis=0, dtype=np.float64).astype(np.float32)
        return UpliftPrediction(m[:, 0], m[:, 1], m[:, 2], self.treatments, self.control_index)

    def member_uplift(self, outcome: str) -> np.ndarray:
        """float32[K, B, T]: each member's uplift over the control (control column 0)."""
        if outcome not in HILLSTROM_OUTCOMES:
            raise ValueError(f"outcome must be one of {HILLSTROM_OUTCOMES}, got {outcome!r}")
        values = self.members[:, :, HILLSTROM_OUTCOMES.index(outcome), :]
        c = self.control_index
        return values - values[:, :, c : c + 1]

    def uplift(self, outcome: str = "visit", level: float = 0.95) -> UpliftInterval:
        """Mean uplift and its interval at ``level`` for every customer and treatment."""
        z = _z(level)
        u = self.member_uplift(outcome).astype(np.float64)
        scale = float(self.interval_scale.get(outcome, 1.0))
        mean = u.mean(axis=0)
        sd = (u.std(axis=0, ddof=1) if u.shape[0] > 1 else np.zeros_like(mean)) * scale
        baseline = self.members[:, :, HILLSTROM_OUTCOMES.index(outcome), self.control_index]

        def f32(a: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(a, dtype=np.float32)

        return UpliftInterval(
            outcome=outcome,
            level=float(level),
            scale=scale,
            mean=f32(mean),
            sd=f32(sd),
            low=f32(mean - z * sd),
            high=f32(mean + z * sd),
            baseline=f32(baseline.mean(axis=0, dtype=np.float64)),
            treatments=self.treatments,
            control_index=self.control_index,
        )


class UpliftEnsembleMetadata(msgspec.Struct, frozen=True, kw_only=True):
    """Stored beside the ensemble's weights (``<name>.json``).

    interval_scale: ``{outcome: scale >= 1}`` fitted on the validation split.
    calibration: group-level calibration summaries (``CalibrationSummary`` as dicts) on
        the validation split (where the scale was fitted) and the held-out test split.
    weights_sha256: SHA-256 of the ``.safetensors`` file, checked on load.
    """

    kind: Literal["hillstrom_uplift_ensemble"]
    feature_spec: HillstromFeatureSpec
    architecture: HillstromArchitecture
    n_members: int
    member_seeds: tuple[int, ...]
    member_best_epochs: tuple[int, ...]
    resampling: str
    interval_scale: dict[str, float]
    training: TrainingInfo
    calibration: dict[str, Any]
    weights_sha256: str
    nudgeserve_version: str
    format_version: int = ENSEMBLE_FORMAT_VERSION


class UpliftEnsemble:
    """The ensemble on its device: featurize raw columns, predict every member at once.

    members: trained ``UpliftModel``s sharing ``metadata.feature_spec``.
    device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda[:i]"``.
    """

    def __init__(
        self,
        members: Sequence[UpliftModel],
        metadata: UpliftEnsembleMetadata,
        *,
        device: str | torch.device = "auto",
    ) -> None:
        if not isinstance(metadata, UpliftEnsembleMetadata):
            raise TypeError(
                f"metadata must be an UpliftEnsembleMetadata, got {type(metadata).__name__}"
            )
        if len(members) != metadata.n_members:
            raise ValueError(
                f"members has {len(members)} models but metadata says n_members="
                f"{metadata.n_members}"
            )
        self.metadata = metadata
        self.spec = metadata.feature_spec
        self.featurizer = HillstromFeaturizer(self.spec)
        self.treatments = tuple(self.spec.treatments)
        self.control_index = self.spec.control_index
        self.device = select_device(device)
        self.module = StackedUpliftModule(list(members)).to(self.device).eval()

    @property
    def n_members(self) -> int:
        return self.module.n_members

    def predict(self, features: HillstromFeatures) -> EnsemblePrediction:
        """features (``featurizer.transform``) -> ``EnsemblePrediction`` [K, B, 3, T]."""
        categorical = np.ascontiguousarray(features.categorical, dtype=np.int64)
        numeric = np.ascontiguousarray(features.numeric, dtype=np.float32)
        if categorical.shape[0] == 0:
            out = np.zeros((self.n_members, 0, 3, len(self.treatments)), dtype=np.float32)
        else:
            with torch.inference_mode():
                out = self.module(
                    torch.from_numpy(categorical).to(self.device),
                    torch.from_numpy(numeric).to(self.device),
                )
                out = out.float().cpu().numpy()
        return EnsemblePrediction(
            out, self.treatments, self.control_index, dict(self.metadata.interval_scale)
        )

    def score(self, columns: Mapping[str, Any]) -> EnsemblePrediction:
        """Featurize raw customer columns (as ``HillstromFeaturizer.transform``), predict."""
        return self.predict(self.featurizer.transform(columns))

    def warmup(self, batch_sizes: tuple[int, ...] = (1, 64)) -> None:
        """Run each batch size once so the first request pays no first-call cost."""
        for b in batch_sizes:
            self.predict(
                HillstromFeatures(
                    np.zeros((b, len(self.spec.categorical_names)), dtype=np.int64),
                    np.zeros((b, len(self.spec.numeric_names)), dtype=np.float32),
                )
            )


def _build_member(metadata: UpliftEnsembleMetadata) -> UpliftModel:
    spec, arch = metadata.feature_spec, metadata.architecture
    return UpliftModel(
        n_categorical=len(spec.categorical_names),
        n_buckets=spec.n_buckets,
        n_numeric=len(spec.numeric_names),
        n_treatments=len(spec.treatments),
        embedding_dim=arch.embedding_dim,
        hidden=arch.hidden,
    )


def save_uplift_ensemble(
    members: Sequence[nn.Module], metadata: UpliftEnsembleMetadata, path: str | Path
) -> Path:
    """Write every member's weights into one ``<path>.safetensors`` (keys
    ``member<k>.<param>``) and the metadata to ``<path>.json``; returns the weights path."""
    state = {
        f"member{k}.{name}": tensor.detach().to("cpu").contiguous()
        for k, member in enumerate(members)
        for name, tensor in member.state_dict().items()
    }
    return write_weights_and_metadata(
        path, state, metadata, kind=ENSEMBLE_KIND, n_members=len(members)
    )


def default_ensemble_path() -> Path:
    """Weights path of the shipped ensemble (``checkpoints/hillstrom_ensemble``)."""
    root = importlib.resources.files("nudgeserve.models") / "checkpoints"
    return Path(str(root / f"{DEFAULT_ENSEMBLE}.safetensors"))


def read_ensemble_metadata(path: str | Path) -> UpliftEnsembleMetadata:
    """The ensemble's metadata, validated; raises CheckpointError."""
    _, metadata_path = checkpoint_paths(path)
    return read_versioned_metadata(
        metadata_path, UpliftEnsembleMetadata, ENSEMBLE_FORMAT_VERSION, "ensemble"
    )


def load_uplift_ensemble(
    path: str | Path | None = None, *, device: str | torch.device = "auto"
) -> UpliftEnsemble:
    """Load an ensemble (default: the shipped one), checking its weights' SHA-256."""
    path = default_ensemble_path() if path is None else Path(path)
    weights_path, _ = checkpoint_paths(path)
    metadata = read_ensemble_metadata(path)
    state = load_verified_weights(weights_path, metadata.weights_sha256, "ensemble")
    members = []
    for k in range(metadata.n_members):
        prefix = f"member{k}."
        member = _build_member(metadata)
        try:
            member.load_state_dict(
                {n[len(prefix) :]: t for n, t in state.items() if n.startswith(prefix)},
                strict=True,
            )
        except RuntimeError as exc:
            raise CheckpointError(
                f"ensemble weights {weights_path}: member {k} does not fit its architecture: {exc}"
            ) from None
        members.append(member.eval())
    return UpliftEnsemble(members, metadata, device=device)


# ------------------------------------------------------------------------- calibration


class GroupCalibration(msgspec.Struct, frozen=True, kw_only=True):
    """One group of customers (``group`` 0 = lowest predicted uplift of ``treatment``).

    predicted: the members' mean uplift averaged over the group's rows; model_sd: sd of
    that group mean across members, times the interval scale; observed / observed_se:
    the experiment's difference in means in the group and its Neyman standard error;
    z = (observed - predicted) / sqrt(model_sd^2 + observed_se^2).
    """

    treatment: str
    outcome: str
    group: int
    n_treated: int
    n_control: int
    predicted: float
    model_sd: float
    observed: float
    observed_se: float
    z: float


class CalibrationSummary(msgspec.Struct, frozen=True, kw_only=True):
    """Group-level calibration of one outcome's intervals on one split.

    coverage: share of groups with ``|z| <= z(level)`` (calibrated: about ``level``).
    coverage_sampling_only: the same share when the model's sd is ignored (treating the
        prediction as exact): how much the intervals add beyond the experiment's noise.
    mean_z2: mean of z^2 (calibrated: about 1; above 1: intervals too narrow or biased).
    mean_model_sd / mean_observed_se: average sizes of the two error terms.
    mean_unit_sd: average per-customer sd (scaled) of the uplift, over treatments.
    """

    split: str
    outcome: str
    level: float
    interval_scale: float
    n_groups: int
    coverage: float
    coverage_sampling_only: float
    mean_z2: float
    mean_model_sd: float
    mean_observed_se: float
    mean_unit_sd: float
    groups: tuple[GroupCalibration, ...]


def group_calibration(
    prediction: EnsemblePrediction,
    treatment: np.ndarray,
    y: np.ndarray,
    outcome: str,
    *,
    n_groups: int = 10,
    scale: float | None = None,
) -> tuple[GroupCalibration, ...]:
    """Groups of held-out customers by predicted uplift, predicted vs observed effect.

    prediction: the ensemble's prediction for n customers; treatment: int64[n] their
    randomised arms; y: float64[n] the observed ``outcome``. For each treatment, the
    customers of that arm and of the control are cut into ``n_groups`` equal-size groups
    by the members' mean predicted uplift. scale: the sd multiplier (default the
    prediction's ``interval_scale`` for ``outcome``).
    """
    treatment = np.asarray(treatment)
    y = np.asarray(y, dtype=np.float64)
    n = len(prediction)
    if treatment.shape != (n,) or y.shape != (n,):
        raise ValueError(
            f"treatment and y must have shape ({n},) like the prediction, got "
            f"{treatment.shape} and {y.shape}"
        )
    if isinstance(n_groups, bool) or not isinstance(n_groups, int) or n_groups < 1:
        raise ValueError(f"n_groups must be an int >= 1, got {n_groups!r}")
    if scale is None:
        scale = float(prediction.interval_scale.get(outcome, 1.0))
    uplift = prediction.member_uplift(outcome).astype(np.float64)  # [K, n, T]
    control = prediction.control_index
    out = []
    for arm, arm_name in enumerate(prediction.treatments):
        if arm == control:
            continue
        rows = np.flatnonzero((treatment == arm) | (treatment == control))
        members = uplift[:, rows, arm]
        order = np.argsort(members.mean(axis=0), kind="stable")
        for g, part in enumerate(np.array_split(order, n_groups)):
            group_rows = rows[part]
            ate = ate_difference_in_means(y[group_rows], treatment[group_rows], arm, control)
            member_means = members[:, part].mean(axis=1)
            model_sd = scale * float(member_means.std(ddof=1)) if member_means.size > 1 else 0.0
            predicted = float(member_means.mean())
            total_sd = math.sqrt(model_sd**2 + ate.se**2)
            out.append(
                GroupCalibration(
                    treatment=arm_name,
                    outcome=outcome,
                    group=g,
                    n_treated=ate.n_treated,
                    n_control=ate.n_control,
                    predicted=predicted,
                    model_sd=model_sd,
                    observed=ate.ate,
                    observed_se=ate.se,
                    z=(ate.ate - predicted) / total_sd if total_sd > 0 else math.nan,
                )
            )
    return tuple(out)


def fit_interval_scale(groups: Sequence[GroupCalibration]) -> float:
    """The sd multiplier (>= 1) that makes the groups' z^2 average 1, by moments.

    With d = observed - predicted, E[d^2] = scale^2 model_sd^2 + se^2 when the intervals
    are right up to the factor; so scale^2 = sum(d^2 - se^2) / sum(model_sd^2), floored
    at 1. ``groups`` must have been computed with scale 1.
    """
    d2 = sum((g.observed - g.predicted) ** 2 - g.observed_se**2 for g in groups)
    sd2 = sum(g.model_sd**2 for g in groups)
    if sd2 <= 0:
        return 1.0
    return float(math.sqrt(max(1.0, d2 / sd2)))


def calibration_summary(
    prediction: EnsemblePrediction,
    treatment: np.ndarray,
    y: np.ndarray,
    outcome: str,
    *,
    split: str,
    n_groups: int = 10,
    level: float = 0.95,
    scale: float | None = None,
) -> CalibrationSummary:
    """``group_calibration`` and its coverage statistics (see ``CalibrationSummary``)."""
    z = _z(level)
    if scale is None:
        scale = float(prediction.interval_scale.get(outcome, 1.0))
    groups = group_calibration(prediction, treatment, y, outcome, n_groups=n_groups, scale=scale)
    zs = np.array([g.z for g in groups])
    d = np.array([g.observed - g.predicted for g in groups])
    se = np.array([g.observed_se for g in groups])
    u = prediction.member_uplift(outcome).astype(np.float64)
    treated_columns = [a for a in range(u.shape[2]) if a != prediction.control_index]
    unit_sd = u[:, :, treated_columns].std(axis=0, ddof=1) * scale if u.shape[0] > 1 else 0.0
    return CalibrationSummary(
        split=split,
        outcome=outcome,
        level=float(level),
        interval_scale=float(scale),
        n_groups=len(groups),
        coverage=float(np.mean(np.abs(zs) <= z)),
        coverage_sampling_only=float(np.mean(np.abs(d) <= z * se)),
        mean_z2=float(np.mean(zs**2)),
        mean_model_sd=float(np.mean([g.model_sd for g in groups])),
        mean_observed_se=float(np.mean(se)),
        mean_unit_sd=float(np.mean(unit_sd)),
        groups=groups,
    )


def calibration_table(summaries: Sequence[CalibrationSummary]) -> str:
    """One line per (split, outcome) summary."""
    rows = [
        [
            s.split,
            s.outcome,
            f"{s.interval_scale:.2f}",
            str(s.n_groups),
            f"{s.coverage:.2f}",
            f"{s.coverage_sampling_only:.2f}",
            f"{s.mean_z2:.2f}",
            f"{s.mean_model_sd:.3g}",
            f"{s.mean_observed_se:.3g}",
            f"{s.mean_unit_sd:.3g}",
        ]
        for s in summaries
    ]
    return _format_table(
        [
            "split",
            "outcome",
            "scale",
            "groups",
            "coverage",
            "coverage (sampling only)",
            "mean z^2",
            "group model sd",
            "group DIM se",
            "unit sd",
        ],
        rows,
    )


# ---------------------------------------------------------------------------- training


class EnsembleTrainConfig(HillstromTrainConfig, kw_only=True):
    """``HillstromTrainConfig`` plus the ensemble's size and calibration grouping.

    n_members: models in the ensemble; member k uses seed ``seed + k`` for both its
        bootstrap resample and its initialisation.
    calibration_groups: groups per treatment for the calibration (deciles by default).
    """

    n_members: int = 8
    calibration_groups: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_members < 2:
            raise ValueError(
                f"n_members must be >= 2 (an interval needs a spread), got {self.n_members}"
            )
        if self.calibration_groups < 1:
            raise ValueError(f"calibration_groups must be >= 1, got {self.calibration_groups}")


@dataclass
class EnsembleTrainResult:
    """Trained members (CPU, eval mode), the ensemble's metadata and the run's summary."""

    members: list[UpliftModel]
    metadata: UpliftEnsembleMetadata
    summary: str


def bootstrap_within_arms(treatment: np.ndarray, seed: int) -> np.ndarray:
    """int64[n] row indices: each arm's rows resampled with replacement to its own size."""
    rng = np.random.default_rng(seed)
    treatment = np.asarray(treatment)
    parts = []
    for arm in np.unique(treatment):
        rows = np.flatnonzero(treatment == arm)
        parts.append(rows[rng.integers(0, rows.shape[0], rows.shape[0])])
    return np.sort(np.concatenate(parts)).astype(np.int64)


def _train_member(
    k: int,
    seed: int,
    train: HillstromData,
    featurizer: HillstromFeaturizer,
    validation: dict,
    base_rates: tuple[float, float, float],
    config: EnsembleTrainConfig,
    device: torch.device,
) -> tuple[UpliftModel, int]:
    sample = train.take(bootstrap_within_arms(train.treatment, seed))
    generator = _seed_everything(seed)
    spec = featurizer.spec
    model = UpliftModel(
        n_categorical=len(spec.categorical_names),
        n_buckets=spec.n_buckets,
        n_numeric=len(spec.numeric_names),
        n_treatments=len(spec.treatments),
        embedding_dim=config.embedding_dim,
        hidden=config.hidden,
        base_rates=base_rates,
    ).to(device)
    data = _hillstrom_tensors(featurizer, sample, device)
    _, best_epoch = fit(
        model,
        lambda rows: uplift_loss(model, data, rows),
        lambda: float(uplift_loss(model, validation)),
        len(sample),
        config,
        device,
        generator,
        f"ensemble member {k + 1}/{config.n_members}",
    )
    return model.cpu().eval(), best_epoch


def train_uplift_ensemble(
    config: EnsembleTrainConfig | None = None, *, command: str = ""
) -> EnsembleTrainResult:
    """Train the ensemble, fit the interval scale on validation, check it on test."""
    config = config or EnsembleTrainConfig()
    started = time.perf_counter()
    device = select_device(config.device)
    data, train, val, test = hillstrom_splits(config.max_rows, config.split, config.split_seed)
    # Fitted on the whole training split (not a resample) so every member shares the
    # featurizer, which the stacked module and the server's single featurize need.
    spec = HillstromFeaturizer.fit_spec(train, n_buckets=config.n_buckets)
    featurizer = HillstromFeaturizer(spec)
    base_rates = hillstrom_base_rates(train)
    validation = _hillstrom_tensors(featurizer, val, device)
    members, seeds, best_epochs = [], [], []
    for k in range(config.n_members):
        seed = config.seed + k
        model, best = _train_member(
            k, seed, train, featurizer, validation, base_rates, config, device
        )
        members.append(model)
        seeds.append(seed)
        best_epochs.append(best)

    info = TrainingInfo(
        command=command,
        seed=config.seed,
        epochs_requested=config.epochs,
        epochs_run=max(best_epochs),
        best_epoch=max(best_epochs),
        device=str(device),
        data=(_data_file(data.source, len(data)),),
        split=(
            f"stratified by arm x visit, fractions {config.split} (train/validation/test), "
            f"split_seed {config.split_seed}; each member trains on a bootstrap resample "
            "(within arms) of the training split"
        ),
        train_rows=len(train),
        validation_rows=len(val),
        torch_version=str(torch.__version__),
        seconds=0.0,
    )
    metadata = UpliftEnsembleMetadata(
        kind=ENSEMBLE_KIND,
        feature_spec=spec,
        architecture=HillstromArchitecture(
            embedding_dim=config.embedding_dim, hidden=config.hidden
        ),
        n_members=config.n_members,
        member_seeds=tuple(seeds),
        member_best_epochs=tuple(best_epochs),
        resampling="bootstrap within arms of the training split; member k seed = seed + k",
        interval_scale={o: 1.0 for o in HILLSTROM_OUTCOMES},
        training=info,
        calibration={},
        weights_sha256="",
        nudgeserve_version=__version__,
    )
    ensemble = UpliftEnsemble(members, metadata, device="cpu")
    val_pred = ensemble.score(val.raw_columns())
    test_pred = ensemble.score(test.raw_columns())
    scales = {
        o: fit_interval_scale(
            group_calibration(
                val_pred,
                val.treatment,
                val.outcome(o),
                o,
                n_groups=config.calibration_groups,
                scale=1.0,
            )
        )
        for o in HILLSTROM_OUTCOMES
    }
    summaries = [
        calibration_summary(
            pred,
            split_data.treatment,
            split_data.outcome(o),
            o,
            split=name,
            n_groups=config.calibration_groups,
            scale=scales[o],
        )
        for name, pred, split_data in (("validation", val_pred, val), ("test", test_pred, test))
        for o in HILLSTROM_OUTCOMES
    ]
    calibration = {
        "validation": [msgspec.to_builtins(s) for s in summaries if s.split == "validation"],
        "test": [msgspec.to_builtins(s) for s in summaries if s.split == "test"],
    }
    info = msgspec.structs.replace(info, seconds=round(time.perf_counter() - started, 2))
    metadata = msgspec.structs.replace(
        metadata, interval_scale=scales, calibration=calibration, training=info
    )
    summary = (
        f"Uplift ensemble: {config.n_members} members, best epochs {best_epochs}; interval "
        "scale fitted on the validation split, coverage checked on the held-out test split "
        f"({config.calibration_groups} groups per treatment by predicted uplift, 95% level)\n"
        + calibration_table(summaries)
    )
    return EnsembleTrainResult(members, metadata, summary)
