"""``nudgeserve replay``: held-out Hillstrom customers through a running server, as if live.

Each customer of the Hillstrom test split (the part the uplift models never saw) is sent
to ``POST /v1/decide`` of the intervention use case, concurrently, with a progress bar.
A customer's true outcome is known only under the arm the experiment randomised them to,
so feedback (``visit``, ``conversion``, ``spend``) goes to ``POST /v1/feedback`` only for
the decisions whose action equals that arm: the replay method of Li et al. (2011),
unbiased because the experiment's arms were assigned uniformly at random, independently
of the customer. The matched decisions are a random subsample of the served ones (each
kept with probability 1/3 whatever the server chose), so they keep the server's logged
propensities. The command prints how many matched, then fetches
``GET /v1/experiments/{id}/impact`` restricted to this run's decisions with feedback and
prints the impact report computed from the server's own log.

Unit ids are ``<prefix><row>`` (row: the customer's row in the Hillstrom file), so the
server's holdout and exploration hashes see stable units across replays. The run's
decisions are selected by time (``since`` = when the replay started, by this machine's
clock): run it on the server's machine or a clock-synchronised one.
"""

from __future__ import annotations

import argparse
import http.client
import random
import sys
import threading
import time
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from nudgeserve.commands._common import non_negative_int, positive_int

HELP = "replay held-out Hillstrom customers through a running server (Li et al. 2011)"

OUTCOME_KINDS = ("visit", "conversion", "spend")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument(
        "--limit",
        type=positive_int,
        default=None,
        help="replay this many customers (default: the whole test split, 12,801)",
    )
    parser.add_argument(
        "--use-case",
        default="interventions",
        help="the intervention use case to decide with (default interventions)",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=16,
        help="decisions in flight at once (default 16)",
    )
    parser.add_argument(
        "--batch",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="send N customers per POST /v1/decide/batch instead of one /v1/decide each "
        "(default 0: one request per customer, as live traffic)",
    )
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="order of the customers (a seeded shuffle of the test split; default 0)",
    )
    parser.add_argument(
        "--unit-prefix", default="hillstrom-", help="unit id prefix (default hillstrom-)"
    )
    parser.add_argument(
        "--n-bootstrap",
        type=positive_int,
        default=200,
        help="bootstrap replicates of the impact report (default 200)",
    )
    parser.add_argument(
        "--timeout", type=positive_int, default=60, help="seconds per HTTP request (default 60)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


class HttpClient:
    """Keep-alive JSON over HTTP, one connection per thread."""

    def __init__(self, url: str, timeout_s: float) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"--url must be http://HOST:PORT, got {url!r}")
        self.scheme = parsed.scheme
        self.host = parsed.hostname
        self.port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self.base = parsed.path.rstrip("/")
        self.timeout_s = timeout_s
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = (
                http.client.HTTPSConnection
                if self.scheme == "https"
                else http.client.HTTPConnection
            )
            conn = cls(self.host, self.port, timeout=self.timeout_s)
            self._local.conn = conn
        return conn

    # An overloaded server answers 503 with Retry-After: wait and send again, this many
    # times, each wait capped (a replay is a batch job, not a latency-bound client).
    MAX_OVERLOAD_RETRIES = 20
    MAX_RETRY_WAIT_S = 1.0

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        for retry in range(self.MAX_OVERLOAD_RETRIES + 1):
            status, raw, retry_after = self._request(method, path, body)
            if status != 503 or retry_after is None or retry == self.MAX_OVERLOAD_RETRIES:
                return status, raw
            time.sleep(min(retry_after, self.MAX_RETRY_WAIT_S) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def _request(
        self, method: str, path: str, body: bytes | None
    ) -> tuple[int, bytes, float | None]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, self.base + path, body=body, headers=headers)
                response = conn.getresponse()
                retry_after = response.getheader("retry-after")
                try:
                    wait = float(retry_after) if retry_after is not None else None
                except ValueError:
                    wait = None
                return response.status, response.read(), wait
            except (http.client.HTTPException, ConnectionError):
                # A keep-alive connection the server closed: reconnect once.
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


class ReplayError(RuntimeError):
    """The server refused or failed a request of the replay."""


def _check(status: int, body: bytes, what: str) -> bytes:
    if status >= 400:
        raise ReplayError(f"{what} answered {status}: {body[:500].decode(errors='replace')}")
    return body


def _customers(limit: int | None, seed: int) -> tuple[Any, Any]:
    """(the test split's customers in replay order, their rows in the Hillstrom file)."""
    import numpy as np

    from nudgeserve.models.learn.datasets import hillstrom_strata, load_hillstrom, stratified_split

    data = load_hillstrom()
    # The uplift models' split (``models.training.hillstrom_splits`` defaults): the test
    # part was never trained or calibrated on.
    _, _, test_rows = stratified_split(hillstrom_strata(data), (0.6, 0.2, 0.2), seed=0)
    order = np.random.default_rng(seed).permutation(test_rows.shape[0])
    rows = test_rows[order]
    if limit is not None:
        rows = rows[:limit]
    return data.take(rows), rows


def _contexts(test: Any) -> list[dict[str, Any]]:
    columns = test.raw_columns()
    numeric = ("recency", "history", "mens", "womens", "newbie")
    text = ("history_segment", "zip_code", "channel")
    lists = {k: columns[k].tolist() for k in (*numeric, *text)}
    n = len(test)
    return [
        {
            **{k: float(lists[k][i]) for k in numeric},
            **{k: str(lists[k][i]) for k in text},
        }
        for i in range(n)
    ]


def _decide_one(client: HttpClient, encode: Any, decode: Any, body: dict[str, Any]) -> dict:
    status, raw = client.request("POST", "/v1/decide", encode(body))
    return decode(_check(status, raw, "POST /v1/decide"))


def _decide_all(args: argparse.Namespace, client: HttpClient, units: list[dict]) -> list[dict]:
    """One answer per unit (``{decision_id, action, reason, propensity, experiment}``), in
    unit order."""
    import msgspec
    from tqdm import tqdm

    encode = msgspec.json.Encoder().encode
    decode = msgspec.json.Decoder().decode
    out: list[dict | None] = [None] * len(units)
    bar = tqdm(total=len(units), unit="customer", desc="decide", disable=args.no_progress)
    try:
        if args.batch:
            chunks = [
                list(range(s, min(s + args.batch, len(units))))
                for s in range(0, len(units), args.batch)
            ]

            def send_chunk(idx: list[int]) -> list[int]:
                body = {
                    "use_case": args.use_case,
                    "units": [
                        {"unit_id": units[i]["unit_id"], "context": units[i]["context"]}
                        for i in idx
                    ],
                }
                status, raw = client.request("POST", "/v1/decide/batch", encode(body))
                answer = decode(_check(status, raw, "POST /v1/decide/batch"))
                results = answer["results"]
                if len(results) != len(idx):
                    raise ReplayError(f"batch of {len(idx)} units got {len(results)} results")
                for i, r in zip(idx, results, strict=True):
                    out[i] = {
                        "decision_id": r["decision_id"],
                        "action": r["intervention"]["action"],
                        "reason": r["intervention"]["reason"],
                        "propensity": r["intervention"]["propensity"],
                        "experiment": answer.get("experiment"),
                    }
                return idx

            with ThreadPoolExecutor(args.concurrency) as pool:
                for idx in pool.map(send_chunk, chunks):
                    bar.update(len(idx))
        else:

            def send(i: int) -> int:
                answer = _decide_one(
                    client,
                    encode,
                    decode,
                    {
                        "use_case": args.use_case,
                        "context": units[i]["context"],
                        "unit_id": units[i]["unit_id"],
                    },
                )
                inter = answer.get("intervention")
                if inter is None:
                    raise ReplayError(
                        f"use case {args.use_case!r} answered without intervention fields: "
                        "it is not an intervention use case (an `interventions:` block)"
                    )
                out[i] = {
                    "decision_id": answer["decision_id"],
                    "action": inter["action"],
                    "reason": inter["reason"],
                    "propensity": inter["propensity"],
                    "experiment": answer.get("experiment"),
                }
                return i

            with ThreadPoolExecutor(args.concurrency) as pool:
                for _ in pool.map(send, range(len(units))):
                    bar.update(1)
    finally:
        bar.close()
    return [o for o in out if o is not None]


def _feedback(client: HttpClient, events: list[dict], chunk: int = 2000) -> Counter:
    import msgspec

    encode = msgspec.json.Encoder().encode
    decode = msgspec.json.Decoder().decode
    counts: Counter = Counter()
    for s in range(0, len(events), chunk):
        status, raw = client.request("POST", "/v1/feedback", encode(events[s : s + chunk]))
        if status not in (200, 207):
            _check(max(status, 400), raw, "POST /v1/feedback")
        counts.update(decode(raw)["counts"])
    return counts


def _table(header: list[str], rows: list[list[Any]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def replay(args: argparse.Namespace) -> int:
    import msgspec

    from nudgeserve.models.specs import HILLSTROM_TREATMENTS

    client = HttpClient(args.url, args.timeout)
    test, rows = _customers(args.limit, args.seed)
    units = [
        {"unit_id": f"{args.unit_prefix}{int(r)}", "context": ctx}
        for r, ctx in zip(rows.tolist(), _contexts(test), strict=True)
    ]
    started = time.time()
    t0 = time.perf_counter()
    answers = _decide_all(args, client, units)
    took = time.perf_counter() - t0
    experiments = {a["experiment"] for a in answers}
    if len(experiments) != 1 or None in experiments:
        raise ReplayError(
            f"expected every decision in one intervention experiment, got {sorted(map(str, experiments))}"
        )
    experiment = experiments.pop()

    arms = [HILLSTROM_TREATMENTS[t] for t in test.treatment.tolist()]
    outcomes = {k: test.outcome(k).tolist() for k in OUTCOME_KINDS}
    events = []
    matched_by = Counter()
    served_by = Counter()
    reasons_matched = Counter()
    for i, (answer, arm) in enumerate(zip(answers, arms, strict=True)):
        served_by[answer["action"]] += 1
        if answer["action"] != arm:
            continue
        matched_by[answer["action"]] += 1
        reasons_matched[answer["reason"]] += 1
        for kind in OUTCOME_KINDS:
            # Zeros are sent too: "no visit" is an outcome, and every matched decision
            # then has feedback (what selects them in the impact report).
            events.append(
                {
                    "decision_id": answer["decision_id"],
                    "event_id": f"replay-{kind}",
                    "kind": kind,
                    "value": float(outcomes[kind][i]),
                    "action": answer["action"],
                }
            )
    counts = _feedback(client, events)
    n_matched = sum(matched_by.values())
    print(
        f"replayed {len(answers)} held-out Hillstrom customers through {args.url} "
        f"(use case {args.use_case!r}, experiment {experiment!r}) in {took:.1f} s "
        f"({len(answers) / max(took, 1e-9):,.0f} decisions/s)"
    )
    print(
        f"matched the experiment's randomised arm (Li et al. 2011): {n_matched} of "
        f"{len(answers)} ({n_matched / max(len(answers), 1):.1%}; 1/3 expected under the "
        "experiment's uniform arms)"
    )
    rows_out = [[t, served_by.get(t, 0), matched_by.get(t, 0)] for t in HILLSTROM_TREATMENTS]
    print(_table(["action", "served", "matched"], rows_out))
    print("matched by reason: " + ", ".join(f"{r} {n}" for r, n in sorted(reasons_matched.items())))
    print(
        f"feedback: {len(events)} events for {n_matched} decisions: "
        + ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))
    )
    query = urllib.parse.urlencode(
        {"feedback_only": "true", "since": f"{started - 1e-3:.6f}", "n_bootstrap": args.n_bootstrap}
    )
    path = f"/v1/experiments/{urllib.parse.quote(experiment)}/impact?{query}"
    status, raw = client.request("GET", path)
    body = msgspec.json.decode(_check(status, raw, f"GET {path}"))
    print()
    print(body["text"])
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return replay(args)
    except ConnectionError as exc:
        print(
            f"nudgeserve replay: error: cannot reach {args.url} ({exc.strerror or exc}); "
            "is `nudgeserve run` serving there?",
            file=sys.stderr,
        )
        return 2
    except (ReplayError, ValueError, OSError) as exc:
        print(f"nudgeserve replay: error: {exc}", file=sys.stderr)
        return 2
