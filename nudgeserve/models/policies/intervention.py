"""The intervention decision rule: act only when the uplift clears its cost with confidence.

For each unit of a batch (a customer or session) the rule gets the baseline risk of the
defect (e.g. P(no visit) with no intervention), and for each of ``T`` actions (column
``control`` = no intervention) the predicted uplift of the objective over the control with
its standard error. With ``v = value_per_unit``, ``c_t = costs[t]`` and the one-sided normal
quantile ``z = z(confidence)``:

    net_t   = v * uplift_t - c_t                    expected net value of treatment t
    lower_t = v * (uplift_t - z * sd_t) - c_t       its lower confidence bound
    eligible_t  <=>  t != control  and  lower_t > threshold

i.e. ``P(net value > threshold) >= confidence`` under a normal approximation of the uplift's
uncertainty. The policy's choice is the eligible treatment with the largest ``net_t`` (the
next eligible one when a daily cap has run out), else no intervention.

Randomisation (deterministic per unit). ``u = hash_categorical("{salt}:{unit_id}", 2**20,
seed=hash_seed)`` puts a unit in the holdout when ``u < H`` and in exploration when
``H <= u < H + E``, with ``H = round(holdout_share * 2**20)``, ``E = round(explore_share *
2**20)``; the effective shares ``h = H / 2**20``, ``e = E / 2**20`` are the configured ones to
within 1e-6. A holdout unit gets no intervention; an exploring unit gets action
``hash_categorical("{salt}:{unit_id}", T, seed=hash_seed + 1)``, uniform over all ``T``
actions including none; every other unit gets the policy's choice. The same unit always
lands in the same branch (while the salt stays), so the holdout is a stable control group;
use a salt no experiment uses, or the holdout will line up with experiment variants.

Propensity of the action taken. A treatment is *available* for a unit when its daily cap
had room just before the unit was served (``BudgetLedger.allocate`` reports it; without a
ledger every treatment is available). An exploring unit whose drawn treatment is
unavailable gets no intervention. With ``g`` the policy's choice among available
treatments (control when none is eligible and available) and ``m`` the number of
unavailable treatments, the probability that the design gives action ``a`` is

    p(a) = h * [a = control]
         + e * ( [a = control] * (1 + m) / T  +  [a != control and a available] / T )
         + (1 - h - e) * [a = g]

which the decisions record for every unit (``InterventionDecisions.propensity``); it is
the exact probability over the hash, given the unit's context and the budget state.

Severity = baseline risk x value at stake (per unit, default ``value_per_unit``): the
expected value the defect would cost without intervention, in the same money as costs.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Protocol, runtime_checkable

import msgspec
import numpy as np

from nudgeserve.kernels import hash_categorical
from nudgeserve.models.specs import HILLSTROM_CONTROL, HILLSTROM_TREATMENTS

__all__ = [
    "HASH_BUCKETS",
    "REASONS",
    "BudgetLedger",
    "BudgetState",
    "InterventionConfig",
    "InterventionDecisions",
    "Ledger",
    "assign_branches",
    "decide_from_ensemble",
    "decide_interventions",
    "design_propensities",
]

# Why each unit got its action; ``InterventionDecisions.reason`` holds indices into this.
REASONS: tuple[str, ...] = ("act", "below_threshold", "budget_exhausted", "holdout", "explore")
ACT, BELOW_THRESHOLD, BUDGET_EXHAUSTED, HOLDOUT, EXPLORE = range(5)

# Resolution of the holdout / exploration shares (2**-20, about 1e-6).
HASH_BUCKETS = 1 << 20

_SECONDS_PER_DAY = 86_400.0


def _number(name: str, value: object, *, low: float, high: float, closed_high: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    above = value > high if closed_high else value >= high
    if not math.isfinite(value) or value < low or above:
        bracket = "]" if closed_high else ")"
        raise ValueError(f"{name} must be in [{low:g}, {high:g}{bracket}, got {value!r}")
    return value


class InterventionConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of the decision rule (validated when built; errors name the field).

    treatments: the ``T`` action names in model-column order, ``control`` among them.
    objective: the outcome whose uplift the rule values (a label: ``visit`` ...).
    value_per_unit: money per unit of the objective (e.g. per visit), > 0.
    costs: money per intervention, by treatment name (missing = 0; the control costs 0).
    threshold: the net value (money) an intervention must exceed.
    confidence: in [0.5, 1): act only when P(net value > threshold) >= confidence.
    holdout_share / explore_share: shares of units held out / explored, sum < 1.
    daily_caps: interventions allowed per day, by treatment name (missing = no cap).
    salt / hash_seed: the per-unit hash (see the module docstring).
    """

    treatments: tuple[str, ...] = HILLSTROM_TREATMENTS
    control: str = HILLSTROM_CONTROL
    objective: str = "visit"
    value_per_unit: float = 1.0
    costs: dict[str, float] = msgspec.field(default_factory=dict)
    threshold: float = 0.0
    confidence: float = 0.8
    holdout_share: float = 0.1
    explore_share: float = 0.0
    daily_caps: dict[str, int] = msgspec.field(default_factory=dict)
    salt: str = "intervention"
    hash_seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.treatments, tuple | list) or not all(
            isinstance(t, str) and t for t in self.treatments
        ):
            raise TypeError("treatments must be a sequence of non-empty names")
        if len(self.treatments) < 2 or len(set(self.treatments)) != len(self.treatments):
            raise ValueError(
                f"treatments must hold >= 2 distinct names, got {list(self.treatments)}"
            )
        if self.control not in self.treatments:
            raise ValueError(
                f"control {self.control!r} is not one of treatments {list(self.treatments)}"
            )
        if not isinstance(self.objective, str) or not self.objective:
            raise TypeError("objective must be a non-empty string")
        if (
            _number("value_per_unit", self.value_per_unit, low=0, high=math.inf, closed_high=False)
            <= 0
        ):
            raise ValueError(f"value_per_unit must be > 0, got {self.value_per_unit!r}")
        if not isinstance(self.costs, dict):
            raise TypeError(
                f"costs must be a mapping of treatment -> cost, got {type(self.costs).__name__}"
            )
        for name, cost in self.costs.items():
            if name not in self.treatments:
                raise ValueError(
                    f"costs names {name!r}, which is not one of {list(self.treatments)}"
                )
            _number(f"costs[{name!r}]", cost, low=0, high=math.inf, closed_high=False)
            if name == self.control and cost != 0:
                raise ValueError(f"costs[{name!r}] must be 0: the control is no intervention")
        _number("threshold", self.threshold, low=-math.inf, high=math.inf, closed_high=False)
        _number("confidence", self.confidence, low=0.5, high=1.0, closed_high=False)
        h = _number("holdout_share", self.holdout_share, low=0, high=1, closed_high=False)
        e = _number("explore_share", self.explore_share, low=0, high=1, closed_high=False)
        if h + e >= 1:
            raise ValueError(
                f"holdout_share + explore_share must be < 1 (some units must follow the "
                f"policy), got {h} + {e}"
            )
        if not isinstance(self.daily_caps, dict):
            raise TypeError(
                f"daily_caps must be a mapping of treatment -> cap, got {type(self.daily_caps).__name__}"
            )
        for name, cap in self.daily_caps.items():
            if name not in self.treatments or name == self.control:
                raise ValueError(
                    f"daily_caps names {name!r}, which is not a treatment other than the control"
                )
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
                raise ValueError(f"daily_caps[{name!r}] must be an int >= 0, got {cap!r}")
        if not isinstance(self.salt, str):
            raise TypeError(f"salt must be a string, got {type(self.salt).__name__}")
        if isinstance(self.hash_seed, bool) or not isinstance(self.hash_seed, int):
            raise TypeError(f"hash_seed must be an int, got {type(self.hash_seed).__name__}")
        if not 0 <= self.hash_seed < 2**32:
            raise ValueError(f"hash_seed must be in [0, 2**32), got {self.hash_seed}")

    @property
    def control_index(self) -> int:
        return self.treatments.index(self.control)

    @property
    def effective_holdout_share(self) -> float:
        """The holdout share the hash realises (a multiple of 2**-20)."""
        return round(self.holdout_share * HASH_BUCKETS) / HASH_BUCKETS

    @property
    def effective_explore_share(self) -> float:
        """The exploration share the hash realises (a multiple of 2**-20)."""
        return round(self.explore_share * HASH_BUCKETS) / HASH_BUCKETS

    def cost_vector(self) -> np.ndarray:
        """float64[T] cost per action in ``treatments`` order."""
        return np.array([float(self.costs.get(t, 0.0)) for t in self.treatments])


# ------------------------------------------------------------------------------ budget


@runtime_checkable
class Ledger(Protocol):
    """What ``decide_interventions`` needs from a budget: ``BudgetLedger`` itself, or a
    proxy that forwards ``allocate`` to the one ledger a server shares (e.g. in an actor)."""

    def allocate(
        self, preferences: np.ndarray, names: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]: ...


class BudgetState(msgspec.Struct, frozen=True):
    """The ledger at one moment: ``day`` (days since the epoch in the ledger's time zone),
    interventions ``used`` today and the ``caps``, by treatment name."""

    day: int
    used: dict[str, int]
    caps: dict[str, int]


class BudgetLedger:
    """Daily intervention caps shared by every thread that decides (one lock).

    caps: ``{treatment: interventions allowed per day}``; names without a cap are never
    refused. clock: returns epoch seconds (``time.time``; inject a fake one in tests).
    utc_offset_s: where the day boundary falls (0 = midnight UTC; 3600 = midnight UTC+1).
    Counts reset when the clock enters a new day. The class knows nothing of Ray: a server
    with several replicas keeps one ledger in one actor and calls ``allocate`` per batch.
    """

    def __init__(
        self,
        caps: Mapping[str, int],
        *,
        clock: Callable[[], float] = time.time,
        utc_offset_s: float = 0.0,
    ) -> None:
        if not isinstance(caps, Mapping):
            raise TypeError(f"caps must be a mapping of name -> int, got {type(caps).__name__}")
        for name, cap in caps.items():
            if not isinstance(name, str):
                raise TypeError(f"caps keys must be names (str), got {name!r}")
            if isinstance(cap, bool) or not isinstance(cap, int | np.integer) or cap < 0:
                raise ValueError(f"caps[{name!r}] must be an int >= 0, got {cap!r}")
        if not callable(clock):
            raise TypeError("clock must be a callable returning epoch seconds")
        _number("utc_offset_s", utc_offset_s, low=-50_400, high=50_400, closed_high=True)
        self._caps = {name: int(cap) for name, cap in caps.items()}
        self._clock = clock
        self._offset = float(utc_offset_s)
        self._lock = threading.Lock()
        self._day = self._today()
        self._used = dict.fromkeys(self._caps, 0)

    @classmethod
    def from_config(
        cls,
        config: InterventionConfig,
        *,
        clock: Callable[[], float] = time.time,
        utc_offset_s: float = 0.0,
    ) -> BudgetLedger:
        return cls(config.daily_caps, clock=clock, utc_offset_s=utc_offset_s)

    def _today(self) -> int:
        return math.floor((float(self._clock()) + self._offset) / _SECONDS_PER_DAY)

    def _roll(self) -> None:
        """Start a new day's counts if the clock has moved past the current day."""
        today = self._today()
        if today != self._day:
            self._day = today
            self._used = dict.fromkeys(self._caps, 0)

    def state(self) -> BudgetState:
        with self._lock:
            self._roll()
            return BudgetState(self._day, dict(self._used), dict(self._caps))

    def remaining(self, name: str) -> int | None:
        """Interventions of ``name`` still allowed today (None: no cap)."""
        with self._lock:
            self._roll()
            if name not in self._caps:
                return None
            return self._caps[name] - self._used[name]

    def try_spend(self, name: str, amount: int = 1) -> bool:
        """Take ``amount`` interventions of ``name`` if today's cap allows; else False."""
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
            raise ValueError(f"amount must be an int >= 1, got {amount!r}")
        with self._lock:
            self._roll()
            if name not in self._caps:
                return True
            if self._used[name] + amount > self._caps[name]:
                return False
            self._used[name] += amount
            return True

    def refund(self, name: str, amount: int = 1) -> None:
        """Give back interventions that were taken but not delivered (same day only)."""
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
            raise ValueError(f"amount must be an int >= 1, got {amount!r}")
        with self._lock:
            self._roll()
            if name in self._caps:
                self._used[name] = max(0, self._used[name] - amount)

    def allocate(
        self, preferences: np.ndarray, names: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Serve a batch in order, each unit taking its first preference with budget left.

        preferences: int64[B, R] indices into ``names`` in order of preference, -1 for
            none (a row of -1 asks for nothing).
        Returns ``(granted, available)``: granted int64[B] the index taken (-1: none asked
        or none left), available bool[B, len(names)]: which names had budget left just
        before the unit was served (what its propensity must condition on).
        """
        prefs = np.asarray(preferences)
        if prefs.ndim != 2 or prefs.dtype.kind not in "iu":
            raise ValueError(
                f"preferences must be an integer array [B, R], got {prefs.dtype} {prefs.shape}"
            )
        n_names = len(names)
        if prefs.size and (prefs.min() < -1 or prefs.max() >= n_names):
            raise ValueError(f"preferences must hold -1 or indices into names [0, {n_names})")
        b = prefs.shape[0]
        granted = np.full(b, -1, dtype=np.int64)
        # Row index from which each name is unavailable (b: available to the whole batch).
        unavailable_from = np.full(n_names, b, dtype=np.int64)
        first = prefs[:, 0] if prefs.shape[1] else np.full(b, -1, dtype=np.int64)
        capped = [j for j, name in enumerate(names) if name in self._caps]
        demand = {j: int(np.count_nonzero(first == j)) for j in capped}
        with self._lock:
            self._roll()
            left = {j: self._caps[names[j]] - self._used[names[j]] for j in capped}
            if all(0 < demand[j] <= left[j] or demand[j] == 0 for j in capped):
                # Every first preference fits in what is left (the usual case): grant them
                # all at once; a cap reached exactly closes after its last requesting row.
                granted[first >= 0] = first[first >= 0]
                for j in capped:
                    if left[j] == 0:
                        unavailable_from[j] = 0
                    elif demand[j] == left[j]:
                        unavailable_from[j] = int(np.flatnonzero(first == j)[-1]) + 1
                    left[j] -= demand[j]
            else:
                self._allocate_in_order(prefs, granted, unavailable_from, left)
            for j in capped:
                self._used[names[j]] = self._caps[names[j]] - left[j]
        available = np.arange(b)[:, None] < unavailable_from[None, :]
        return granted, available

    @staticmethod
    def _allocate_in_order(
        prefs: np.ndarray, granted: np.ndarray, unavailable_from: np.ndarray, left: dict[int, int]
    ) -> None:
        """Unit by unit (a cap runs out inside this batch, so order matters)."""
        for j, remaining in left.items():
            if remaining <= 0:
                unavailable_from[j] = 0
        asking = np.flatnonzero((prefs >= 0).any(axis=1))
        for i in asking.tolist():
            for j in prefs[i].tolist():
                if j < 0:
                    continue
                if j in left:
                    if left[j] <= 0:
                        continue
                    left[j] -= 1
                    if left[j] == 0:
                        unavailable_from[j] = i + 1
                granted[i] = j
                break


# ----------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class InterventionDecisions:
    """The rule's output for B units (T actions; ``control_index`` = no intervention).

    action: int64[B] the action taken; reason: int8[B] index into ``REASONS``.
    propensity: float64[B] the design's probability of ``action`` (module docstring).
    policy_action: int64[B] the rule's own choice, ignoring randomisation and caps
        (what "the policy" means in impact reports).
    expected_net_value: float32[B] net value of the action taken (0 for no intervention).
    net_value, net_lower: float32[B, T] per action (control columns 0).
    eligible: bool[B, T]; severity: float32[B]; baseline_risk: float32[B].
    available: bool[B, T] which treatments had budget when the unit was served.
    """

    action: np.ndarray
    reason: np.ndarray
    propensity: np.ndarray
    policy_action: np.ndarray
    expected_net_value: np.ndarray
    net_value: np.ndarray
    net_lower: np.ndarray
    eligible: np.ndarray
    severity: np.ndarray
    baseline_risk: np.ndarray
    available: np.ndarray
    treatments: tuple[str, ...]
    control_index: int

    def __len__(self) -> int:
        return int(self.action.shape[0])

    def reasons(self) -> list[str]:
        """The reason of every unit as a string."""
        return [REASONS[r] for r in self.reason.tolist()]

    def action_names(self) -> list[str]:
        return [self.treatments[a] for a in self.action.tolist()]


def _unit_keys(unit_ids: Any, salt: str) -> np.ndarray:
    if isinstance(unit_ids, str | bytes):
        raise TypeError("unit_ids must be a sequence of ids, got a single string")
    ids = np.asarray(unit_ids)
    if ids.ndim != 1:
        raise ValueError(f"unit_ids must be 1-D, got shape {ids.shape}")
    if ids.size == 0:
        return np.zeros(0, dtype=str)
    if ids.dtype.kind not in "iuUO":
        raise TypeError(f"unit_ids must be strings or integers, got dtype {ids.dtype}")
    if ids.dtype.kind == "O" and not all(isinstance(v, str | int) for v in ids.tolist()):
        raise TypeError("unit_ids must be strings or integers")
    return np.char.add(f"{salt}:", ids.astype(str))


def assign_branches(unit_ids: Any, config: InterventionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-unit randomisation.

    unit_ids: [B] str or int ids. Returns ``(branch, explore_action)``: branch int8[B]
    (``HOLDOUT``, ``EXPLORE`` or ``ACT`` for units that follow the policy) and
    explore_action int64[B] (the action an exploring unit gets; drawn for every unit).
    """
    keys = _unit_keys(unit_ids, config.salt)
    n_actions = len(config.treatments)
    if keys.shape[0] == 0:
        return np.zeros(0, dtype=np.int8), np.zeros(0, dtype=np.int64)
    bucket = hash_categorical(keys, HASH_BUCKETS, seed=config.hash_seed)
    action = hash_categorical(keys, n_actions, seed=(config.hash_seed + 1) % 2**32)
    h = round(config.holdout_share * HASH_BUCKETS)
    e = round(config.explore_share * HASH_BUCKETS)
    branch = np.full(keys.shape[0], ACT, dtype=np.int8)
    branch[bucket < h] = HOLDOUT
    branch[(bucket >= h) & (bucket < h + e)] = EXPLORE
    return branch, action.astype(np.int64)


def design_propensities(
    config: InterventionConfig, policy_choice: np.ndarray, available: np.ndarray
) -> np.ndarray:
    """float64[B, T]: the design's probability of every action for every unit.

    policy_choice: int64[B] the policy branch's action given availability;
    available: bool[B, T] (the control's column is ignored). Rows sum to 1.
    """
    b, t = available.shape
    c = config.control_index
    h, e = config.effective_holdout_share, config.effective_explore_share
    avail = available.copy()
    avail[:, c] = False
    probs = np.where(avail, e / t, 0.0)
    n_unavailable = (t - 1) - avail.sum(axis=1)
    probs[:, c] = h + e * (1 + n_unavailable) / t
    probs[np.arange(b), policy_choice] += 1.0 - h - e
    return probs


def _float_array(name: str, x: Any, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a numeric array, got dtype {a.dtype}")
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite (found NaN or infinity)")
    return a


def decide_interventions(
    config: InterventionConfig,
    unit_ids: Any,
    baseline_risk: np.ndarray,
    uplift: np.ndarray,
    uplift_sd: np.ndarray,
    *,
    value_at_stake: np.ndarray | None = None,
    ledger: Ledger | None = None,
) -> InterventionDecisions:
    """Decide for a batch of units (see the module docstring for the rule).

    unit_ids: [B] str or int ids (the randomisation unit).
    baseline_risk: float[B] in [0, 1], P(defect) with no intervention.
    uplift: float[B, T] predicted uplift of the objective over the control per action;
    uplift_sd: float[B, T] >= 0 its standard error (the control columns are ignored).
    value_at_stake: float[B] >= 0 money the defect puts at risk (default value_per_unit).
    ledger: daily caps to respect (None: no caps, even if the config lists some): a
        ``BudgetLedger`` or anything with its ``allocate`` (see ``Ledger``).
    """
    if not isinstance(config, InterventionConfig):
        raise TypeError(f"config must be an InterventionConfig, got {type(config).__name__}")
    risk = np.asarray(baseline_risk)
    if risk.ndim != 1:
        raise ValueError(f"baseline_risk must be 1-D [B], got shape {risk.shape}")
    b, t = risk.shape[0], len(config.treatments)
    risk = _float_array("baseline_risk", risk, (b,))
    if b and (risk.min() < 0 or risk.max() > 1):
        raise ValueError("baseline_risk must be probabilities in [0, 1]")
    mean = _float_array("uplift", uplift, (b, t))
    sd = _float_array("uplift_sd", uplift_sd, (b, t))
    if b and sd.min() < 0:
        raise ValueError("uplift_sd must be >= 0")
    if value_at_stake is None:
        stake = np.full(b, config.value_per_unit)
    else:
        stake = _float_array("value_at_stake", value_at_stake, (b,))
        if b and stake.min() < 0:
            raise ValueError("value_at_stake must be >= 0")
    if ledger is not None and not isinstance(ledger, Ledger):
        raise TypeError(
            f"ledger must have an allocate(preferences, names) method, got {type(ledger).__name__}"
        )
    branch, explore_action = assign_branches(unit_ids, config)
    if branch.shape[0] != b:
        raise ValueError(f"unit_ids has {branch.shape[0]} ids but baseline_risk has {b} rows")

    c = config.control_index
    z = NormalDist().inv_cdf(config.confidence)
    cost = config.cost_vector()
    net = config.value_per_unit * mean - cost
    lower = config.value_per_unit * (mean - z * sd) - cost
    net[:, c] = 0.0
    lower[:, c] = 0.0
    eligible = lower > config.threshold
    eligible[:, c] = False

    # Eligible treatments by descending expected net value; -1 pads the rest.
    ranked = np.argsort(np.where(eligible, -net, np.inf), axis=1, kind="stable")
    ranked_eligible = np.take_along_axis(eligible, ranked, axis=1)
    policy_prefs = np.where(ranked_eligible, ranked, -1)[:, : t - 1]
    top = policy_prefs[:, 0] if t > 1 else np.full(b, -1)
    policy_action = np.where(top >= 0, top, c).astype(np.int64)

    prefs = np.full((b, max(t - 1, 1)), -1, dtype=np.int64)
    follows = branch == ACT
    prefs[follows] = policy_prefs[follows]
    explores = (branch == EXPLORE) & (explore_action != c)
    prefs[explores, 0] = explore_action[explores]
    if ledger is None:
        granted = np.where(prefs[:, 0] >= 0, prefs[:, 0], -1)
        available = np.ones((b, t), dtype=bool)
    else:
        granted, available = ledger.allocate(prefs, config.treatments)

    # The policy branch's action given this unit's availability (for every unit: the
    # propensity of a holdout or exploring unit still counts the policy's mass).
    choice = np.full(b, c, dtype=np.int64)
    open_choice = np.zeros(b, dtype=bool)
    for r in range(policy_prefs.shape[1]):
        cand = policy_prefs[:, r]
        ok = (cand >= 0) & ~open_choice
        ok[ok] = available[np.flatnonzero(ok), cand[ok]]
        choice[ok] = cand[ok]
        open_choice |= ok

    action = np.full(b, c, dtype=np.int64)
    reason = np.empty(b, dtype=np.int8)
    reason[branch == HOLDOUT] = HOLDOUT
    took = granted >= 0
    action[took] = granted[took]
    exploring = branch == EXPLORE
    reason[exploring] = EXPLORE
    reason[exploring & (explore_action != c) & ~took] = BUDGET_EXHAUSTED
    any_eligible = eligible.any(axis=1)
    reason[follows & ~any_eligible] = BELOW_THRESHOLD
    reason[follows & any_eligible & took] = ACT
    reason[follows & any_eligible & ~took] = BUDGET_EXHAUSTED

    probs = design_propensities(config, choice, available)
    rows = np.arange(b)
    return InterventionDecisions(
        action=action,
        reason=reason,
        propensity=probs[rows, action],
        policy_action=policy_action,
        expected_net_value=net[rows, action].astype(np.float32),
        net_value=net.astype(np.float32),
        net_lower=lower.astype(np.float32),
        eligible=eligible,
        severity=(risk * stake).astype(np.float32),
        baseline_risk=risk.astype(np.float32),
        available=available,
        treatments=tuple(config.treatments),
        control_index=c,
    )


def decide_from_ensemble(
    config: InterventionConfig,
    unit_ids: Any,
    prediction: Any,
    *,
    value_at_stake: np.ndarray | None = None,
    ledger: Ledger | None = None,
) -> InterventionDecisions:
    """``decide_interventions`` on an ``EnsemblePrediction`` of the Hillstrom ensemble.

    The objective's uplift and sd come from the ensemble (``config.objective`` must be
    ``visit``, ``conversion`` or ``spend``); the baseline risk is the defect "no visit":
    1 - P(visit) with no e-mail, the members' mean.
    """
    from nudgeserve.models.learn.uplift_ensemble import EnsemblePrediction

    if not isinstance(prediction, EnsemblePrediction):
        raise TypeError(
            f"prediction must be an EnsemblePrediction, got {type(prediction).__name__}"
        )
    if tuple(prediction.treatments) != tuple(config.treatments):
        raise ValueError(
            f"config.treatments {list(config.treatments)} differ from the model's "
            f"{list(prediction.treatments)}"
        )
    interval = prediction.uplift(config.objective)
    visit = interval if config.objective == "visit" else prediction.uplift("visit")
    return decide_interventions(
        config,
        unit_ids,
        np.clip(1.0 - visit.baseline.astype(np.float64), 0.0, 1.0),
        interval.mean,
        interval.sd,
        value_at_stake=value_at_stake,
        ledger=ledger,
    )
