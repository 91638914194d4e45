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

Calibration is checked on groups of held-out customers
(``nudgeserve.models.evaluation.uplift_calibration``, which also fits the scale); training
is ``uplift_ensemble_training``.

Serving cost: the ``K`` members run as one stacked module (``StackedUpliftModule``), a few
batched matmuls per request batch whatever ``K`` is.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nudgeserve.models.errors import CheckpointError
from nudgeserve.models.evaluation.stats import two_sided_z
from nudgeserve.models.learn.checkpoint import (
    checkpoint_paths,
    load_verified_weights,
    read_versioned_metadata,
    write_weights_and_metadata,
)
from nudgeserve.models.learn.features import HillstromFeatures, HillstromFeaturizer
from nudgeserve.models.learn.inference import UpliftPrediction, select_device
from nudgeserve.models.learn.nets import UpliftModel, compose_outcomes
from nudgeserve.models.specs import (
    HILLSTROM_OUTCOMES,
    HillstromArchitecture,
    HillstromFeatureSpec,
    TrainingInfo,
)

__all__ = [
    "DEFAULT_ENSEMBLE",
    "ENSEMBLE_KIND",
    "EnsemblePrediction",
    "StackedUpliftModule",
    "UpliftEnsemble",
    "UpliftEnsembleMetadata",
    "UpliftInterval",
    "default_ensemble_path",
    "load_uplift_ensemble",
    "read_ensemble_metadata",
    "save_uplift_ensemble",
]

ENSEMBLE_KIND = "hillstrom_uplift_ensemble"
ENSEMBLE_FORMAT_VERSION = 1
DEFAULT_ENSEMBLE = "hillstrom_ensemble"


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
        z = two_sided_z(level)
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
