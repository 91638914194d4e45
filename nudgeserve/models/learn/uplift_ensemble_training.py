"""Training the uplift ensemble: members on bootstrap resamples, intervals calibrated.

Member k trains the shipped ``UpliftModel`` architecture on its own bootstrap resample of
the training split (resampled within each arm, so every member sees the experiment's arm
sizes) with seed ``seed + k`` for both the resample and the initialisation, early-stopped
on the shared validation split. The interval scale per outcome is then fitted on the
validation split and checked on the held-out test split
(``nudgeserve.models.evaluation.uplift_calibration``); the method is stated in
``uplift_ensemble``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import msgspec
import numpy as np
import torch

from nudgeserve import __version__
from nudgeserve.models.evaluation.uplift_calibration import (
    calibration_summary,
    calibration_table,
    fit_interval_scale,
    group_calibration,
)
from nudgeserve.models.learn.datasets import HillstromData
from nudgeserve.models.learn.features import HillstromFeaturizer
from nudgeserve.models.learn.inference import select_device
from nudgeserve.models.learn.nets import UpliftModel
from nudgeserve.models.learn.training import (
    HillstromTrainConfig,
    _data_file,
    _hillstrom_tensors,
    _seed_everything,
    fit,
    hillstrom_base_rates,
    hillstrom_splits,
    uplift_loss,
)
from nudgeserve.models.learn.uplift_ensemble import (
    ENSEMBLE_KIND,
    UpliftEnsemble,
    UpliftEnsembleMetadata,
)
from nudgeserve.models.specs import HILLSTROM_OUTCOMES, HillstromArchitecture, TrainingInfo

__all__ = [
    "EnsembleTrainConfig",
    "EnsembleTrainResult",
    "bootstrap_within_arms",
    "train_uplift_ensemble",
]


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
