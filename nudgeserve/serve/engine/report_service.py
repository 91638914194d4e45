"""The experiment reports the gateway serves, from the decision log and the served models.

``GET /v1/experiments/{id}/report`` (arms, outcome rates, lift, off-policy estimates of
candidate policies: ``reports.experiment_report``) and ``GET
/v1/experiments/{id}/impact`` (the causal impact of an intervention experiment:
``interventions.experiment_impact``). Both replay logged decisions through a model: the
engine scoring in this process when the use case is colocated, else one loaded here on
CPU (without warm-up) and kept until the use case's model changes.

Building a report reads SQLite, replays a model and bootstraps: it blocks for a while, so
the caller runs it off its event loop. No HTTP, no Ray: errors are the serve exceptions
(``NotFound``, ``NotReady``), which the router maps to status codes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nudgeserve.serve.config import HillstromUseCase, ServeConfig, UseCase
from nudgeserve.serve.decisions import read_decisions
from nudgeserve.serve.engine.batch_engine import BatchEngine
from nudgeserve.serve.engine.describe import use_case_kind
from nudgeserve.serve.engine.interventions import NoDecisions, experiment_impact
from nudgeserve.serve.engine.reports import experiment_report
from nudgeserve.serve.engine.usecases import build_engine
from nudgeserve.serve.errors import NotFound, NotReady

# The candidate policies an experiment report evaluates off-policy: (name, parameters).
REPORT_POLICIES: tuple[tuple[str, dict[str, float]], ...] = (
    ("greedy", {}),
    ("epsilon_greedy", {"epsilon": 0.1}),
)


@dataclass(frozen=True)
class ImpactOptions:
    """What an impact report analyses and how.

    feedback_only: only decisions with joined feedback (what a replay leaves);
    since / until: epoch seconds bounding the decisions' time (None: unbounded);
    n_bootstrap, qini_resamples, seed: the estimation's resampling.
    """

    feedback_only: bool = False
    since: float | None = None
    until: float | None = None
    n_bootstrap: int = 200
    qini_resamples: int = 100
    seed: int = 0


class ExperimentReports:
    """Builds the reports of the configured experiments (see the module docstring).

    config: the served configuration. log_path: the decision log's SQLite file; None:
    logging is disabled and every report is ``NotReady``. local_engine: the engine
    scoring a use case in this process, or None when the use case is scored elsewhere
    (then a replay engine is loaded here).
    """

    def __init__(
        self,
        config: ServeConfig,
        log_path: str | None,
        local_engine: Callable[[str], BatchEngine | None],
    ) -> None:
        self.log_path = log_path
        self.outcome_kinds = config.decision_log.outcome_kinds
        self.experiments = {e.name: e for e in config.experiments}
        self.settings: dict[str, UseCase] = {u.name: u for u in config.use_cases}
        self._local_engine = local_engine
        self._replay_engines: dict[str, BatchEngine] = {}
        # Two reports may ask for the same replay engine at once: load it once.
        self._loading = threading.Lock()

    def model_changed(self, settings: UseCase) -> None:
        """The use case ``settings.name`` now serves ``settings`` (a reload): replay with
        its model from now on."""
        with self._loading:
            self.settings[settings.name] = settings
            self._replay_engines.pop(settings.name, None)

    # -- experiment report ------------------------------------------------------------------

    def experiment_report(self, name: str) -> dict[str, Any]:
        """The report of the configured experiment ``name`` (``reports`` module docstring).

        NotFound when no experiment has this name; NotReady when the log is disabled.
        """
        experiment = self.experiments.get(name)
        if experiment is None:
            known = ", ".join(sorted(self.experiments)) or "none configured"
            raise NotFound(f"experiment {name!r} is not configured ({known})")
        log_path = self._log_path("no report")
        settings = self.settings[experiment.use_case]
        engine = self._replay_engine(experiment.use_case)
        logged = read_decisions(log_path, experiment=name)
        return experiment_report(
            logged,
            experiment,
            outcome_kinds=self.outcome_kinds,
            reward_kind=settings.learning.reward,
            engine=engine,
            policies=REPORT_POLICIES,
            with_reward_model=use_case_kind(settings) == "obd",
        )

    # -- impact of an intervention experiment -------------------------------------------------

    def check_impact(self, name: str) -> str:
        """The intervention use case whose experiment is ``name``; NotFound when there is
        none, NotReady when the log is disabled (cheap: call it before parsing options)."""
        use_case = next(
            (
                u.name
                for u in self.settings.values()
                if isinstance(u, HillstromUseCase) and u.intervention_experiment == name
            ),
            None,
        )
        if use_case is None:
            known = sorted(
                u.intervention_experiment
                for u in self.settings.values()
                if isinstance(u, HillstromUseCase) and u.intervention_experiment
            )
            hint = f"; {name!r} is an experiment with a report" if name in self.experiments else ""
            raise NotFound(
                f"experiment {name!r} is not an intervention experiment (intervention "
                f"experiments: {', '.join(known) or 'none configured'}){hint}"
            )
        self._log_path("no impact report")
        return use_case

    def experiment_impact(self, name: str, options: ImpactOptions) -> dict[str, Any]:
        """The causal impact report of the intervention experiment ``name``
        (``interventions.experiment_impact``, plus the window asked for); NotFound when it
        has no decisions in the window."""
        use_case = self.check_impact(name)
        log_path = self._log_path("no impact report")
        engine = self._replay_engine(use_case)
        logged = read_decisions(log_path, experiment=name, since=options.since, until=options.until)
        try:
            out = experiment_impact(
                logged,
                engine.interventions,
                experiment=name,
                feedback_only=options.feedback_only,
                n_bootstrap=options.n_bootstrap,
                qini_resamples=options.qini_resamples,
                seed=options.seed,
            )
        except NoDecisions as exc:
            raise NotFound(f"experiment {name!r}: {exc}") from None
        out["since"], out["until"] = options.since, options.until
        return out

    # -- helpers ------------------------------------------------------------------------------

    def _log_path(self, what: str) -> str:
        if self.log_path is None:
            raise NotReady(f"{what}: the decision log is disabled")
        return self.log_path

    def _replay_engine(self, use_case: str) -> BatchEngine:
        """The model a report replays: the one scoring here, else one loaded here."""
        engine = self._local_engine(use_case)
        if engine is not None:
            return engine
        with self._loading:
            engine = self._replay_engines.get(use_case)
            if engine is None:
                engine = build_engine(self.settings[use_case])
                engine.load("cpu", False)
                self._replay_engines[use_case] = engine
            return engine
