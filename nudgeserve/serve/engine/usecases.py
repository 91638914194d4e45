"""The batched scorers behind each use case: featurize a whole batch, run the model once,
select with the kernels. No HTTP and no Ray: deployments call these, tests call them
directly.

Each use case has two halves:

- ``UseCaseInfo`` (``describe``): what the gateway needs to validate requests and answer
  metadata: catalog, limits, the KServe v2 signature. Read from the checkpoint's metadata
  file, without loading weights.
- an engine (``ObdEngine`` / ``HillstromEngine``): ``load()`` loads the weights and warms up
  (kernel compilation, first torch call); ``decide_batch`` and ``infer_batch`` take a list
  of already validated requests and return exactly one outcome per request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from nudgeserve.serve.config import HillstromUseCase, ObdUseCase, Policy, UseCase
from nudgeserve.serve.errors import BatchError, ConfigError
from nudgeserve.serve.protocol.decide import HillstromContext, ObdContext, ObdItemFeatures
from nudgeserve.serve.protocol.kserve import ModelSignature, TensorSpec

# Shipped checkpoint used by ``checkpoint: default`` per use-case kind.
DEFAULT_CHECKPOINT = {"obd": "obd", "hillstrom": "hillstrom"}
# Checkpoint kind each use-case kind needs.
CHECKPOINT_KIND = {"obd": "obd_click", "hillstrom": "hillstrom_uplift"}


class DecisionMeta(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """What the decision log records about a decision besides its outcome.

    decision_id: 32 hex digits (the answer's ``decision_id``); unit_id: the request's
    ``unit_id`` ("" when none); experiment, variant: the assignment ("" when none);
    policy: the policy's label (``policy_label``); inline_ids: the inline candidates'
    ids as text, in the order of ``DecisionItem.inline``.
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
    that action at that rank (the slot marginal; see ``_selection``).
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


def checkpoint_path(settings: UseCase) -> Path:
    """The weights path the use case loads (``"default"``: the shipped checkpoint)."""
    from nudgeserve.models import default_checkpoint

    if settings.checkpoint == "default":
        return default_checkpoint(DEFAULT_CHECKPOINT[_kind(settings)])
    return Path(settings.checkpoint)


def _kind(settings: UseCase) -> str:
    return "obd" if isinstance(settings, ObdUseCase) else "hillstrom"


def describe(settings: UseCase) -> UseCaseInfo:
    """The use case's ``UseCaseInfo``, from its checkpoint's metadata file.

    Raises ConfigError naming the use case when the checkpoint is missing, unreadable or
    of the wrong kind, or the settings do not fit it.
    """
    from nudgeserve.models import CheckpointError, read_metadata

    kind = _kind(settings)
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
    from nudgeserve.serve.engine.interventions import intervention_policy_label

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


def check_outcomes(outcomes: list, n_items: int) -> list:
    """Enforce the batch invariant: exactly one outcome per request."""
    if len(outcomes) != n_items:
        raise BatchError(f"batch of {n_items} requests produced {len(outcomes)} outcomes")
    return outcomes


class _Engine:
    """Shared machinery: settings, info, loading and the timing of a batch."""

    def __init__(self, settings: UseCase) -> None:
        self.settings = settings
        self.info = describe(settings)
        self.loaded: Any = None
        self.scorer: Any = None
        # Policies of experiment variants, warmed up too (set before ``load``).
        self.extra_policies: tuple[Policy, ...] = ()
        # The learner's latest ``BanditSnapshot`` for this use case (per-arm reward
        # counts, linear bandits by key), set by the replica before each batch; None:
        # no learner, the policies' priors. linear_prior: the linear bandit before any
        # feedback (also used when the snapshot was learned on another model's features).
        self.bandit: Any = None
        self.linear_prior: Any = None

    def _load_checkpoint(self):
        from nudgeserve.models import load_checkpoint

        path = checkpoint_path(self.settings)
        return load_checkpoint(path, expected_kind=CHECKPOINT_KIND[self.info.kind])

    def warmup(self) -> dict[str, float]:
        """Compile and touch everything a request will use; returns seconds per step."""
        from nudgeserve.kernels import warmup as warm_kernels

        took = {}
        t0 = time.perf_counter()
        warm_kernels()
        took["kernels"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.scorer.warmup((1, self.settings.batching.max_batch_size))
        took["model"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for policy in self._policies():
            self.decide_batch([self.example_item(policy)])
        self.infer_batch([self.example_inputs()])
        took["pipeline"] = time.perf_counter() - t0
        return took

    def _policies(self) -> list[Policy]:
        return list(dict.fromkeys([self.settings.policy, *self.extra_policies]))

    def example_item(self, policy: Policy) -> DecisionItem:
        raise NotImplementedError

    def example_inputs(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def decide_batch(self, items: list[DecisionItem]) -> list[DecisionOutcome]:
        raise NotImplementedError

    def infer_batch(self, requests: list[dict[str, np.ndarray]]) -> list[InferOutcome]:
        raise NotImplementedError

    def _select(
        self,
        scores: np.ndarray,
        items: list[DecisionItem],
        excluded: np.ndarray | None,
        linear_features: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        from nudgeserve.serve.engine.selection import SelectionState, select_slates

        ks = [item.k for item in items]
        seeds = np.fromiter((item.seed for item in items), dtype=np.uint64, count=len(items))
        snap = self.bandit
        linear = None
        if self.linear_prior is not None:
            if snap is not None and snap.feature_space == self.info.checkpoint_id:
                linear = snap.linear_bandit
            else:
                # Learned on another model's features (or nothing learned): the prior.
                linear = lambda key: self.linear_prior  # noqa: E731
        state = SelectionState(
            control_index=self.info.control_index,
            n_catalog=self.info.n_catalog,
            arm_counts=None if snap is None else snap.arm_counts,
            linear=linear,
            linear_features=linear_features,
        )
        policies = [item.policy for item in items]
        keys = [bandit_key(item) for item in items]
        return select_slates(scores, ks, policies, seeds, excluded, state, keys)


def _catalog_mask(items: list[DecisionItem], n_rows: int, n_cols: int, n_catalog: int):
    """bool[B, N] of actions a row may not show (None when every row may show all)."""
    if (
        all(
            item.candidates is None and len(item.excluded) == 0 and not item.inline
            for item in items
        )
        and n_cols == n_catalog
    ):
        return None
    excluded = np.zeros((n_rows, n_cols), dtype=np.bool_)
    for row, item in enumerate(items):
        if item.candidates is not None:
            excluded[row, :n_catalog] = True
            excluded[row, item.candidates] = False
        if len(item.excluded):
            excluded[row, item.excluded] = True
        excluded[row, n_catalog + len(item.inline) :] = True
    return excluded


def _outcomes(
    items: list[DecisionItem],
    scores: np.ndarray,
    idx: np.ndarray,
    prop: np.ndarray,
    times: StageTimes,
    replay: list[np.ndarray],
    info: UseCaseInfo,
) -> list[DecisionOutcome]:
    out = []
    for row, item in enumerate(items):
        chosen = idx[row, : item.k]
        out.append(
            DecisionOutcome(
                indices=chosen,
                scores=scores[row, chosen],
                propensities=prop[row, : item.k],
                times=times,
                features=replay[row],
                model_version=info.version,
                model_checkpoint=info.checkpoint_id,
            )
        )
    return out


class ObdEngine(_Engine):
    """OBD item selection: click probabilities of every catalog item (and of inline items)
    at ``slot``, then the policy picks the slate."""

    settings: ObdUseCase

    def load(self, device: str | None = None, warm: bool = True) -> dict[str, float]:
        """Load weights onto ``device`` (default: the setting) and warm up (unless
        ``warm`` is False: for offline replay, where first-call latency does not matter).
        Returns seconds per warm-up step."""
        from nudgeserve.models import ObdScorer

        self.loaded = self._load_checkpoint()
        self.scorer = ObdScorer(
            self.loaded, device=device or self.settings.device, precision=self.settings.precision
        )
        self.featurizer = self.scorer.featurizer
        self.n_items = self.scorer.n_items
        self._inline = _InlineItems(self.loaded, self.settings.slot)
        import torch

        with torch.inference_mode():
            self._catalog_vectors = self.loaded.module.item_vectors().numpy().astype(np.float64)
        self.linear_prior = initial_linear_bandit(self._catalog_vectors.shape[1])
        return self.warmup() if warm else {}

    def example_item(self, policy: Policy) -> DecisionItem:
        n_fields = self.info.n_user_fields
        return DecisionItem(
            context=ObdContext(user_features=["warmup"] * n_fields, affinity=None),
            candidates=None,
            inline=(ObdItemFeatures(0.0, "a", "b", "c"),),
            excluded=np.zeros(0, dtype=np.int64),
            k=min(self.info.default_k, self.n_items),
            policy=policy,
            seed=0,
        )

    def example_inputs(self) -> dict[str, np.ndarray]:
        return {
            "user_features": np.full((1, self.info.n_user_fields), "warmup", dtype=object),
            "affinity": np.zeros((1, self.n_items), dtype=np.float32),
        }

    def _features(self, users: np.ndarray, affinity: np.ndarray | None):
        return self.featurizer.transform(users, affinity)

    def decide_batch(self, items: list[DecisionItem]) -> list[DecisionOutcome]:
        """Score and select for a batch; one ``DecisionOutcome`` per item, in order."""
        t0 = time.perf_counter()
        n = len(items)
        users = np.empty((n, self.info.n_user_fields), dtype=object)
        affinity = None
        for row, item in enumerate(items):
            users[row] = item.context.user_features
            if item.context.affinity is not None:
                if affinity is None:
                    affinity = np.zeros((n, self.n_items), dtype=np.float32)
                affinity[row] = item.context.affinity
        features = self._features(users, affinity)
        # The replay vector (``replay_layout``): hashed user fields and raw affinities.
        head = np.zeros((n, self.info.n_user_fields + self.n_items), dtype=np.float32)
        head[:, : self.info.n_user_fields] = features.user_buckets
        if affinity is not None:
            head[:, self.info.n_user_fields :] = affinity
        replay = list(head)
        t1 = time.perf_counter()
        probs = self.scorer.predict(features, position=self.settings.slot)
        n_inline = max(len(item.inline) for item in items)
        if n_inline:
            scores = np.full((n, self.n_items + n_inline), np.nan, dtype=np.float32)
            scores[:, : self.n_items] = probs
            for row, item in enumerate(items):
                if item.inline:
                    table = self._inline.table(item.inline)
                    scores[row, self.n_items : self.n_items + len(item.inline)] = (
                        self._inline.scores(features.user_buckets[row], table)
                    )
                    inline_part = np.concatenate(
                        [
                            np.asarray([[f.item_feature_0] for f in item.inline], np.float32),
                            table.categorical_buckets.astype(np.float32),
                        ],
                        axis=1,
                    )
                    replay[row] = np.concatenate([head[row], inline_part.reshape(-1)])
        else:
            scores = probs
        t2 = time.perf_counter()
        excluded = _catalog_mask(items, n, scores.shape[1], self.n_items)

        def linear_features(rows: np.ndarray) -> np.ndarray:
            return self.bandit_features(features.user_buckets[rows], scores[rows], items, rows)

        idx, prop = self._select(scores, items, excluded, linear_features)
        t3 = time.perf_counter()
        times = StageTimes(n, t1 - t0, t2 - t1, t3 - t2)
        return check_outcomes(_outcomes(items, scores, idx, prop, times, replay, self.info), n)

    def bandit_features(
        self,
        user_buckets: np.ndarray,
        scores: np.ndarray,
        items: list[DecisionItem] | None = None,
        rows: np.ndarray | None = None,
        inline_tables: list | None = None,
    ) -> np.ndarray:
        """The linear bandit's context-action features (``interaction_features``):
        float64[R, N, dim + 1] with ``x[r, n] = [score, u[r] * v[n]]``, ``u`` the user
        tower's vector and ``v`` the item's (catalog, then the row's inline items).

        user_buckets: int64[R, F]; scores: float32[R, N] (NaN columns, which no policy
        may choose, get 0); items / rows: the batch's items and which of them these rows
        are (for their inline items), or inline_tables: one ``ObdItemTable`` (or None)
        per row.
        """
        import torch

        m = self.loaded.module
        with torch.inference_mode():
            user = m.user_vectors(torch.from_numpy(np.ascontiguousarray(user_buckets)))
        u = user.numpy().astype(np.float64)
        n_rows, n_cols = scores.shape
        dim = u.shape[1]
        vectors = np.zeros((n_rows, n_cols, dim))
        vectors[:, : self.n_items] = self._catalog_vectors
        for r in range(n_rows):
            if inline_tables is not None:
                table = inline_tables[r]
            else:
                inline = items[int(rows[r])].inline
                table = self._inline.table(inline) if inline else None
            if table is not None:
                v = self._inline.item_vectors(table).numpy()
                vectors[r, self.n_items : self.n_items + v.shape[0]] = v
        x = np.empty((n_rows, n_cols, dim + 1))
        x[:, :, 0] = np.nan_to_num(scores, nan=0.0)
        x[:, :, 1:] = u[:, None, :] * vectors
        return x

    def replay_scores(self, features: np.ndarray, candidates: list[list[str]]) -> list:
        """Scores this model gives every candidate of logged decisions.

        features: the logged replay vectors (``replay_layout``), one per decision;
        candidates: each decision's candidate ids as logged. Returns one float64[c] per
        decision (inline candidates scored from their logged features).
        """
        n_fields = self.info.n_user_fields
        n = len(features)
        head = np.stack([np.asarray(f[: n_fields + self.n_items], np.float32) for f in features])
        buckets = head[:, :n_fields].astype(np.int64)
        from nudgeserve.models import ObdFeatures

        obd = ObdFeatures(buckets, self.featurizer.transform_affinity(head[:, n_fields:], n))
        probs = self.scorer.predict(obd, position=self.settings.slot)
        index = {str(x): j for j, x in enumerate(self.info.catalog)}
        out = []
        for row, ids in enumerate(candidates):
            tail = np.asarray(features[row][n_fields + self.n_items :], np.float32).reshape(-1, 4)
            inline_scores = (
                self._inline.scores_from_table(buckets[row], tail) if len(tail) else None
            )
            values = np.empty(len(ids), dtype=np.float64)
            j_inline = 0
            for c, item_id in enumerate(ids):
                j = index.get(item_id)
                if j is None:
                    values[c] = inline_scores[j_inline]
                    j_inline += 1
                else:
                    values[c] = probs[row, j]
            out.append(values)
        return out

    def infer_batch(self, requests: list[dict[str, np.ndarray]]) -> list[InferOutcome]:
        """KServe v2 infer for a batch of requests (each with its own rows)."""
        t0 = time.perf_counter()
        sizes = [r["user_features"].shape[0] for r in requests]
        users = np.concatenate([r["user_features"] for r in requests], axis=0)
        affinity = None
        if any("affinity" in r for r in requests):
            affinity = np.concatenate(
                [
                    r["affinity"]
                    if "affinity" in r
                    else np.zeros((s, self.n_items), dtype=np.float32)
                    for r, s in zip(requests, sizes, strict=True)
                ],
                axis=0,
            )
        features = self._features(users, affinity)
        t1 = time.perf_counter()
        probs = self.scorer.predict(features)
        t2 = time.perf_counter()
        bounds = np.cumsum([0, *sizes])
        times = StageTimes(len(requests), t1 - t0, t2 - t1, 0.0)
        out = [
            InferOutcome({"click_prob": probs[a:b]}, times)
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        return check_outcomes(out, len(requests))


class _InlineItems:
    """Click probabilities of items given by their features rather than a catalog id.

    A new item has no id embedding and no learned bias, so its vector is the sum of its
    hashed-feature embeddings and the projection of its standardised numeric features —
    exactly the catalog item vector minus the id terms — and its logit is the dot product
    with the user vector plus the global and slot biases, calibrated like catalog items.
    Features go through the model's own featurizer (``item_table``) so hashing and
    standardisation match training.
    """

    def __init__(self, loaded: Any, slot: int) -> None:
        import torch

        from nudgeserve.models import ObdFeaturizer

        self._torch = torch
        self.model = loaded.module
        self.spec = loaded.spec
        self.slot = slot
        self._ObdFeaturizer = ObdFeaturizer

    def table(self, inline: tuple[ObdItemFeatures, ...]):
        """The ``ObdItemTable`` of ``inline`` items (hashed and standardised like the
        catalog's)."""
        from nudgeserve.models import ObdItemContext

        n = len(inline)
        spec = msgspec.structs.replace(self.spec, n_items=n)
        numeric = np.asarray([[f.item_feature_0] for f in inline], dtype=np.float32)
        categorical = np.asarray(
            [[f.item_feature_1, f.item_feature_2, f.item_feature_3] for f in inline], dtype=object
        )
        return self._ObdFeaturizer(spec).item_table(
            ObdItemContext(
                item_id=np.arange(n, dtype=np.int64),
                numeric=numeric,
                categorical=categorical,
                categorical_buckets=np.zeros((n, 3), dtype=np.int64),
            )
        )

    def item_vectors(self, table):
        """float32[n, dim] tensor for inline items given their ``ObdItemTable``."""
        torch = self._torch
        m = self.model
        buckets = torch.from_numpy(np.ascontiguousarray(table.categorical_buckets))
        with torch.inference_mode():
            embedded = m.item_feature_embedding(buckets + m.item_offsets).sum(dim=1)
            return embedded + m.item_numeric_projection(
                torch.from_numpy(np.ascontiguousarray(table.numeric))
            )

    def scores(self, user_buckets: np.ndarray, table) -> np.ndarray:
        """float32[n] click probabilities of inline items (their ``ObdItemTable``) for one
        user (``user_buckets``: int64[F])."""
        torch = self._torch
        m = self.model
        with torch.inference_mode():
            user = m.user_vectors(torch.from_numpy(np.ascontiguousarray(user_buckets[None, :])))
            logits = self.item_vectors(table) @ user[0] + m.bias + m.position_bias[self.slot]
            probs = torch.sigmoid(m.calibration_scale * logits + m.calibration_shift)
        return probs.numpy().astype(np.float32)

    def scores_from_table(self, user_buckets: np.ndarray, logged: np.ndarray) -> np.ndarray:
        """``scores`` from logged inline features (``logged_table``)."""
        return self.scores(user_buckets, self.logged_table(logged))

    def logged_table(self, logged: np.ndarray):
        """The ``ObdItemTable`` of inline items from their logged features: float32[n, 4]
        rows of raw ``item_feature_0`` and the three hashed categorical buckets."""
        from nudgeserve.kernels import standardize
        from nudgeserve.models import ObdItemTable

        mean = np.asarray(self.spec.item_numeric_mean, np.float32)
        std = np.asarray(self.spec.item_numeric_std, np.float32)
        numeric = standardize(np.ascontiguousarray(logged[:, :1], dtype=np.float32), mean, std)
        return ObdItemTable(
            categorical_buckets=logged[:, 1:].astype(np.int64),
            numeric=np.ascontiguousarray(numeric, dtype=np.float32),
        )


class HillstromEngine(_Engine):
    """E-mail intervention choice: each treatment's expected net gain over the control,
    then the policy picks (the control scores ``min_gain``)."""

    settings: HillstromUseCase

    # The intervention rule (``serve.interventions.InterventionEngine``) of a use case
    # with ``interventions``; None: the policy selects on point estimates.
    interventions: Any = None

    def load(self, device: str | None = None, warm: bool = True) -> dict[str, float]:
        """Load weights onto ``device`` and warm up (see ``ObdEngine.load``). An
        intervention use case also loads its uplift ensemble; its daily caps start on a
        ledger of this process (``set_ledger`` shares one between replicas)."""
        from nudgeserve.models import HillstromScorer

        self.loaded = self._load_checkpoint()
        self.scorer = HillstromScorer(
            self.loaded, device=device or self.settings.device, precision=self.settings.precision
        )
        if self.settings.interventions is not None:
            self.interventions = self._intervention_engine(device or self.settings.device)
        self.featurizer = self.scorer.featurizer
        spec = self.loaded.spec
        self.treatments = tuple(spec.treatments)
        self.control = spec.control_index
        self.costs = np.asarray(
            [self.settings.treatment_costs.get(t, 0.0) for t in self.treatments], dtype=np.float32
        )
        self.numeric_names = tuple(spec.numeric_names)
        self.categorical_names = tuple(spec.categorical_names)
        return self.warmup() if warm else {}

    def _intervention_engine(self, device: str) -> Any:
        from nudgeserve.models.learn.uplift_ensemble import load_uplift_ensemble
        from nudgeserve.models.policies.intervention import BudgetLedger
        from nudgeserve.serve.engine.interventions import InterventionEngine

        settings = self.settings.interventions
        rule = settings.rule_config()
        ledger = (
            BudgetLedger(rule.daily_caps, utc_offset_s=settings.day_utc_offset_s)
            if rule.daily_caps
            else None
        )
        return InterventionEngine(
            rule,
            load_uplift_ensemble(ensemble_path(self.settings), device=device),
            level=settings.level,
            chunk_rows=settings.chunk_rows,
            ledger=ledger,
        )

    def set_ledger(self, ledger: Any) -> None:
        """Decide on ``ledger`` (e.g. the shared ``budget.BudgetClient``) from now on."""
        if self.interventions is None:
            raise ValueError(f"use case {self.info.name!r} has no interventions: no ledger")
        self.interventions.ledger = ledger

    @property
    def ledger_blocks(self) -> bool:
        """Whether deciding may wait on another process (a shared budget): the caller
        then runs ``decide_batch`` / ``decide_units`` off its event loop."""
        from nudgeserve.models.policies.intervention import BudgetLedger

        ledger = None if self.interventions is None else self.interventions.ledger
        return ledger is not None and not isinstance(ledger, BudgetLedger)

    def warmup(self) -> dict[str, float]:
        took = super().warmup()
        if self.interventions is not None:
            t0 = time.perf_counter()
            self.interventions.warmup((1, self.settings.batching.max_batch_size))
            took["interventions"] = time.perf_counter() - t0
        return took

    def example_item(self, policy: Policy) -> DecisionItem:
        return DecisionItem(
            context=HillstromContext(1.0, 100.0, 1.0, 0.0, 0.0, "2) $100 - $200", "Urban", "Web"),
            candidates=None,
            inline=(),
            excluded=np.zeros(0, dtype=np.int64),
            k=1,
            policy=policy,
            seed=0,
        )

    def example_inputs(self) -> dict[str, np.ndarray]:
        return {
            "numeric": np.ones((1, len(self.numeric_names)), dtype=np.float32),
            "categorical": np.full((1, len(self.categorical_names)), "Web", dtype=object),
        }

    def net_gain(self, columns: dict[str, Any]) -> np.ndarray:
        """float32[B, T]: uplift in the objective x value - cost; the control gets
        ``min_gain``."""
        prediction = self.scorer.predict(self.featurizer.transform(columns))
        return self._gain(prediction)

    def _gain(self, prediction) -> np.ndarray:
        s = self.settings
        gain = prediction.uplift(s.objective) * np.float32(s.value_per_unit) - self.costs
        gain[:, self.control] = s.min_gain
        return np.ascontiguousarray(gain, dtype=np.float32)

    def decide_batch(self, items: list[DecisionItem]) -> list[DecisionOutcome]:
        if self.interventions is not None:
            return self._decide_interventions(items)
        t0 = time.perf_counter()
        n = len(items)
        columns: dict[str, Any] = {
            name: [getattr(item.context, name) for item in items]
            for name in (*self.numeric_names, *self.categorical_names)
        }
        features = self.featurizer.transform(columns)
        # The replay vector (``replay_layout``): raw numeric columns, hashed categoricals.
        replay = np.empty((n, len(self.numeric_names) + len(self.categorical_names)), np.float32)
        for j, name in enumerate(self.numeric_names):
            replay[:, j] = columns[name]
        replay[:, len(self.numeric_names) :] = features.categorical
        t1 = time.perf_counter()
        scores = self._gain(self.scorer.predict(features))
        t2 = time.perf_counter()
        excluded = _catalog_mask(items, n, scores.shape[1], len(self.treatments))
        idx, prop = self._select(scores, items, excluded)
        t3 = time.perf_counter()
        times = StageTimes(n, t1 - t0, t2 - t1, t3 - t2)
        return check_outcomes(
            _outcomes(items, scores, idx, prop, times, list(replay), self.info), n
        )

    def _decide_interventions(self, items: list[DecisionItem]) -> list[DecisionOutcome]:
        """The intervention rule on a batch of decisions: one ensemble pass, one budget
        allocation. A request without ``unit_id`` is its own unit (its decision id)."""
        t0 = time.perf_counter()
        n = len(items)
        engine = self.interventions
        columns: dict[str, Any] = {
            name: [getattr(item.context, name) for item in items] for name in engine.field_names
        }
        features, replay = engine.featurize(columns)
        unit_ids = np.asarray(
            [
                (item.meta.unit_id or item.meta.decision_id) if item.meta is not None else ""
                for item in items
            ]
        )
        t1 = time.perf_counter()
        prediction = engine.predict(features)
        t2 = time.perf_counter()
        # Items without meta are warm-up: nothing is served, so no budget is spent.
        spend = all(item.meta is not None for item in items)
        batch = engine.decide_prediction(prediction, unit_ids, replay, spend_budget=spend)
        results = batch.results()
        t3 = time.perf_counter()
        times = StageTimes(n, t1 - t0, t2 - t1, t3 - t2)
        d = batch.decisions
        action = d.action.tolist()
        value = d.expected_net_value.tolist()
        prop = d.propensity.tolist()
        info = self.info
        out = [
            DecisionOutcome(
                indices=np.asarray([action[i]], dtype=np.int64),
                scores=np.asarray([value[i]], dtype=np.float32),
                propensities=np.asarray([prop[i]], dtype=np.float64),
                times=times,
                features=replay[i],
                model_version=info.version,
                model_checkpoint=info.checkpoint_id,
                intervention=results[i],
            )
            for i in range(n)
        ]
        return check_outcomes(out, n)

    def decide_units(
        self, columns: dict[str, Any], unit_ids: np.ndarray, spend_budget: bool
    ) -> Any:
        """The batch endpoint: the intervention rule on many units at once
        (``InterventionBatch``); the ensemble runs in chunks, the budget is allocated once."""
        if self.interventions is None:
            raise ValueError(f"use case {self.info.name!r} has no interventions")
        return self.interventions.decide(columns, unit_ids, spend_budget=spend_budget)

    def replay_scores(self, features: np.ndarray, candidates: list[list[str]]) -> list:
        """Scores (net gains) this model gives every candidate of logged decisions.

        features: the logged replay vectors (``replay_layout``); candidates: each
        decision's candidate ids as logged. Returns one float64[c] per decision.
        """
        from nudgeserve.models import HillstromFeatures

        x = np.stack([np.asarray(f, np.float32) for f in features])
        n, n_num = x.shape[0], len(self.numeric_names)
        # The categorical columns are logged hashed; the placeholders only fill the
        # featurizer's string columns, whose buckets are replaced by the logged ones.
        columns: dict[str, Any] = {name: x[:, j] for j, name in enumerate(self.numeric_names)}
        columns.update({name: [""] * n for name in self.categorical_names})
        numeric = self.featurizer.transform(columns).numeric
        gains = self._gain(
            self.scorer.predict(HillstromFeatures(x[:, n_num:].astype(np.int64), numeric))
        )
        index = {t: j for j, t in enumerate(self.treatments)}
        return [
            gains[row, [index[c] for c in ids]].astype(np.float64)
            for row, ids in enumerate(candidates)
        ]

    def infer_batch(self, requests: list[dict[str, np.ndarray]]) -> list[InferOutcome]:
        t0 = time.perf_counter()
        sizes = [r["numeric"].shape[0] for r in requests]
        numeric = np.concatenate([r["numeric"] for r in requests], axis=0)
        categorical = np.concatenate([r["categorical"] for r in requests], axis=0)
        columns: dict[str, Any] = {n: numeric[:, j] for j, n in enumerate(self.numeric_names)}
        columns.update({n: categorical[:, j] for j, n in enumerate(self.categorical_names)})
        features = self.featurizer.transform(columns)
        t1 = time.perf_counter()
        prediction = self.scorer.predict(features)
        t2 = time.perf_counter()
        bounds = np.cumsum([0, *sizes])
        times = StageTimes(len(requests), t1 - t0, t2 - t1, 0.0)
        out = [
            InferOutcome(
                {
                    "visit": prediction.visit[a:b],
                    "conversion": prediction.conversion[a:b],
                    "spend": prediction.spend[a:b],
                },
                times,
            )
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        return check_outcomes(out, len(requests))


def bandit_key(item: DecisionItem) -> str:
    """The learner's key for the item's bandit state (``learner.policy_key``): ``""``
    outside experiments, else ``"experiment/variant"``."""
    meta = item.meta
    if meta is None or not meta.experiment:
        return ""
    return f"{meta.experiment}/{meta.variant}"


def initial_linear_bandit(dim: int, ridge: float = 1.0) -> Any:
    """The linear bandit before any feedback: features ``[score, u * v]`` (``dim`` + 1) and
    the prior mean ``e_0``, so it starts out ranking exactly as the model does."""
    from nudgeserve.models.policies.linear_bandit import LinearBandit

    prior = np.zeros(dim + 1)
    prior[0] = 1.0
    return LinearBandit(dim + 1, ridge=ridge, prior_mean=prior)


def build_engine(settings: UseCase) -> ObdEngine | HillstromEngine:
    """The engine for ``settings`` (not loaded: call ``load()`` in the replica)."""
    if isinstance(settings, ObdUseCase):
        return ObdEngine(settings)
    return HillstromEngine(settings)
