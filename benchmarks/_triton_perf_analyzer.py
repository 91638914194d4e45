"""NVIDIA's ``perf_analyzer`` (the KServe v2 load generator Triton ships): install and run.

Installed on first use into ``.bench/perf_analyzer/`` (git-ignored), CPU only:

- the binary from the ``tritonclient==2.48.0`` wheel (``*.data/data/bin/perf_analyzer``;
  later wheels stopped shipping it), fetched with ``pip download``;
- ``libcudart.so.12`` from NVIDIA's ``nvidia-cuda-runtime-cu12`` wheel: the binary links
  it even when it never touches a GPU;
- ``libb64.so.0d``: the system's (Debian ``libb64-0d``) when present, else the copy
  PyTriton's wheel vendors (same library, renamed by auditwheel), else
  ``apt-get install libb64-0d``.

The binary is then run with ``LD_LIBRARY_PATH`` pointing at ``lib/`` (see ``command``).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks._load_client import LoadResult

TRITONCLIENT_WHEEL = "tritonclient==2.48.0"
CUDART_WHEEL = "nvidia-cuda-runtime-cu12==12.*"


@dataclass(frozen=True)
class PerfAnalyzer:
    """An installed perf_analyzer: ``binary`` and the ``lib_dir`` it needs on the loader path."""

    binary: Path
    lib_dir: Path

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(self.lib_dir), env.get("LD_LIBRARY_PATH", "")) if p
        )
        return env

    def command(self) -> str:
        """A shell prefix that runs it, for people reading the report."""
        return f"LD_LIBRARY_PATH={self.lib_dir} {self.binary}"


def _system_has_libb64() -> bool:
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False)
    except OSError:
        return False
    return "libb64.so.0d" in out.stdout


def _vendored_libb64(search_roots: Sequence[Path]) -> Path | None:
    for root in search_roots:
        hits = sorted(
            glob.glob(str(root / "**" / "nvidia_pytriton.libs" / "libb64-*.so.0d"), recursive=True)
        )
        if hits:
            return Path(hits[0])
    return None


def ensure_perf_analyzer(
    bench_dir: Path, log: Callable[[str], None], libb64_search: Sequence[Path] = ()
) -> PerfAnalyzer:
    """Install perf_analyzer under ``bench_dir / "perf_analyzer"`` unless already there.

    libb64_search: folders (e.g. the Triton venv) searched for PyTriton's vendored libb64.
    Raises RuntimeError naming the step that failed.
    """
    root = bench_dir / "perf_analyzer"
    lib = root / "lib"
    binary = root / "perf_analyzer"
    lib.mkdir(parents=True, exist_ok=True)
    if not binary.exists() or not (lib / "libcudart.so.12").exists():
        dl = root / "dl"
        dl.mkdir(exist_ok=True)
        log(f"perf_analyzer: downloading {TRITONCLIENT_WHEEL} and {CUDART_WHEEL} (pip download)")
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
                str(dl),
                TRITONCLIENT_WHEEL,
                CUDART_WHEEL,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"pip download of perf_analyzer's wheels failed:\n{proc.stderr}")
        for wheel in sorted(dl.glob("*.whl")):
            with zipfile.ZipFile(wheel) as z:
                for name in z.namelist():
                    base = os.path.basename(name)
                    if name.endswith("bin/perf_analyzer"):
                        binary.write_bytes(z.read(name))
                    elif base.startswith("libcudart.so.12"):
                        (lib / base).write_bytes(z.read(name))
        if not binary.exists():
            raise RuntimeError(f"no bin/perf_analyzer inside the {TRITONCLIENT_WHEEL} wheel")
        binary.chmod(0o755)
        cudart = sorted(lib.glob("libcudart.so.12*"))
        if not cudart:
            raise RuntimeError(f"no libcudart.so.12 inside the {CUDART_WHEEL} wheel")
        if not (lib / "libcudart.so.12").exists():
            (lib / "libcudart.so.12").symlink_to(cudart[0].name)
        shutil.rmtree(dl, ignore_errors=True)
    if not _system_has_libb64() and not (lib / "libb64.so.0d").exists():
        vendored = _vendored_libb64(libb64_search)
        if vendored is not None:
            log(f"perf_analyzer: using PyTriton's vendored libb64 ({vendored.name})")
            shutil.copyfile(vendored, lib / "libb64.so.0d")
        else:
            log("perf_analyzer: installing Debian's libb64-0d (apt-get)")
            ok = (
                subprocess.run(
                    ["apt-get", "install", "-y", "-q", "libb64-0d"],
                    capture_output=True,
                    check=False,
                ).returncode
                == 0
            )
            if not ok:
                subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=False)
                ok = (
                    subprocess.run(
                        ["apt-get", "install", "-y", "-q", "libb64-0d"],
                        capture_output=True,
                        check=False,
                    ).returncode
                    == 0
                )
            if not ok:
                raise RuntimeError(
                    "perf_analyzer needs libb64.so.0d: install Debian's "
                    "libb64-0d (apt-get install libb64-0d) and re-run"
                )
    pa = PerfAnalyzer(binary, lib)
    probe = subprocess.run(
        [str(binary), "--help"], capture_output=True, text=True, env=pa.env(), check=False
    )
    if "error while loading shared libraries" in probe.stderr:
        raise RuntimeError(f"perf_analyzer cannot start: {probe.stderr.strip()}")
    return pa


def write_input_data(path: Path, rows: Sequence[dict[str, list]]) -> Path:
    """Write perf_analyzer's ``--input-data`` JSON: one entry per request.

    rows: ``[{input_name: flat list of values for ONE request (batch dim excluded)}]``;
    perf_analyzer cycles through them, so it sends real rows rather than random bytes
    (random integers would index outside the model's tables).
    """
    path.write_text(json.dumps({"data": list(rows)}))
    return path


def parse_csv(text: str) -> list[dict[str, float]]:
    """perf_analyzer's ``-f`` CSV -> one dict per row, latencies in microseconds."""
    reader = csv.DictReader(io.StringIO(text))
    rows = []
    for raw in reader:
        rows.append({k.strip(): float(v) for k, v in raw.items() if k and v not in (None, "")})
    if not rows:
        raise ValueError("perf_analyzer wrote an empty CSV")
    return rows


def run_closed_loop(
    pa: PerfAnalyzer,
    url: str,
    model: str,
    concurrency: int,
    duration_s: float,
    input_data: Path,
    csv_path: Path,
    timeout_s: float = 120.0,
) -> LoadResult:
    """Drive ``model`` at ``url`` (``host:port``) with ``concurrency`` synchronous clients.

    Three measurement windows of ``duration_s / 3`` each; stability checking is widened
    so a point always takes bounded time (the figures still come from those windows).
    Requests use the binary tensor extension, as Triton's clients do by default.
    """
    window_ms = max(500, int(duration_s * 1000 / 3))
    cmd = [
        str(pa.binary),
        "-m",
        model,
        "-u",
        url,
        "-i",
        "http",
        "-b",
        "1",
        "--concurrency-range",
        str(concurrency),
        "--measurement-interval",
        str(window_ms),
        "--max-trials",
        "3",
        "--stability-percentage",
        "1000",
        "--input-data",
        str(input_data),
        "-f",
        str(csv_path),
    ]

    def failed(why: str) -> LoadResult:
        return LoadResult(
            "closed", concurrency, duration_s, errors=1, tool="perf_analyzer", first_error=why
        )

    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=pa.env(), timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        # A hung client must cost one point, not the run.
        return failed(f"perf_analyzer did not finish within {timeout_s:g} s")
    if proc.returncode != 0 or not csv_path.exists():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        return failed(f"perf_analyzer exit {proc.returncode}: {tail}")
    row = parse_csv(csv_path.read_text())[-1]
    result = LoadResult(
        "closed",
        concurrency,
        duration_s,
        tool="perf_analyzer",
        throughput_rps=row["Inferences/Second"],
        p50_ms=row["p50 latency"] / 1e3,
        p95_ms=row["p95 latency"] / 1e3,
        p99_ms=row["p99 latency"] / 1e3,
    )
    client = parse_client_summary(proc.stdout)
    result.ok = int(client.get("Request count", 0))
    if "Avg latency" in client:
        result.mean_ms = client["Avg latency"] / 1e3
    return result


def parse_client_summary(stdout: str) -> dict[str, float]:
    """The first ``Request count`` and ``Avg latency`` (usec) lines of perf_analyzer's
    report: the client's figures (the server's section follows them)."""
    found: dict[str, float] = {}
    for line in stdout.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and key in ("Request count", "Avg latency") and key not in found:
            found[key] = float(value.split()[0])
    return found
