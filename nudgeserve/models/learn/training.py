"""Training and evaluation of the two shipped models on the real data.

``train_obd`` fits the click model on the uniform-random OBD log (unbiased: every item
was equally likely at every slot), early-stops on a later-in-time validation split,
Platt-calibrates on the whole random log and evaluates on the validation split and on
the whole Bernoulli-Thompson (``bts``) log, which no step of training sees, against the
global-CTR and per-item-CTR baselines. ``train_hillstrom``
fits the uplift model on a stratified split and reports difference-in-means ATEs and the
model's Qini against random targeting on the held-out test part.

Runs are deterministic for a seed on CPU (data order comes from a seeded torch
generator, initial weights from ``torch.manual_seed``); on CUDA, embedding gradients use
atomics, so the last digits may differ between runs.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from nudgeserve import __version__
from nudgeserve.models.evaluation.metrics import (
    Interval,
    ate_difference_in_means,
    bootstrap_classification,
    qini_report,
    smoothed_rate_by_group,
    to_jsonable,
)
from nudgeserve.models.evaluation.tables import format_table
from nudgeserve.models.learn.datasets import (
    DATA_DIR,
    HillstromData,
    ObdLog,
    file_sha256,
    hillstrom_strata,
    load_hillstrom,
    load_obd,
    stratified_split,
    time_split,
)
from nudgeserve.models.learn.features import HillstromFeaturizer, ObdFeaturizer
from nudgeserve.models.learn.inference import select_device
from nudgeserve.models.learn.nets import ObdClickModel, UpliftModel
from nudgeserve.models.specs import (
    HILLSTROM_OUTCOMES,
    CheckpointMetadata,
    DataFile,
    HillstromArchitecture,
    ObdArchitecture,
    TrainingInfo,
)


class TrainConfig(msgspec.Struct, kw_only=True):
    """Settings shared by both trainers (each has its own defaults below).

    epochs: maximum epochs; training stops earlier when the validation loss has not
        improved for ``patience`` epochs, and the best epoch's weights are kept.
    max_rows: train on the first ``max_rows`` rows only (quick runs and tests).
    bootstrap: resamples for the bootstrap intervals of the evaluation.
    """

    epochs: int = 40
    seed: int = 0
    device: str = "auto"
    batch_size: int = 256
    learning_rate: float = 0.01
    weight_decay: float = 1e-3
    patience: int = 5
    max_rows: int | None = None
    bootstrap: int = 1000
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience", "bootstrap"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.max_rows is not None and self.max_rows < 100:
            raise ValueError(f"max_rows must be >= 100 (or None for all), got {self.max_rows}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


class ObdTrainConfig(TrainConfig, kw_only=True):
    """OBD click-model training; ``campaign`` picks the catalog (``all`` by default)."""

    campaign: str = "all"
    validation_fraction: float = 0.2
    n_buckets: int = 64
    dim: int = 8
    hidden: int = 16
    epochs: int = 40
    batch_size: int = 256
    learning_rate: float = 0.01
    weight_decay: float = 1e-2


class HillstromTrainConfig(TrainConfig, kw_only=True):
    """Hillstrom uplift-model training; ``split_seed`` fixes the train/val/test split
    independently of the training seed, so seeds are compared on the same test rows."""

    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    split_seed: int = 0
    n_buckets: int = 64
    embedding_dim: int = 4
    hidden: int = 32
    epochs: int = 30
    batch_size: int = 512
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    patience: int = 3
    qini_resamples: int = 200


@dataclass
class TrainResult:
    """A trained module (CPU, eval mode), its checkpoint metadata and the run's record."""

    module: nn.Module
    metadata: CheckpointMetadata
    history: list[dict[str, float]] = field(default_factory=list)
    summary: str = ""


def _data_file(path: Any, rows: int) -> DataFile:
    return DataFile(
        path=f"nudgeserve/models/data/{path.relative_to(DATA_DIR).as_posix()}",
        sha256=file_sha256(path),
        rows=rows,
    )


def _seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - nothing of ours uses it; third parties might
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def fit(
    module: nn.Module,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    validation_loss: Callable[[], float],
    n_train: int,
    config: TrainConfig,
    device: torch.device,
    generator: torch.Generator,
    description: str,
    no_decay: tuple[str, ...] = (),
) -> tuple[list[dict[str, float]], int]:
    """Mini-batch AdamW with early stopping; restores the best epoch's weights.

    batch_loss(rows: int64[b]) -> scalar loss on those training rows (on ``device``).
    validation_loss() -> mean loss on the validation rows.
    no_decay: parameter names exempt from weight decay (global biases: decaying them
        pulls predictions toward 50%).
    Returns (history, best_epoch) with one ``{"epoch", "train_loss", "val_loss"}`` per
    epoch run.
    """
    decay = [p for n, p in module.named_parameters() if n not in no_decay]
    keep = [p for n, p in module.named_parameters() if n in no_decay]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": keep, "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
    )
    module.eval()
    with torch.no_grad():
        best_loss = validation_loss()
    best_state, best_epoch, stale = copy.deepcopy(module.state_dict()), 0, 0
    history: list[dict[str, float]] = [
        {"epoch": 0, "train_loss": float("nan"), "val_loss": best_loss}
    ]
    bar = tqdm(
        range(1, config.epochs + 1), desc=description, disable=not config.progress, unit="epoch"
    )
    for epoch in bar:
        module.train()
        order = torch.randperm(n_train, generator=generator).to(device)
        total, seen = 0.0, 0
        for start in range(0, n_train, config.batch_size):
            rows = order[start : start + config.batch_size]
            loss = batch_loss(rows)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * rows.shape[0]
            seen += rows.shape[0]
        module.eval()
        with torch.no_grad():
            val = validation_loss()
        history.append({"epoch": epoch, "train_loss": total / seen, "val_loss": val})
        if val < best_loss - 1e-6:
            best_loss, best_epoch, stale = val, epoch, 0
            best_state = copy.deepcopy(module.state_dict())
        else:
            stale += 1
        bar.set_postfix(train=f"{total / seen:.4f}", val=f"{val:.4f}", best=best_epoch)
        if stale >= config.patience:
            break
    bar.close()
    module.load_state_dict(best_state)
    module.eval()
    return history, best_epoch


def fit_platt(
    logits: np.ndarray, y: np.ndarray, prior_sd: float = 0.5, iterations: int = 50
) -> tuple[float, float]:
    """Platt scaling ``sigmoid(a * logit + b)`` fitted by Newton's method.

    logits: float[n] uncalibrated; y: {0,1}[n]. A Gaussian prior centred on the identity
    (a=1, b=0) with standard deviation ``prior_sd`` keeps the two parameters sane when
    the calibration split holds only a handful of clicks.
    Returns (a, b).
    """
    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    theta = np.array([1.0, 0.0])
    prior = np.array([1.0, 0.0])
    ridge = 1.0 / prior_sd**2
    for _ in range(iterations):
        z = theta[0] * x + theta[1]
        p = 1.0 / (1.0 + np.exp(-z))
        design = np.stack([x, np.ones_like(x)], axis=1)
        grad = design.T @ (p - y) + ridge * (theta - prior)
        hess = (design * (p * (1 - p))[:, None]).T @ design + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return float(theta[0]), float(theta[1])


def _ci(interval: Interval, digits: int = 4) -> str:
    return (
        f"{interval.estimate:.{digits}f} [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"
        f" w={interval.width:.{digits}f}"
    )


# ---------------------------------------------------------------------------- OBD


def _obd_tensors(featurizer: ObdFeaturizer, log: ObdLog, device: torch.device) -> dict:
    features = featurizer.transform(log.user_features, log.affinity)
    return {
        "user_buckets": torch.from_numpy(features.user_buckets).to(device),
        "affinity": torch.from_numpy(features.affinity).to(device),
        "item": torch.from_numpy(log.item_id).to(device),
        "position": torch.from_numpy(log.position).to(device),
        "click": torch.from_numpy(log.click.astype(np.float32)).to(device),
    }


def _obd_chosen_logits(model: ObdClickModel, data: dict, rows: torch.Tensor | None = None):
    """Uncalibrated logits float32[b] of the (item, position) each impression showed."""
    if rows is None:
        rows = torch.arange(data["item"].shape[0], device=data["item"].device)
    logits = model.logits(data["user_buckets"][rows], data["affinity"][rows])
    return logits[
        torch.arange(rows.shape[0], device=rows.device), data["position"][rows], data["item"][rows]
    ]


def _obd_probabilities(model: ObdClickModel, data: dict) -> np.ndarray:
    with torch.no_grad():
        logits = _obd_chosen_logits(model, data)
        probs = torch.sigmoid(model.calibration_scale * logits + model.calibration_shift)
    return probs.cpu().numpy().astype(np.float64)


def train_obd(config: ObdTrainConfig | None = None, *, command: str = "") -> TrainResult:
    """Train, calibrate and evaluate the OBD click model (see the module docstring)."""
    config = config or ObdTrainConfig()
    started = time.perf_counter()
    generator = _seed_everything(config.seed)
    device = select_device(config.device)
    log = load_obd("random", config.campaign)
    if config.max_rows is not None:
        log = log.take(slice(0, config.max_rows))
    train, val = time_split(log, config.validation_fraction)
    spec = ObdFeaturizer.fit_spec(
        config.campaign, log.items, train.user_features, n_buckets=config.n_buckets
    )
    featurizer = ObdFeaturizer(spec)
    items = featurizer.item_table(log.items)
    model = ObdClickModel(
        item_categorical_buckets=torch.from_numpy(items.categorical_buckets),
        item_numeric=torch.from_numpy(items.numeric),
        n_positions=spec.n_positions,
        n_user_fields=len(spec.user_feature_names),
        n_buckets=spec.n_buckets,
        dim=config.dim,
        hidden=config.hidden,
        base_rate=max(float(train.click.mean()), 1e-4),
    ).to(device)
    tr, va = _obd_tensors(featurizer, train, device), _obd_tensors(featurizer, val, device)

    def batch_loss(rows: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(
            _obd_chosen_logits(model, tr, rows), tr["click"][rows]
        )

    def validation_loss() -> float:
        return float(F.binary_cross_entropy_with_logits(_obd_chosen_logits(model, va), va["click"]))

    history, best_epoch = fit(
        model,
        batch_loss,
        validation_loss,
        len(train),
        config,
        device,
        generator,
        f"train obd/{config.campaign}",
        no_decay=("bias",),
    )
    # Platt scaling on every random-policy impression (train + validation): the
    # validation split alone holds a handful of clicks, too few to place an intercept
    # (its CTR differs from the training split's by more than calibration should chase).
    # Two parameters barely overfit; the bts log stays untouched for checking calibration.
    with torch.no_grad():
        calib_logits = torch.cat([_obd_chosen_logits(model, tr), _obd_chosen_logits(model, va)])
    calib_clicks = np.concatenate([train.click, val.click])
    scale, shift = fit_platt(calib_logits.cpu().numpy(), calib_clicks)
    model.calibration_scale.fill_(scale)
    model.calibration_shift.fill_(shift)
    model = model.cpu().eval()

    bts = load_obd("bts", config.campaign)
    metrics, summary = evaluate_obd(model, featurizer, train, val, bts, config)
    metrics["calibration_fit"] = {
        "scale": scale,
        "shift": shift,
        "fitted_on": f"random/{config.campaign} train + validation",
    }
    info = TrainingInfo(
        command=command,
        seed=config.seed,
        epochs_requested=config.epochs,
        epochs_run=len(history) - 1,
        best_epoch=best_epoch,
        device=str(device),
        data=(_data_file(log.source, len(log)), _data_file(bts.source, len(bts))),
        split=f"time-ordered: first {1 - config.validation_fraction:.0%} of random/{config.campaign} train, last {config.validation_fraction:.0%} validate; bts/{config.campaign} evaluation only",
        train_rows=len(train),
        validation_rows=len(val),
        torch_version=str(torch.__version__),
        seconds=round(time.perf_counter() - started, 2),
    )
    metadata = CheckpointMetadata(
        kind="obd_click",
        feature_spec=spec,
        architecture=ObdArchitecture(dim=config.dim, hidden=config.hidden),
        training=info,
        metrics=to_jsonable(metrics),
        weights_sha256="",
        nudgeserve_version=__version__,
    )
    return TrainResult(model, metadata, history, summary)


def evaluate_obd(
    model: ObdClickModel,
    featurizer: ObdFeaturizer,
    train: ObdLog,
    validation: ObdLog,
    bts: ObdLog,
    config: ObdTrainConfig,
) -> tuple[dict[str, Any], str]:
    """Model vs global-CTR and per-item-CTR baselines on the validation split and bts.

    Baselines are fitted on the training split; the per-item CTR's shrinkage strength is
    chosen on the validation split (the same care the model gets from early stopping).
    Returns (metrics for the metadata, summary table text).
    """
    global_ctr = float(train.click.mean())
    n_items = featurizer.spec.n_items
    best_strength, best_loss = None, math.inf
    for strength in (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0):
        rates = smoothed_rate_by_group(train.item_id, train.click, n_items, strength)
        p = np.clip(rates[validation.item_id], 1e-7, 1 - 1e-7)
        y = validation.click
        loss = -np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))
        if loss < best_loss:
            best_strength, best_loss = strength, loss
    item_rates = smoothed_rate_by_group(train.item_id, train.click, n_items, best_strength)

    metrics: dict[str, Any] = {
        "train": {"impressions": len(train), "clicks": int(train.click.sum()), "ctr": global_ctr},
        "per_item_prior_strength": best_strength,
        "bootstrap_resamples": config.bootstrap,
    }
    lines = []
    for name, log in (("validation (random, latest)", validation), (f"bts/{bts.campaign}", bts)):
        data = _obd_tensors(featurizer, log, torch.device("cpu"))
        predictions = {
            "global CTR": np.full(len(log), global_ctr),
            "per-item CTR": item_rates[log.item_id],
            "click model": _obd_probabilities(model, data),
        }
        result = bootstrap_classification(
            log.click,
            predictions,
            n_resamples=config.bootstrap,
            seed=config.seed,
            reference="per-item CTR",
        )
        clicks = int(log.click.sum())
        metrics[name] = {"impressions": len(log), "clicks": clicks, "models": result}
        rows = []
        for model_name, values in result.items():
            rows.append(
                [
                    model_name,
                    _ci(values["auc"], 3),
                    _ci(values["log_loss"], 4),
                    _ci(values["calibration"], 2),
                ]
            )
        diff = result["click model"]
        lines.append(
            f"{name}: {len(log)} impressions, {clicks} clicks; paired bootstrap 95% intervals "
            f"({config.bootstrap} resamples), w = interval width\n"
            + format_table(["model", "AUC", "log-loss", "mean pred / observed CTR"], rows)
            + "\nclick model minus per-item CTR: AUC "
            + _ci(diff["auc_minus_per-item CTR"], 3)
            + ", log-loss "
            + _ci(diff["log_loss_minus_per-item CTR"], 4)
        )
    widest = max(
        metrics[k]["models"]["click model"]["auc"].width
        for k in metrics
        if isinstance(metrics[k], dict) and "models" in metrics[k]
    )
    lines.append(
        f"Clicks are rare: AUC intervals are up to {widest:.2f} wide, so differences smaller "
        "than that are not evidence either way."
    )
    return metrics, "\n\n".join(lines)


# ---------------------------------------------------------------------- Hillstrom


def _hillstrom_tensors(featurizer: HillstromFeaturizer, data: HillstromData, device) -> dict:
    features = featurizer.transform(data.raw_columns())
    return {
        "categorical": torch.from_numpy(features.categorical).to(device),
        "numeric": torch.from_numpy(features.numeric).to(device),
        "treatment": torch.from_numpy(data.treatment).to(device),
        "visit": torch.from_numpy(data.visit.astype(np.float32)).to(device),
        "conversion": torch.from_numpy(data.conversion.astype(np.float32)).to(device),
        "spend": torch.from_numpy(data.spend).to(device),
    }


def uplift_loss(model: UpliftModel, data: dict, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss of the observed arm's head: BCE(visit) + BCE(conversion | visit) on
    visitors + Gamma deviance of spend (log link) on converters."""
    if rows is None:
        rows = torch.arange(data["treatment"].shape[0], device=data["treatment"].device)
    raw = model.raw(data["categorical"][rows], data["numeric"][rows])
    raw = raw[torch.arange(rows.shape[0], device=rows.device), data["treatment"][rows]]
    visit, conversion, spend = data["visit"][rows], data["conversion"][rows], data["spend"][rows]
    loss = F.binary_cross_entropy_with_logits(raw[:, 0], visit, reduction="none")
    loss = loss + visit * F.binary_cross_entropy_with_logits(
        raw[:, 1], conversion, reduction="none"
    )
    log_mu = raw[:, 2]
    ratio = torch.where(conversion > 0, spend, torch.ones_like(spend)) * torch.exp(-log_mu)
    deviance = 2.0 * (ratio - torch.log(ratio) - 1.0)
    return (loss + conversion * deviance).mean()


def hillstrom_splits(
    max_rows: int | None, split: tuple[float, float, float], split_seed: int
) -> tuple[HillstromData, HillstromData, HillstromData, HillstromData]:
    """``(data, train, validation, test)``: the shipped Hillstrom rows (the first
    ``max_rows`` when given), split stratified by arm x visit with ``split`` fractions."""
    full = load_hillstrom()
    data = full if max_rows is None else full.take(slice(0, max_rows))
    train_rows, val_rows, test_rows = stratified_split(
        hillstrom_strata(data), split, seed=split_seed
    )
    return data, data.take(train_rows), data.take(val_rows), data.take(test_rows)


def hillstrom_base_rates(train: HillstromData) -> tuple[float, float, float]:
    """``(visit rate, conversion rate given a visit, mean spend given a conversion)`` of
    ``train``: the uplift model's starting biases. The conversion rate is floored at 1e-3
    and the spend defaults to 100 so a sample without conversions still gives finite logs."""
    converters = train.spend[train.conversion == 1]
    return (
        float(train.visit.mean()),
        max(float(train.conversion.sum() / max(train.visit.sum(), 1)), 1e-3),
        float(converters.mean()) if converters.size else 100.0,
    )


def train_hillstrom(
    config: HillstromTrainConfig | None = None, *, command: str = ""
) -> TrainResult:
    """Train and evaluate the Hillstrom uplift model (see the module docstring)."""
    config = config or HillstromTrainConfig()
    started = time.perf_counter()
    generator = _seed_everything(config.seed)
    device = select_device(config.device)
    data, train, val, test = hillstrom_splits(config.max_rows, config.split, config.split_seed)
    spec = HillstromFeaturizer.fit_spec(train, n_buckets=config.n_buckets)
    featurizer = HillstromFeaturizer(spec)
    model = UpliftModel(
        n_categorical=len(spec.categorical_names),
        n_buckets=spec.n_buckets,
        n_numeric=len(spec.numeric_names),
        n_treatments=len(spec.treatments),
        embedding_dim=config.embedding_dim,
        hidden=config.hidden,
        base_rates=hillstrom_base_rates(train),
    ).to(device)
    tr = _hillstrom_tensors(featurizer, train, device)
    va = _hillstrom_tensors(featurizer, val, device)
    history, best_epoch = fit(
        model,
        lambda rows: uplift_loss(model, tr, rows),
        lambda: float(uplift_loss(model, va)),
        len(train),
        config,
        device,
        generator,
        "train hillstrom",
    )
    model = model.cpu().eval()
    metrics, summary = evaluate_hillstrom(model, featurizer, train, test, config)
    info = TrainingInfo(
        command=command,
        seed=config.seed,
        epochs_requested=config.epochs,
        epochs_run=len(history) - 1,
        best_epoch=best_epoch,
        device=str(device),
        data=(_data_file(data.source, len(data)),),
        split=(
            f"stratified by arm x visit, fractions {config.split} (train/validation/test), "
            f"split_seed {config.split_seed}"
        ),
        train_rows=len(train),
        validation_rows=len(val),
        torch_version=str(torch.__version__),
        seconds=round(time.perf_counter() - started, 2),
    )
    metadata = CheckpointMetadata(
        kind="hillstrom_uplift",
        feature_spec=spec,
        architecture=HillstromArchitecture(
            embedding_dim=config.embedding_dim, hidden=config.hidden
        ),
        training=info,
        metrics=to_jsonable(metrics),
        weights_sha256="",
        nudgeserve_version=__version__,
    )
    return TrainResult(model, metadata, history, summary)


def evaluate_hillstrom(
    model: UpliftModel,
    featurizer: HillstromFeaturizer,
    train: HillstromData,
    test: HillstromData,
    config: HillstromTrainConfig,
) -> tuple[dict[str, Any], str]:
    """ATE (difference in means, 95% CI) per treatment and outcome on the test split,
    the model's mean predicted uplift beside it, and the model's Qini vs random targeting.
    Also the visit model's AUC/log-loss vs the per-arm visit rate of the training split."""
    spec = featurizer.spec
    control = spec.control_index
    data = _hillstrom_tensors(featurizer, test, torch.device("cpu"))
    with torch.no_grad():
        predicted = model(data["categorical"], data["numeric"]).numpy().astype(np.float64)
    metrics: dict[str, Any] = {"test_rows": len(test), "treatments": {}}
    rows = []
    for arm, arm_name in enumerate(spec.treatments):
        if arm == control:
            continue
        in_pair = (test.treatment == arm) | (test.treatment == control)
        treated = test.treatment[in_pair] == arm
        arm_metrics = {}
        for k, outcome in enumerate(HILLSTROM_OUTCOMES):
            y = test.outcome(outcome)
            ate = ate_difference_in_means(y, test.treatment, arm, control)
            uplift = predicted[:, k, arm] - predicted[:, k, control]
            qini = qini_report(
                uplift[in_pair],
                y[in_pair],
                treated,
                n_random=config.qini_resamples,
                n_resamples=config.qini_resamples,
                seed=config.seed,
            )
            arm_metrics[outcome] = {
                "ate_difference_in_means": ate,
                "model_mean_uplift": float(uplift[in_pair].mean()),
                **qini,
            }
            digits = 2 if outcome == "spend" else 4
            rows.append(
                [
                    arm_name,
                    outcome,
                    f"{ate.ate:.{digits}f} [{ate.low:.{digits}f}, {ate.high:.{digits}f}]",
                    f"{uplift[in_pair].mean():.{digits}f}",
                    _ci(qini["qini"], digits),
                    _ci(qini["random_qini"], digits),
                    f"{qini['qini_normalized']:.3f}",
                    f"{qini['p_random_ge_model']:.3f}",
                ]
            )
        metrics["treatments"][arm_name] = arm_metrics

    observed = predicted[np.arange(len(test)), 0, test.treatment]
    arm_rates = np.array(
        [train.visit[train.treatment == a].mean() for a in range(len(spec.treatments))]
    )
    visit_eval = bootstrap_classification(
        test.visit,
        {"per-arm visit rate": arm_rates[test.treatment], "uplift model": observed},
        n_resamples=config.bootstrap,
        seed=config.seed,
        reference="per-arm visit rate",
    )
    metrics["visit_prediction"] = visit_eval
    table = format_table(
        [
            "treatment",
            "outcome",
            "ATE diff-in-means [95% CI]",
            "model mean uplift",
            "model Qini [95% CI]",
            "random-targeting Qini [95% range]",
            "Qini/perfect",
            "P(random >= model)",
        ],
        rows,
    )
    visit_rows = [[name, _ci(v["auc"], 3), _ci(v["log_loss"], 4)] for name, v in visit_eval.items()]
    summary = (
        f"Hillstrom test split: {len(test)} customers (held out from training and early "
        "stopping). Qini: area between the model's Qini curve and the random-targeting line, "
        "per customer; random-targeting row: the same statistic for "
        f"{config.qini_resamples} random rankings.\n"
        + table
        + f"\n\nVisit prediction on the observed arm (bootstrap 95%, {config.bootstrap} resamples)\n"
        + format_table(["model", "AUC", "log-loss"], visit_rows)
    )
    return metrics, summary
