"""What every use-case engine shares: settings and info, loading, warm-up, the batch
invariant, and selection with the learner's bandit snapshot.

An engine scores batches of already validated requests: ``load()`` loads the weights and
warms up (kernel compilation, first torch call); ``decide_batch`` and ``infer_batch``
return exactly one outcome per request, in order. No HTTP, no Ray: the deployments call
engines, tests call them directly. The kinds: ``obd.ObdEngine`` (item selection) and
``hillstrom.HillstromEngine`` (e-mail interventions).

An engine is configured through its constructor (``extra_policies``) and between batches
through explicit methods (``set_bandit_snapshot``, ``set_ledger``); nothing else sets its
state from outside.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from nudgeserve.serve.config import Policy, UseCase
from nudgeserve.serve.engine.describe import CHECKPOINT_KIND, checkpoint_path, describe
from nudgeserve.serve.engine.types import (
    DecisionItem,
    DecisionOutcome,
    InferOutcome,
    StageTimes,
    UseCaseInfo,
)
from nudgeserve.serve.errors import BatchError

if TYPE_CHECKING:
    from nudgeserve.serve.engine.interventions import InterventionBatch, InterventionEngine


def check_outcomes(outcomes: list, n_items: int) -> list:
    """Enforce the batch invariant: exactly one outcome per request."""
    if len(outcomes) != n_items:
        raise BatchError(f"batch of {n_items} requests produced {len(outcomes)} outcomes")
    return outcomes


class BatchEngine:
    """One use case's batched scorer: the interface the deployments use, and the
    machinery every kind shares (see the module docstring).

    settings: the use case. extra_policies: the other policies it may decide with (its
    experiments' variants and holdouts, ``ServeConfig.policies_for``), warmed up too.
    """

    def __init__(self, settings: UseCase, extra_policies: Sequence[Policy] = ()) -> None:
        self.settings = settings
        self.info = describe(settings)
        self.extra_policies = tuple(extra_policies)
        self.loaded: Any = None
        self.scorer: Any = None
        # The learner's latest ``BanditSnapshot`` (``set_bandit_snapshot``); None: no
        # learner, the policies' priors.
        self._bandit_snapshot: Any = None
        # The linear bandit before any feedback (set by ``load`` where the model has the
        # features it needs; also used when the snapshot was learned on another model's
        # features).
        self.linear_prior: Any = None
        # The intervention rule of a use case with ``interventions`` (set by ``load``).
        self._interventions: InterventionEngine | None = None

    def load(self, device: str | None = None, warm: bool = True) -> dict[str, float]:
        """Load weights onto ``device`` (default: the setting) and warm up (unless
        ``warm`` is False: for offline replay, where first-call latency does not
        matter). Returns seconds per warm-up step."""
        raise NotImplementedError

    # -- configuration between batches -----------------------------------------------------

    def set_bandit_snapshot(self, snapshot: Any) -> None:
        """Decide with the learner's latest ``BanditSnapshot`` for this use case (per-arm
        reward counts, linear bandits by key) from the next batch on; None: no learner,
        the policies' priors. The replica calls it before each batch."""
        self._bandit_snapshot = snapshot

    @property
    def interventions(self) -> InterventionEngine | None:
        """The intervention rule of a use case with ``interventions`` once loaded; None
        for every other use case."""
        return self._interventions

    def set_ledger(self, ledger: Any) -> None:
        """Decide on ``ledger`` (the daily caps, e.g. the replicas' shared budget client)
        from now on; ValueError for a use case without interventions."""
        self._require_interventions("no ledger").ledger = ledger

    @property
    def ledger_blocks(self) -> bool:
        """Whether deciding may wait on another process (a shared budget): the caller
        then runs ``decide_batch`` / ``decide_units`` off its event loop."""
        from nudgeserve.models.policies.intervention import BudgetLedger

        ledger = None if self._interventions is None else self._interventions.ledger
        return ledger is not None and not isinstance(ledger, BudgetLedger)

    def _require_interventions(self, what: str) -> InterventionEngine:
        if self._interventions is None:
            raise ValueError(f"use case {self.info.name!r} has no interventions: {what}")
        return self._interventions

    # -- scoring ----------------------------------------------------------------------------

    def decide_units(
        self, columns: dict[str, Any], unit_ids: np.ndarray, spend_budget: bool
    ) -> InterventionBatch:
        """The batch endpoint: the intervention rule on many units at once; the ensemble
        runs in chunks, the budget is allocated once. ValueError for a use case without
        interventions."""
        rule = self._require_interventions("no batch decisions")
        return rule.decide(columns, unit_ids, spend_budget=spend_budget)

    def replay_scores(self, features: list[Any], candidates: list[list[str]]) -> list:
        """Scores this model gives every candidate of logged decisions.

        features: the logged replay vectors, one per decision; candidates: each
        decision's candidate ids as logged. Returns one float64[c] per decision.
        """
        raise NotImplementedError

    def _load_checkpoint(self):
        from nudgeserve.models import load_checkpoint

        path = checkpoint_path(self.settings)
        return load_checkpoint(path, expected_kind=CHECKPOINT_KIND[self.info.kind])

    def warmup(self) -> dict[str, float]:
        """Choose the kernels' backends (measured once per machine, ``kernels.autotune``),
        then compile and touch everything a request will use; returns seconds per step."""
        from nudgeserve.kernels import autotune
        from nudgeserve.kernels import warmup as warm_kernels

        took = {}
        t0 = time.perf_counter()
        autotune(log=logging.getLogger("ray.serve"))
        took["kernel_autotune"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm_kernels()
        took["kernels"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.scorer.warmup((1, self.settings.batching.max_batch_size))
        took["model"] = time.perf_counter() - t0
        timings = getattr(self.scorer, "host_timings_us", None)
        if timings:
            logging.getLogger("ray.serve").info(
                "model %s: NumPy host path for batches <= %d, torch above (median us, host vs "
                "torch: %s)",
                self.info.name,
                self.scorer.host_max_batch,
                ", ".join(f"{b}: {h:.0f} vs {t:.0f}" for b, (h, t) in timings.items()),
            )
        t0 = time.perf_counter()
        for policy in self._policies():
            self.decide_batch([self.example_item(policy)])
        self.infer_batch([self.example_inputs()])
        took["pipeline"] = time.perf_counter() - t0
        return took

    def _policies(self) -> list[Policy]:
        return list(dict.fromkeys([self.settings.policy, *self.extra_policies]))

    def example_item(self, policy: Policy) -> DecisionItem:
        """A request deciding with ``policy`` (warm-up; it carries no ``meta``)."""
        raise NotImplementedError

    def example_inputs(self) -> dict[str, np.ndarray]:
        """One row of every KServe v2 input (warm-up)."""
        raise NotImplementedError

    def decide_batch(self, items: list[DecisionItem]) -> list[DecisionOutcome]:
        """Score and select for a batch; one ``DecisionOutcome`` per item, in order."""
        raise NotImplementedError

    def infer_batch(self, requests: list[dict[str, np.ndarray]]) -> list[InferOutcome]:
        """KServe v2 infer for a batch of requests (each with its own rows)."""
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
        snap = self._bandit_snapshot
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


def catalog_mask(items: list[DecisionItem], n_rows: int, n_cols: int, n_catalog: int):
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


def slate_outcomes(
    items: list[DecisionItem],
    scores: np.ndarray,
    idx: np.ndarray,
    prop: np.ndarray,
    times: StageTimes,
    replay: list[np.ndarray],
    info: UseCaseInfo,
) -> list[DecisionOutcome]:
    """One outcome per item: its first ``k`` selected columns of ``idx`` with their scores
    and slot propensities (``prop``), and its replay vector."""
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


def bandit_key(item: DecisionItem) -> str:
    """The learner's key for the item's bandit state (``learner.policy_key``): ``""``
    outside experiments, else ``"experiment/variant"``."""
    meta = item.meta
    if meta is None or not meta.experiment:
        return ""
    return f"{meta.experiment}/{meta.variant}"
