"""The decision API's serving logic: decode, validate, assign a variant, build the answer.

Between the HTTP router and the batched scorers, knowing neither HTTP nor Ray: it takes
the body's bytes and its media type, and returns bytes. Everything a single request can
get wrong is found here, before the request joins a batch, so one bad request never fails
the others of its batch.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from nudgeserve.serve.config import Control, Experiment, Variant
from nudgeserve.serve.engine.policy_labels import policy_label, policy_name
from nudgeserve.serve.engine.types import (
    DecisionItem,
    DecisionMeta,
    DecisionOutcome,
    UnitsOutcome,
    UseCaseInfo,
)
from nudgeserve.serve.errors import ConfigError, InvalidRequest, ModelNotFound
from nudgeserve.serve.http.bodies import JSON, MSGPACK, decode_body, decoders, field_path
from nudgeserve.serve.protocol.decide import (
    CONTEXT_TYPES,
    BatchDecideRequest,
    BatchDecideResponse,
    DecideRequest,
    DecideResponse,
    HillstromContext,
    ObdContext,
    RankedAction,
    UnitDecision,
)

# The ``policy`` an intervention use case's answers name.
INTERVENTION_POLICY = "intervention"


@dataclass(frozen=True)
class BatchPending:
    """A validated ``/v1/decide/batch`` request.

    columns: ``{field: [B] values}`` of the units' contexts; unit_ids: the randomisation
    units (the request's ids, else a per-decision id); given_unit_ids: the request's ids
    ("" where none, what the log records); decision_ids: one per unit ([] in a dry run).
    """

    info: UseCaseInfo
    columns: dict[str, list[Any]]
    unit_ids: list[str]
    given_unit_ids: list[str]
    decision_ids: list[str]
    dry_run: bool


@dataclass(frozen=True)
class Pending:
    """What the answer needs besides the scorer's outcome.

    info: the use case that decides (an experiment variant may name another than the
    request's).
    """

    info: UseCaseInfo
    decision_id: str
    inline_ids: tuple[Any, ...]
    policy: str
    experiment: str | None
    variant: str | None


def _check_text(value: str, field: str) -> None:
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest("is not valid Unicode text (lone surrogate)", field) from None


def _finite(values: list[float], field: str) -> None:
    # One C-level sum finds the common all-finite case; only then look for the culprit
    # (the sum can also overflow on huge finite values, which the scan lets through).
    if math.isfinite(sum(values)):
        return
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise InvalidRequest(f"must be finite, got {v} at index {i}", field)


class DecisionService:
    """Decodes ``/v1/decide`` bodies into ``DecisionItem``s and outcomes into answers.

    infos: the served use cases by name; experiments: the configured experiments.
    Decoders and encoders are built here, once (they do not pickle).
    """

    def __init__(self, infos: dict[str, UseCaseInfo], experiments: tuple[Experiment, ...]) -> None:
        from nudgeserve.kernels import murmurhash3_32

        self.infos = infos
        self.experiments = {e.name: e for e in experiments}
        for e in experiments:
            for v in e.variants:
                if (
                    v.use_case is not None
                    and infos[v.use_case].catalog != infos[e.use_case].catalog
                ):
                    where = f"experiments[{e.name}].variants[{v.name}].use_case"
                    raise ConfigError(
                        f"{where}: use case {v.use_case!r} chooses among other actions than "
                        f"{e.use_case!r}; a variant must keep the experiment's catalog",
                        where,
                    )
        self._murmur = murmurhash3_32
        # Decision ids (and exploration seeds) from a per-process generator seeded by the
        # OS: unique in practice and ~10x cheaper than uuid4's os.urandom per call.
        self._random = random.Random(os.urandom(32))
        self._decoders = decoders(DecideRequest)
        self._context_decoders = {
            (fmt, kind): decoder
            for kind, t in CONTEXT_TYPES.items()
            for fmt, decoder in decoders(t).items()
        }
        self._encoders = {JSON: msgspec.json.Encoder(), MSGPACK: msgspec.msgpack.Encoder()}
        self._batch_decoders = decoders(BatchDecideRequest)
        self._index = {name: _catalog_index(info) for name, info in infos.items()}

    # -- decode and validate --------------------------------------------------------------

    def decode(self, body: bytes, fmt: str) -> DecideRequest:
        """The request Struct, or InvalidRequest naming the bad field."""
        return decode_body(self._decoders[fmt], body, fmt)

    def prepare(self, request: DecideRequest, fmt: str) -> tuple[DecisionItem, Pending]:
        """Validate ``request`` against its use case; the item to score and what the
        answer needs. Raises InvalidRequest / ModelNotFound naming the field."""
        info = self.infos.get(request.use_case)
        if info is None:
            served = ", ".join(sorted(self.infos))
            raise ModelNotFound(
                f"use_case: {request.use_case!r} is not served; served use cases: {served}"
            )
        try:
            context = self._context_decoders[(fmt, info.kind)].decode(request.context)
        except msgspec.ValidationError as exc:
            field, reason = field_path(exc, "context")
            raise InvalidRequest(reason, field) from None
        except msgspec.DecodeError as exc:
            raise InvalidRequest(f"malformed: {exc}", "context") from None
        self._check_context(info, context)
        if info.intervention_experiment is not None:
            for field, given in (
                ("candidates", request.candidates is not None),
                ("exclusions", bool(request.exclusions)),
            ):
                if given:
                    raise InvalidRequest(
                        f"use case {info.name} decides with the intervention rule, which "
                        "chooses among all its actions; omit it",
                        field,
                    )
        policy, experiment, variant, info = self._assign(info, request)
        index = self._index[info.name]
        candidates, inline, inline_ids = self._candidates(info, index, request)
        excluded = self._exclusions(info, index, request, inline_ids)
        n_allowed = (info.n_catalog if candidates is None else len(candidates)) + len(inline)
        n_allowed -= len(excluded)
        upper = min(info.max_k, n_allowed)
        if upper < 1:
            raise InvalidRequest("leave no candidate to choose from", "exclusions")
        k = min(info.default_k, upper) if request.k is None else request.k
        if not 1 <= k <= upper:
            raise InvalidRequest(
                f"must be in [1, {upper}] (max_k {info.max_k}, {n_allowed} candidates after "
                f"exclusions), got {k}",
                "k",
            )
        if isinstance(policy, Control):
            self._check_control(info, candidates, excluded, experiment, variant)
        decision_id = f"{self._random.getrandbits(128):032x}"
        meta = DecisionMeta(
            decision_id=decision_id,
            unit_id=request.unit_id or "",
            experiment=experiment or "",
            variant=variant or "",
            policy=info.intervention_policy or policy_label(policy),
            inline_ids=tuple(str(x) for x in inline_ids),
        )
        item = DecisionItem(
            context=context,
            candidates=candidates,
            inline=inline,
            excluded=excluded,
            k=k,
            policy=policy,
            seed=int(decision_id[:16], 16),
            meta=meta,
        )
        pending = Pending(info, decision_id, inline_ids, policy_name(policy), experiment, variant)
        return item, pending

    def _check_control(self, info, candidates, excluded, experiment, variant) -> None:
        # The arm's decision is "no intervention": it must be possible for this request.
        j = info.control_index
        if (candidates is not None and j not in candidates.tolist()) or j in excluded.tolist():
            raise InvalidRequest(
                f"unit is in arm {variant!r} of experiment {experiment!r}, which gets the "
                f"control action {info.catalog[j]!r} (no intervention); it may not be excluded "
                "or left out of the candidates",
                "exclusions" if j in excluded.tolist() else "candidates",
            )

    def _check_context(self, info: UseCaseInfo, context: Any) -> None:
        if isinstance(context, ObdContext):
            n = info.n_user_fields
            if len(context.user_features) != n:
                raise InvalidRequest(
                    f"must hold {n} strings (user_feature_0..{n - 1}), got "
                    f"{len(context.user_features)}",
                    "context.user_features",
                )
            for i, value in enumerate(context.user_features):
                _check_text(value, f"context.user_features[{i}]")
            if context.affinity is not None:
                if len(context.affinity) != info.n_catalog:
                    raise InvalidRequest(
                        f"must hold {info.n_catalog} numbers (one per catalog item), got "
                        f"{len(context.affinity)}",
                        "context.affinity",
                    )
                _finite(context.affinity, "context.affinity")
        elif isinstance(context, HillstromContext):
            for name in ("recency", "history", "mens", "womens", "newbie"):
                value = getattr(context, name)
                if not math.isfinite(value):
                    raise InvalidRequest(f"must be finite, got {value}", f"context.{name}")
            if context.history < 0:
                raise InvalidRequest(
                    f"must be >= 0 (dollars spent), got {context.history}", "context.history"
                )
            for name in ("history_segment", "zip_code", "channel"):
                _check_text(getattr(context, name), f"context.{name}")

    def _candidates(self, info: UseCaseInfo, index: dict[Any, int], request: DecideRequest):
        if request.candidates is None:
            return None, (), ()
        if not request.candidates:
            raise InvalidRequest(
                "must not be empty (omit it to use the whole catalog)", "candidates"
            )
        fast = self._catalog_candidates(info, request.candidates)
        if fast is not None:
            return fast, (), ()
        chosen: list[int] = []
        inline = []
        inline_ids: list[Any] = []
        seen: set[Any] = set()
        for i, cand in enumerate(request.candidates):
            where = f"candidates[{i}]"
            key = _key(cand.id)
            if key in seen:
                raise InvalidRequest(f"id {cand.id!r} is listed twice", f"{where}.id")
            seen.add(key)
            if cand.features is None:
                j = index.get(key)
                if j is None:
                    raise InvalidRequest(
                        f"{cand.id!r} is not in the {info.name} catalog ({_describe_catalog(info)});"
                        " give features for an item outside it",
                        f"{where}.id",
                    )
                chosen.append(j)
                continue
            if not info.accepts_inline:
                raise InvalidRequest(
                    f"use case {info.name} chooses only among its catalog "
                    f"({_describe_catalog(info)}); features are not accepted",
                    f"{where}.features",
                )
            if key in index:
                raise InvalidRequest(
                    f"{cand.id!r} is a catalog id; an inline item needs an id outside the catalog",
                    f"{where}.id",
                )
            f = cand.features
            if not math.isfinite(f.item_feature_0):
                raise InvalidRequest(
                    f"must be finite, got {f.item_feature_0}", f"{where}.features.item_feature_0"
                )
            for name in ("item_feature_1", "item_feature_2", "item_feature_3"):
                _check_text(getattr(f, name), f"{where}.features.{name}")
            inline.append(f)
            inline_ids.append(cand.id)
        return np.asarray(chosen, dtype=np.int64), tuple(inline), tuple(inline_ids)

    def _catalog_candidates(self, info: UseCaseInfo, candidates: Any) -> np.ndarray | None:
        """The common case in one comprehension: every candidate a distinct catalog id
        without features. None when any is not: the per-candidate checks then find (and
        name) the problem."""
        get = self._index[info.name].get
        chosen = [get(c.id) if c.features is None else None for c in candidates]
        if None in chosen or len(set(chosen)) != len(chosen):
            return None
        return np.array(chosen, dtype=np.int64)

    def _exclusions(
        self,
        info: UseCaseInfo,
        index: dict[Any, int],
        request: DecideRequest,
        inline_ids: tuple[Any, ...],
    ) -> np.ndarray:
        if not request.exclusions:
            return np.zeros(0, dtype=np.int64)
        inline_pos = {_key(x): info.n_catalog + j for j, x in enumerate(inline_ids)}
        out = set()
        for i, item_id in enumerate(request.exclusions):
            key = _key(item_id)
            j = index.get(key, inline_pos.get(key))
            if j is None:
                raise InvalidRequest(
                    f"{item_id!r} is neither a catalog id ({_describe_catalog(info)}) nor a "
                    "candidate id",
                    f"exclusions[{i}]",
                )
            out.add(j)
        return np.fromiter(sorted(out), dtype=np.int64, count=len(out))

    def _assign(self, info: UseCaseInfo, request: DecideRequest):
        """(policy, experiment, variant, the use case that decides)."""
        if request.experiment is None:
            return info.policy, None, None, info
        experiment = self.experiments.get(request.experiment)
        if experiment is None:
            known = ", ".join(sorted(self.experiments)) or "none configured"
            raise InvalidRequest(
                f"{request.experiment!r} is not a configured experiment ({known})", "experiment"
            )
        if experiment.use_case != info.name:
            raise InvalidRequest(
                f"experiment {experiment.name!r} runs on use case {experiment.use_case!r}, "
                f"not {info.name!r}",
                "experiment",
            )
        if request.unit_id is None:
            raise InvalidRequest("is required with experiment (it picks the variant)", "unit_id")
        variant = assign_variant(experiment, request.unit_id, self._murmur)
        if variant.use_case is not None:
            info = self.infos[variant.use_case]
        return variant.policy or info.policy, experiment.name, variant.name, info

    # -- answer ---------------------------------------------------------------------------

    def respond(self, pending: Pending, outcome: DecisionOutcome) -> DecideResponse:
        """The answer to the request ``pending`` stands for, from the scorer's outcome."""
        info = pending.info
        n_catalog = info.n_catalog
        actions = []
        for rank, (j, score, prop) in enumerate(
            zip(
                outcome.indices.tolist(),
                outcome.scores.tolist(),
                outcome.propensities.tolist(),
                strict=True,
            ),
            start=1,
        ):
            if j < 0:
                break
            item_id = info.catalog[j] if j < n_catalog else pending.inline_ids[j - n_catalog]
            actions.append(RankedAction(item_id, rank, score, prop))
        inter = outcome.intervention
        return DecideResponse(
            decision_id=pending.decision_id,
            use_case=info.name,
            model_name=info.model_name,
            model_version=outcome.model_version or info.version,
            model_checkpoint=outcome.model_checkpoint or info.checkpoint_id,
            policy=INTERVENTION_POLICY if inter is not None else pending.policy,
            actions=actions,
            experiment=info.intervention_experiment if inter is not None else pending.experiment,
            variant=inter.reason if inter is not None else pending.variant,
            intervention=inter,
        )

    # -- batch of intervention decisions ----------------------------------------------------

    def decode_batch(self, body: bytes, fmt: str) -> BatchDecideRequest:
        """``POST /v1/decide/batch``'s body, or InvalidRequest naming the bad field
        (``units[3].context.history``)."""
        return decode_body(self._batch_decoders[fmt], body, fmt)

    def prepare_batch(self, request: BatchDecideRequest, max_units: int) -> BatchPending:
        """Validate a batch against its use case; the columns and ids to decide on."""
        info = self.infos.get(request.use_case)
        if info is None:
            served = ", ".join(sorted(self.infos))
            raise ModelNotFound(
                f"use_case: {request.use_case!r} is not served; served use cases: {served}"
            )
        if info.intervention_experiment is None:
            ruled = sorted(n for n, i in self.infos.items() if i.intervention_experiment)
            raise InvalidRequest(
                f"{request.use_case!r} has no interventions; the batch endpoint serves "
                f"intervention use cases ({', '.join(ruled) or 'none configured'})",
                "use_case",
            )
        n = len(request.units)
        if n == 0:
            raise InvalidRequest("must hold at least one unit", "units")
        if n > max_units:
            raise InvalidRequest(
                f"holds {n} units; send at most {max_units} per request "
                "(interventions.max_batch_units)",
                "units",
            )
        contexts = [u.context for u in request.units]
        for i, context in enumerate(contexts):
            try:
                self._check_context(info, context)
            except InvalidRequest as exc:
                raise InvalidRequest(
                    str(exc).split(": ", 1)[-1], f"units[{i}].{exc.field}"
                ) from None
        columns = {
            name: [getattr(c, name) for c in contexts]
            for name in HillstromContext.__struct_fields__
        }
        dry = request.dry_run
        decision_ids = [] if dry else [f"{self._random.getrandbits(128):032x}" for _ in range(n)]
        given = [u.unit_id or "" for u in request.units]
        # A unit without an id is its own randomisation unit (its decision id, or in a dry
        # run a fresh random id: not sticky either way).
        units = [
            g or (decision_ids[i] if not dry else f"{self._random.getrandbits(128):032x}")
            for i, g in enumerate(given)
        ]
        return BatchPending(info, columns, units, given, decision_ids, dry)

    def respond_batch(self, pending: BatchPending, outcome: UnitsOutcome) -> BatchDecideResponse:
        """The batch's answer from the scorer's outcome (results in unit order)."""
        info = pending.info
        ids = pending.decision_ids or [None] * len(pending.unit_ids)
        results = [
            UnitDecision(unit, decision_id, result)
            for unit, decision_id, result in zip(
                pending.unit_ids, ids, outcome.results, strict=True
            )
        ]
        return BatchDecideResponse(
            use_case=info.name,
            model_name=info.model_name,
            model_version=outcome.model_version or info.version,
            model_checkpoint=outcome.model_checkpoint or info.checkpoint_id,
            experiment=info.intervention_experiment or "",
            policy=INTERVENTION_POLICY,
            dry_run=pending.dry_run,
            results=results,
        )

    def encode(self, response: Any, fmt: str) -> bytes:
        """``response`` in the request's media type."""
        return self._encoders[fmt].encode(response)


def _key(item_id: Any) -> Any:
    """Ids compare as text so ``7`` and ``"7"`` name the same catalog item."""
    return str(item_id)


def _catalog_index(info: UseCaseInfo) -> dict[Any, int]:
    """Catalog position by id as text, and also by the int form of numeric ids (7 and "7"
    name one item), so the common case looks ids up without converting each to text."""
    index: dict[Any, int] = {_key(item_id): j for j, item_id in enumerate(info.catalog)}
    for key, j in list(index.items()):
        if key.isdigit() and str(int(key)) == key:
            index[int(key)] = j
    return index


def _describe_catalog(info: UseCaseInfo) -> str:
    if info.catalog and all(isinstance(x, int) for x in info.catalog):
        return f"ids 0..{info.n_catalog - 1}"
    return "one of " + ", ".join(repr(x) for x in info.catalog)


def assign_variant(experiment: Experiment, unit_id: str, murmur: Any = None) -> Variant:
    """The unit's arm (the holdout comes back as a ``Variant``): MurmurHash3 of
    ``"{salt}:{unit_id}"`` (the hash kernel) over 2^32 is a point in [0, 1) that falls in
    one arm's share (``Experiment.arms`` order). The same unit gets the same arm in every
    process and on every request (sticky) while the salt and the shares stay the same."""
    if murmur is None:
        from nudgeserve.kernels import murmurhash3_32 as murmur
    h = int(murmur([f"{experiment.salt}:{unit_id}"], seed=0)[0])
    arms = experiment.arms()
    # Shares add up to 1 within the config's tolerance; scale by their exact sum so the
    # last arm's share is not shaved by rounding.
    point = h / 2**32 * sum(a.weight for a in arms)
    acc = 0.0
    for arm in arms:
        acc += arm.weight
        if point < acc:
            return arm
    return arms[-1]
