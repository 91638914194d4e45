"""What the gateway knows about a use case before any weights load: ``describe`` reads the
checkpoint's metadata file into a ``UseCaseInfo`` (catalog, limits, the KServe v2
signature, the intervention rule's label) and checks the settings fit the model.

Imports no torch: the gateway describes every use case, including those scored in
another deployment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nudgeserve.serve.config import HillstromUseCase, ObdUseCase, UseCase
from nudgeserve.serve.engine.policy_labels import intervention_policy_label
from nudgeserve.serve.engine.types import UseCaseInfo
from nudgeserve.serve.errors import ConfigError
from nudgeserve.serve.protocol.kserve import ModelSignature, TensorSpec

# Shipped checkpoint used by ``checkpoint: default`` per use-case kind.
DEFAULT_CHECKPOINT = {"obd": "obd", "hillstrom": "hillstrom"}
# Checkpoint kind each use-case kind needs.
CHECKPOINT_KIND = {"obd": "obd_click", "hillstrom": "hillstrom_uplift"}


def checkpoint_path(settings: UseCase) -> Path:
    """The weights path the use case loads (``"default"``: the shipped checkpoint)."""
    from nudgeserve.models import default_checkpoint

    if settings.checkpoint == "default":
        return default_checkpoint(DEFAULT_CHECKPOINT[use_case_kind(settings)])
    return Path(settings.checkpoint)


def use_case_kind(settings: UseCase) -> str:
    """``obd`` or ``hillstrom``: the kind of model the use case serves."""
    return "obd" if isinstance(settings, ObdUseCase) else "hillstrom"


def describe(settings: UseCase) -> UseCaseInfo:
    """The use case's ``UseCaseInfo``, from its checkpoint's metadata file.

    Raises ConfigError naming the use case when the checkpoint is missing, unreadable or
    of the wrong kind, or the settings do not fit it.
    """
    from nudgeserve.models import CheckpointError, read_metadata

    kind = use_case_kind(settings)
    path = checkpoint_path(settings)
    where = f"use_cases[{settings.name}].checkpoint"
    try:
        metadata = read_metadata(path)
    except CheckpointError as exc:
        raise ConfigError(f"{where}: {exc}", where) from None
    if metadata.kind != CHECKPOINT_KIND[kind]:
        raise ConfigError(
            f"{where}: {path} is a {metadata.kind!r} checkpoint; a {kind} use case needs "
            f"{CHECKPOINT_KIND[kind]!r}",
            where,
        )
    version = settings.version
    checkpoint_id = metadata.weights_sha256[:12]
    spec = metadata.feature_spec
    batch = settings.batching
    delay_us = int(batch.batch_wait_timeout_s * 1e6)
    if isinstance(settings, ObdUseCase):
        if settings.slot >= spec.n_positions:
            raise ConfigError(
                f"use_cases[{settings.name}].slot = {settings.slot} is invalid: the model has "
                f"{spec.n_positions} positions (0..{spec.n_positions - 1})",
                f"use_cases[{settings.name}].slot",
            )
        n_fields = len(spec.user_feature_names)
        signature = ModelSignature(
            name=settings.model_name,
            version=version,
            platform="pytorch",
            inputs=(
                TensorSpec("user_features", "BYTES", (-1, n_fields)),
                TensorSpec("affinity", "FP32", (-1, spec.n_items), optional=True),
            ),
            outputs=(TensorSpec("click_prob", "FP32", (-1, spec.n_positions, spec.n_items)),),
            max_batch_size=batch.max_batch_size,
            max_queue_delay_us=delay_us,
        )
        return UseCaseInfo(
            name=settings.name,
            kind=kind,
            model_name=settings.model_name,
            version=version,
            checkpoint_id=checkpoint_id,
            catalog=tuple(range(spec.n_items)),
            default_k=min(spec.n_positions, settings.max_k),
            max_k=settings.max_k,
            policy=settings.policy,
            signature=signature,
            accepts_inline=True,
            n_user_fields=n_fields,
            bandit_dim=metadata.architecture.dim + 1,
        )
    assert isinstance(settings, HillstromUseCase)
    unknown = set(settings.treatment_costs) - set(spec.treatments)
    if unknown:
        raise ConfigError(
            f"use_cases[{settings.name}].treatment_costs names {sorted(unknown)}, which are not "
            f"treatments of the model; allowed: {', '.join(spec.treatments)}",
            f"use_cases[{settings.name}].treatment_costs",
        )
    intervention_policy = ""
    if settings.interventions is not None:
        intervention_policy = _check_interventions(settings, spec)
    n_t = len(spec.treatments)
    signature = ModelSignature(
        name=settings.model_name,
        version=version,
        platform="pytorch",
        inputs=(
            TensorSpec("numeric", "FP32", (-1, len(spec.numeric_names))),
            TensorSpec("categorical", "BYTES", (-1, len(spec.categorical_names))),
        ),
        outputs=tuple(
            TensorSpec(name, "FP32", (-1, n_t)) for name in ("visit", "conversion", "spend")
        ),
        max_batch_size=batch.max_batch_size,
        max_queue_delay_us=delay_us,
    )
    return UseCaseInfo(
        name=settings.name,
        kind=kind,
        model_name=settings.model_name,
        version=version,
        checkpoint_id=checkpoint_id,
        catalog=tuple(spec.treatments),
        default_k=1,
        max_k=min(settings.max_k, n_t),
        policy=settings.policy,
        signature=signature,
        accepts_inline=False,
        control_index=spec.control_index,
        intervention_experiment=settings.intervention_experiment,
        intervention_policy=intervention_policy,
    )


def ensemble_path(settings: HillstromUseCase) -> Path:
    """The uplift ensemble an intervention use case loads (``default``: the shipped one)."""
    from nudgeserve.models.learn.uplift_ensemble import default_ensemble_path

    assert settings.interventions is not None
    if settings.interventions.ensemble == "default":
        return default_ensemble_path()
    return Path(settings.interventions.ensemble)


def _check_interventions(settings: HillstromUseCase, spec: Any) -> str:
    """ConfigError naming the setting when the ensemble is missing or does not fit the
    rule or the model; returns the rule's policy label."""
    from nudgeserve.models import CheckpointError
    from nudgeserve.models.learn.uplift_ensemble import read_ensemble_metadata

    assert settings.interventions is not None
    where = f"use_cases[{settings.name}].interventions"
    rule = settings.interventions.rule_config()
    try:
        metadata = read_ensemble_metadata(ensemble_path(settings))
    except CheckpointError as exc:
        raise ConfigError(f"{where}.ensemble: {exc}", f"{where}.ensemble") from None
    ensemble_treatments = tuple(metadata.feature_spec.treatments)
    for name, treatments in (("the ensemble", ensemble_treatments), ("the model", spec.treatments)):
        if tuple(rule.treatments) != tuple(treatments):
            raise ConfigError(
                f"{where}.rule.treatments {list(rule.treatments)} differ from {name}'s "
                f"{list(treatments)}",
                f"{where}.rule.treatments",
            )
    return intervention_policy_label(rule)
