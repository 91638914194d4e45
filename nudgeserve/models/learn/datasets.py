"""Loaders for the real data shipped in ``nudgeserve/models/data`` (see its README).

Every loader returns typed NumPy arrays (no pandas). Categorical strings are kept raw
(the featurizers hash them, exactly as the server does) and are also returned hashed by
the project's ``hash_categorical`` kernel for whoever wants bucket ids directly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from nudgeserve.kernels import hash_categorical
from nudgeserve.models.specs import (
    HILLSTROM_CATEGORICAL,
    HILLSTROM_TREATMENTS,
    OBD_ITEM_CATEGORICAL,
    OBD_ITEM_NUMERIC,
    OBD_USER_FEATURES,
)

# The shipped data lives in the ``models`` package (one level up), beside the checkpoints.
DATA_DIR = Path(__file__).resolve().parent.parent / "data"
OBD_POLICIES = ("random", "bts")
OBD_CAMPAIGNS = ("all", "men", "women")


def data_path(relative: str) -> Path:
    """Path of a shipped data file, ``relative`` to ``nudgeserve/models/data``."""
    return DATA_DIR / relative


def file_sha256(path: Path) -> str:
    """SHA-256 hex digest of a file's bytes (recorded in checkpoint metadata)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_csv(path: Path) -> pa.Table:
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} is missing; see {DATA_DIR / 'README.md'}")
    return pacsv.read_csv(path)


def _strings(table: pa.Table, names: tuple[str, ...]) -> np.ndarray:
    """``<U`` array [n_rows, len(names)] of string columns."""
    return np.stack([np.asarray(table[name].to_pylist(), dtype=str) for name in names], axis=1)


def _hash_columns(values: np.ndarray, n_buckets: int, seed: int) -> np.ndarray:
    """int64[n, k] bucket ids of a ``<U`` array [n, k], in one kernel call."""
    flat = hash_categorical(np.ascontiguousarray(values).reshape(-1), n_buckets, seed=seed)
    return np.asarray(flat, dtype=np.int64).reshape(values.shape)


@dataclass(frozen=True)
class ObdItemContext:
    """The item table of one OBD campaign.

    item_id: int64[n_items] (``0..n_items-1``, in order)
    numeric: float32[n_items, 1] (``item_feature_0``)
    categorical: str[n_items, 3] (``item_feature_1..3``, hashed strings of the source)
    categorical_buckets: int64[n_items, 3] (``categorical`` hashed by the kernel)
    """

    item_id: np.ndarray
    numeric: np.ndarray
    categorical: np.ndarray
    categorical_buckets: np.ndarray

    @property
    def n_items(self) -> int:
        return int(self.item_id.shape[0])


@dataclass(frozen=True)
class ObdLog:
    """One OBD log (policy x campaign), sorted by time.

    timestamp: int64[n] (ns since the Unix epoch, UTC; non-decreasing)
    item_id: int64[n] (the action; indexes ``items``)
    position: int64[n] (0-based slot; the source numbers them 1..3)
    click: int8[n] (0/1)
    propensity: float64[n] (the logging policy's probability of this item at this slot)
    user_features: str[n, 4] (raw hashed-categorical strings ``user_feature_0..3``)
    user_buckets: int64[n, 4] (``user_features`` hashed by the kernel)
    affinity: float32[n, n_items] (``user-item_affinity_*``)
    items: the campaign's item table
    """

    policy: str
    campaign: str
    timestamp: np.ndarray
    item_id: np.ndarray
    position: np.ndarray
    click: np.ndarray
    propensity: np.ndarray
    user_features: np.ndarray
    user_buckets: np.ndarray
    affinity: np.ndarray
    items: ObdItemContext
    source: Path

    def __len__(self) -> int:
        return int(self.item_id.shape[0])

    @property
    def n_items(self) -> int:
        return self.items.n_items

    @property
    def n_positions(self) -> int:
        return int(self.position.max()) + 1 if len(self) else 0

    def take(self, rows: np.ndarray | slice) -> ObdLog:
        """The rows ``rows`` (indices or slice) of every per-impression array."""
        return replace(
            self,
            timestamp=self.timestamp[rows],
            item_id=self.item_id[rows],
            position=self.position[rows],
            click=self.click[rows],
            propensity=self.propensity[rows],
            user_features=self.user_features[rows],
            user_buckets=self.user_buckets[rows],
            affinity=self.affinity[rows],
        )


def load_obd_items(
    policy: str = "random", campaign: str = "all", *, n_buckets: int = 64, hash_seed: int = 0
) -> ObdItemContext:
    """The item table of ``campaign`` (the same catalog under both policies)."""
    _check_obd_args(policy, campaign)
    table = _read_csv(data_path(f"obd/{policy}/{campaign}/item_context.csv.gz"))
    item_id = table["item_id"].to_numpy().astype(np.int64)
    order = np.argsort(item_id, kind="stable")
    if not np.array_equal(item_id[order], np.arange(item_id.shape[0])):
        raise ValueError(f"obd/{policy}/{campaign}: item ids are not 0..n_items-1")
    numeric = np.stack(
        [table[name].to_numpy().astype(np.float32) for name in OBD_ITEM_NUMERIC], axis=1
    )[order]
    categorical = _strings(table, OBD_ITEM_CATEGORICAL)[order]
    return ObdItemContext(
        item_id=item_id[order],
        numeric=np.ascontiguousarray(numeric),
        categorical=np.ascontiguousarray(categorical),
        categorical_buckets=_hash_columns(categorical, n_buckets, hash_seed),
    )


def _check_obd_args(policy: str, campaign: str) -> None:
    if policy not in OBD_POLICIES:
        raise ValueError(f"policy must be one of {OBD_POLICIES}, got {policy!r}")
    if campaign not in OBD_CAMPAIGNS:
        raise ValueError(f"campaign must be one of {OBD_CAMPAIGNS}, got {campaign!r}")


def load_obd(
    policy: str = "random", campaign: str = "all", *, n_buckets: int = 64, hash_seed: int = 0
) -> ObdLog:
    """Load the OBD sample log of ``policy`` (``random``/``bts``) and ``campaign``.

    Rows are returned sorted by timestamp (stable), which ``time_split`` relies on.
    ``n_buckets``/``hash_seed`` only affect ``user_buckets`` and the items'
    ``categorical_buckets``.
    """
    _check_obd_args(policy, campaign)
    source = data_path(f"obd/{policy}/{campaign}/{campaign}.csv.gz")
    table = _read_csv(source)
    items = load_obd_items(policy, campaign, n_buckets=n_buckets, hash_seed=hash_seed)
    timestamp = table["timestamp"].cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64())
    timestamp = timestamp.to_numpy()
    order = np.argsort(timestamp, kind="stable")
    affinity_names = [f"user-item_affinity_{i}" for i in range(items.n_items)]
    missing = [name for name in affinity_names if name not in table.column_names]
    if missing:
        raise ValueError(f"{source}: missing affinity columns {missing[:3]}...")
    affinity = np.stack([table[name].to_numpy() for name in affinity_names], axis=1)
    user_features = _strings(table, OBD_USER_FEATURES)[order]
    position = table["position"].to_numpy().astype(np.int64)[order] - 1
    if position.size and position.min() < 0:
        raise ValueError(f"{source}: positions must start at 1")
    return ObdLog(
        policy=policy,
        campaign=campaign,
        timestamp=timestamp[order].astype(np.int64),
        item_id=table["item_id"].to_numpy().astype(np.int64)[order],
        position=position,
        click=table["click"].to_numpy().astype(np.int8)[order],
        propensity=table["propensity_score"].to_numpy().astype(np.float64)[order],
        user_features=np.ascontiguousarray(user_features),
        user_buckets=_hash_columns(user_features, n_buckets, hash_seed),
        affinity=np.ascontiguousarray(affinity[order], dtype=np.float32),
        items=items,
        source=source,
    )


def time_split(log: ObdLog, validation_fraction: float = 0.2) -> tuple[ObdLog, ObdLog]:
    """Split a time-sorted log: the earliest rows train, the latest validate.

    Every training timestamp is <= every validation timestamp, so the model is always
    validated on the future, as it is served.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    if np.any(np.diff(log.timestamp) < 0):
        raise ValueError("log is not sorted by timestamp; load it with load_obd")
    cut = len(log) - int(round(len(log) * validation_fraction))
    return log.take(slice(0, cut)), log.take(slice(cut, None))


@dataclass(frozen=True)
class HillstromData:
    """Kevin Hillstrom's e-mail experiment (64,000 customers, randomised arms).

    Raw covariates (the fields a request carries), each [n]:
      recency int64, history_segment str, history float32, mens int8, womens int8,
      zip_code str, newbie int8, channel str.
    categorical_buckets: int64[n, 3] (history_segment, zip_code, channel hashed by the
        kernel)
    treatment: int64[n], index into ``treatments`` (0 = ``No E-Mail``, the control)
    visit, conversion: int8[n] (0/1); spend: float32[n] (dollars, 0 when no conversion)
    """

    recency: np.ndarray
    history_segment: np.ndarray
    history: np.ndarray
    mens: np.ndarray
    womens: np.ndarray
    zip_code: np.ndarray
    newbie: np.ndarray
    channel: np.ndarray
    categorical_buckets: np.ndarray
    treatment: np.ndarray
    visit: np.ndarray
    conversion: np.ndarray
    spend: np.ndarray
    treatments: tuple[str, ...]
    source: Path

    def __len__(self) -> int:
        return int(self.treatment.shape[0])

    def raw_columns(self) -> dict[str, np.ndarray]:
        """The covariates by name, as ``HillstromFeaturizer.transform`` takes them."""
        return {
            "recency": self.recency,
            "history_segment": self.history_segment,
            "history": self.history,
            "mens": self.mens,
            "womens": self.womens,
            "zip_code": self.zip_code,
            "newbie": self.newbie,
            "channel": self.channel,
        }

    def outcome(self, name: str) -> np.ndarray:
        """float64[n] of ``visit``, ``conversion`` or ``spend``."""
        if name not in ("visit", "conversion", "spend"):
            raise ValueError(f"outcome must be visit, conversion or spend, got {name!r}")
        return getattr(self, name).astype(np.float64)

    def take(self, rows: np.ndarray | slice) -> HillstromData:
        """The rows ``rows`` of every per-customer array."""
        fields = (
            "recency history_segment history mens womens zip_code newbie channel "
            "categorical_buckets treatment visit conversion spend"
        ).split()
        return replace(self, **{name: getattr(self, name)[rows] for name in fields})


def load_hillstrom(*, n_buckets: int = 64, hash_seed: int = 0) -> HillstromData:
    """Load the Hillstrom experiment; ``n_buckets``/``hash_seed`` set the buckets."""
    source = data_path("hillstrom/hillstrom.csv.gz")
    table = _read_csv(source)
    segment = np.asarray(table["segment"].to_pylist(), dtype=str)
    unknown = set(np.unique(segment)) - set(HILLSTROM_TREATMENTS)
    if unknown:
        raise ValueError(f"{source}: unknown segment values {sorted(unknown)}")
    treatment = np.zeros(segment.shape[0], dtype=np.int64)
    for index, name in enumerate(HILLSTROM_TREATMENTS):
        treatment[segment == name] = index
    categorical = _strings(table, HILLSTROM_CATEGORICAL)

    def col(name: str, dtype: type) -> np.ndarray:
        return table[name].to_numpy().astype(dtype)

    return HillstromData(
        recency=col("recency", np.int64),
        history_segment=np.ascontiguousarray(categorical[:, 0]),
        history=col("history", np.float32),
        mens=col("mens", np.int8),
        womens=col("womens", np.int8),
        zip_code=np.ascontiguousarray(categorical[:, 1]),
        newbie=col("newbie", np.int8),
        channel=np.ascontiguousarray(categorical[:, 2]),
        categorical_buckets=_hash_columns(categorical, n_buckets, hash_seed),
        treatment=treatment,
        visit=col("visit", np.int8),
        conversion=col("conversion", np.int8),
        spend=col("spend", np.float32),
        treatments=HILLSTROM_TREATMENTS,
        source=source,
    )


def stratified_split(
    strata: np.ndarray, fractions: tuple[float, ...] = (0.6, 0.2, 0.2), seed: int = 0
) -> tuple[np.ndarray, ...]:
    """Split row indices so that every part keeps each stratum's share.

    strata: int64[n] stratum label per row (e.g. ``treatment * 2 + visit``).
    fractions: part sizes, summing to 1.
    Returns one sorted int64 index array per part. Within each stratum rows are shuffled
    with ``seed`` and cut at the cumulative fractions, so each part's share of a stratum
    differs from the overall share by less than one row per stratum.
    """
    strata = np.asarray(strata)
    if strata.ndim != 1:
        raise ValueError(f"strata must be 1-D, got shape {strata.shape}")
    if len(fractions) < 2 or any(f <= 0 for f in fractions):
        raise ValueError(f"fractions must be >= 2 positive numbers, got {fractions}")
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must sum to 1, got {sum(fractions)}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    bounds = np.cumsum((0.0,) + tuple(fractions))
    for label in np.unique(strata):
        rows = np.flatnonzero(strata == label)
        rng.shuffle(rows)
        cuts = np.round(bounds * rows.shape[0]).astype(np.int64)
        for k in range(len(fractions)):
            parts[k].append(rows[cuts[k] : cuts[k + 1]])
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in parts)


def hillstrom_strata(data: HillstromData) -> np.ndarray:
    """int64[n] stratum per customer: treatment arm x visit (keeps both shares per split)."""
    return data.treatment * 2 + data.visit.astype(np.int64)
