"""The messages between the gateway and the batched scorers, and what the gateway knows
about a use case.

Small on purpose: the serving logic (``serve.http``) and the deployments import these
Structs without importing the engines (and with them torch). The hot ones are
``msgspec.Struct(array_like=True, gc=False)``: they cross a process hop once per request
when a use case runs in its own deployment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from nudgeserve.serve.config import Policy
from nudgeserve.serve.protocol.decide import ObdItemFeatures
from nudgeserve.serve.protocol.kserve import ModelSignature


class DecisionMeta(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """What the decision log records about a decision besides its outcome.

    decision_id: 32 hex digits (the answer's ``decision_id``); unit_id: the request's
    ``unit_id`` ("" when none); experiment, variant: the assignment ("" when none);
    policy: the policy's label (``policy_labels.policy_label``); inline_ids: the inline
    candidates' ids as text, in the order of ``DecisionItem.inline``.
    """

    decision_id: str
    unit_id: str = ""
    experiment: str = ""
    variant: str = ""
    policy: str = ""
    inline_ids: tuple[str, ...] = ()


class DecisionItem(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One validated decision request, as the batched scorer takes it.

    context: the use case's context Struct (``ObdContext`` / ``HillstromContext``).
    candidates: int64[c] catalog indices to choose from, or None for the whole catalog.
    inline: candidates given by features (OBD), scored after the catalog: the j-th gets
        index ``n_catalog + j`` in the outcome.
    excluded: int64[e] catalog indices never to show.
    k: slate size (validated: 1 <= k <= allowed candidates).
    seed: the decision's random stream (exploration), from its decision id.
    meta: what the decision log records (None only for items that are not served, such
        as warm-up; a scorer that logs refuses items without it).
    """

    context: Any
    candidates: Any
    inline: tuple[ObdItemFeatures, ...]
    excluded: Any
    k: int
    policy: Policy
    seed: int
    meta: DecisionMeta | None = None


class StageTimes(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Seconds the batch spent per stage, and its size (shared by its requests)."""

    batch_size: int
    featurize_s: float
    model_s: float
    select_s: float


class DecisionOutcome(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The scorer's answer to one ``DecisionItem``.

    indices: int64[k] catalog index (or ``n_catalog + j`` for inline candidate j);
    scores: float32[k]; propensities: float64[k], the probability that the policy puts
    that action at that rank (the slot marginal; see ``selection``).
    features: float32[F], the decision's replay vector (``replay_layout``).
    model_version, model_checkpoint: which model decided (a reload changes them).
    intervention: the ``InterventionResult`` of an intervention use case (None otherwise).
    """

    indices: Any
    scores: Any
    propensities: Any
    times: StageTimes
    features: Any = None
    model_version: str = ""
    model_checkpoint: str = ""
    intervention: Any = None


class InferOutcome(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The scorer's answer to one v2 infer request: every output by name, rows as sent."""

    outputs: dict[str, Any]
    times: StageTimes


class UnitsOutcome(msgspec.Struct, frozen=True):
    """A scorer's answer to a batch of intervention units (``POST /v1/decide/batch``):
    ``InterventionResult`` per unit in order, and which model decided."""

    results: list[Any]
    model_version: str
    model_checkpoint: str


@dataclass(frozen=True)
class UseCaseInfo:
    """What the gateway needs about a use case (no weights, no torch state).

    version: the served version (a positive integer, as a string);
    checkpoint_id: the first 12 hex digits of the weights' SHA-256.
    catalog: the actions by id: OBD item ids ``0..n_items-1``, Hillstrom treatment names.
    """

    name: str
    kind: str
    model_name: str
    version: str
    checkpoint_id: str
    catalog: tuple[Any, ...]
    default_k: int
    max_k: int
    policy: Policy
    signature: ModelSignature
    accepts_inline: bool
    n_user_fields: int = 0
    control_index: int | None = None
    bandit_dim: int = 0
    # Intervention use cases: the experiment their decisions are logged under, and the
    # rule's label (the log's ``policy``); None / "" otherwise.
    intervention_experiment: str | None = None
    intervention_policy: str = ""

    @property
    def n_catalog(self) -> int:
        return len(self.catalog)
