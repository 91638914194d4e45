"""The durable decision log, the feedback join, reading the log back and the Parquet export.

Embedded default store: one SQLite file in WAL mode, written by one group-commit thread
per process. This package is the only code that knows the file's tables: everything else
writes and reads through the names below. See README.md beside this file for the API the
server calls and the durability contract. Imports nothing of Ray or HTTP, and not pyarrow
until an export.
"""

from nudgeserve.serve.decisions._config import DecisionLogConfig
from nudgeserve.serve.decisions._errors import (
    DecisionLogClosed,
    DecisionLogError,
    DecisionLogOverloaded,
    DecisionLogWriteError,
    InvalidDecisionLogConfig,
    InvalidDecisionRecord,
    InvalidDecisionRecordType,
    InvalidFeedback,
    InvalidFeedbackType,
    SchemaVersionError,
)
from nudgeserve.serve.decisions._export import (
    ExportSummary,
    arrow_schema,
    export_parquet,
    read_export_metadata,
)
from nudgeserve.serve.decisions._reading import (
    LogBatch,
    LogFollower,
    LoggedDecisions,
    read_decisions,
)
from nudgeserve.serve.decisions._records import (
    OUTCOME_KINDS,
    DecisionLogStats,
    DecisionRecord,
    FeedbackEvent,
    FeedbackResult,
    FeedbackStatus,
)
from nudgeserve.serve.decisions._schema import SCHEMA_VERSION
from nudgeserve.serve.decisions._shutdown import install_sigterm_handler
from nudgeserve.serve.decisions._store import DecisionLog

__all__ = [
    "OUTCOME_KINDS",
    "SCHEMA_VERSION",
    "DecisionLog",
    "DecisionLogClosed",
    "DecisionLogConfig",
    "DecisionLogError",
    "DecisionLogOverloaded",
    "DecisionLogStats",
    "DecisionLogWriteError",
    "DecisionRecord",
    "ExportSummary",
    "FeedbackEvent",
    "FeedbackResult",
    "FeedbackStatus",
    "InvalidDecisionLogConfig",
    "InvalidDecisionRecord",
    "InvalidDecisionRecordType",
    "InvalidFeedback",
    "InvalidFeedbackType",
    "LogBatch",
    "LogFollower",
    "LoggedDecisions",
    "SchemaVersionError",
    "arrow_schema",
    "export_parquet",
    "install_sigterm_handler",
    "read_decisions",
    "read_export_metadata",
]
