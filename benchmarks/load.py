"""Drive HTTP load and pgbench at a given concurrency, for a bounded time; report rate and latency."""

from __future__ import annotations

import http.client
import itertools
import re
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PGBENCH_SCRIPTS = Path(__file__).resolve().parent / "pgbench"


@dataclass(frozen=True)
class Figures:
    count: int
    seconds: float
    latencies: list[float]  # seconds
    errors: int = 0

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1000 if self.latencies else 0.0

    @property
    def p99_ms(self) -> float:
        return self.percentile(99) * 1000


def _post(port: int, path: str, body: bytes, headers: dict[str, str], *, timeout: float) -> bool:
    """One request on a new connection, as Stripe makes them; whether it was answered 2xx."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return 200 <= response.status < 300
    except OSError:
        return False
    finally:
        conn.close()


def _on_threads(work: Callable[[], None], concurrency: int) -> float:
    """Run ``work`` on ``concurrency`` threads at once; the seconds until the last one ends."""
    started = time.perf_counter()
    threads = [threading.Thread(target=work) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def http_load(
    port: int, requests: Iterator[tuple[str, bytes, dict[str, str]]], concurrency: int, seconds: float
) -> Figures:
    """``concurrency`` threads send requests from the shared iterator until ``seconds`` pass.

    Every answer must be 2xx: anything else counts as an error (reported, so a figure
    is never made of failures).
    """
    lock = threading.Lock()
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        nonlocal errors
        mine: list[float] = []
        bad = 0
        while time.perf_counter() < deadline:
            with lock:
                request = next(requests)
            start = time.perf_counter()
            if _post(port, *request, timeout=30):
                mine.append(time.perf_counter() - start)
            else:
                bad += 1
        with lock:
            latencies.extend(mine)
            errors += bad

    seconds = _on_threads(worker, concurrency)
    return Figures(len(latencies), seconds, latencies, errors)


def http_burst(port: int, requests: list[tuple[str, bytes, dict[str, str]]], concurrency: int) -> Figures:
    """Send every request once, from ``concurrency`` threads; the time until the last is answered."""
    lock = threading.Lock()
    pending = iter(requests)
    latencies: list[float] = []
    errors = 0

    def worker() -> None:
        nonlocal errors
        while True:
            with lock:
                request = next(pending, None)
            if request is None:
                return
            start = time.perf_counter()
            ok = _post(port, *request, timeout=600)
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1

    seconds = _on_threads(worker, concurrency)
    return Figures(len(latencies), seconds, latencies, errors)


def pgbench(
    settings_dict: dict[str, Any], script: str, concurrency: int, seconds: float, **variables: Any
) -> Figures:
    """Run ``benchmarks/pgbench/<script>.sql`` with pgbench; per-transaction latencies from its log."""
    with tempfile.TemporaryDirectory() as log_dir:
        host, port = settings_dict.get("HOST") or "127.0.0.1", str(settings_dict.get("PORT") or 5432)
        command = [
            *("pgbench", "-n", "-h", host, "-p", port, "-U", settings_dict["USER"]),
            *("-c", str(concurrency), "-j", str(min(concurrency, 2)), "-T", str(max(1, round(seconds)))),
            *("-f", str(PGBENCH_SCRIPTS / f"{script}.sql"), "-l", "--log-prefix", f"{log_dir}/tx"),
            *itertools.chain.from_iterable(("-D", f"{k}={v}") for k, v in variables.items()),
            settings_dict["NAME"],
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
        if result.returncode != 0:
            raise RuntimeError(f"pgbench failed: {result.stderr}")
        latencies = []
        for log in Path(log_dir).glob("tx*"):
            for line in log.read_text().splitlines():
                fields = line.split()
                if len(fields) >= 3:
                    latencies.append(int(fields[2]) / 1_000_000)
        match = re.search(r"number of transactions actually processed: (\d+)", result.stdout)
        count = int(match.group(1)) if match else len(latencies)
        duration = re.search(r"duration: (\d+) s", result.stdout)
        return Figures(count, float(duration.group(1)) if duration else seconds, latencies)


def prepared(
    make: Callable[[int], tuple[str, bytes, dict[str, str]]], count: int
) -> Iterator[tuple[str, bytes, dict[str, str]]]:
    """``count`` requests built and signed now, before any clock starts, then more on demand.

    Building and signing an event is the client's work (Stripe's), not the app's: made
    during the measurement it would take CPU from the server on a shared machine.
    """
    ready = [make(n) for n in range(count)]
    return itertools.chain(ready, map(make, itertools.count(count)))
