"""Every benchmark, one command:

    python -m benchmarks            # a few minutes; writes BENCHMARKS.md
    python -m benchmarks --smoke    # seconds; checks the scripts (CI), measures nothing worth keeping

Against PostgreSQL at $DATABASE_URL (default: a local stripe_idempotency_bench database, created
if missing and emptied by each run).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks import (
    deferred,
    effects,
    endpoint,
    ledger,
    per_delivery,
    prune,
    reaper,
    reaper_memory,
    status,
    worker,
)
from benchmarks.common import ROOT, setup_django


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--output", type=Path, default=None, help="Default: BENCHMARKS.md (a temporary file with --smoke)"
    )
    args = parser.parse_args()
    output = args.output or (
        Path(tempfile.mkdtemp()) / "BENCHMARKS.md" if args.smoke else ROOT / "BENCHMARKS.md"
    )
    setup_django()
    smoke = args.smoke
    print(
        endpoint.run(
            seconds=1.0 if smoke else 6.0, levels=[1, 4] if smoke else [1, 4, 16], output=output, smoke=smoke
        )
    )
    print(deferred.run(output=output, smoke=smoke))
    print(worker.run(output=output, smoke=smoke))
    print(per_delivery.run(count=50 if smoke else 2000, output=output, smoke=smoke))
    print(effects.run(count=50 if smoke else 1000, burst=50 if smoke else 2000, output=output, smoke=smoke))
    print(
        ledger.run(
            seconds=1.0 if smoke else 5.0, levels=[1, 4] if smoke else [1, 4, 16], output=output, smoke=smoke
        )
    )
    print(reaper.run(sizes=[1_000] if smoke else [10_000, 100_000, 1_000_000], runs=3 if smoke else 30,
                     output=output, smoke=smoke))  # fmt: skip
    print(reaper_memory.run(sizes=[200, 2_000] if smoke else [2_000, 20_000], output=output, smoke=smoke))
    print(status.run(sizes=[10_000] if smoke else [100_000, 1_000_000], runs=3 if smoke else 20,
                     output=output, smoke=smoke))  # fmt: skip
    print(prune.run(size=10_000 if smoke else 1_000_000, output=output, smoke=smoke))


if __name__ == "__main__":
    main()
