"""The farm's fault matrix as one table: every case of tests/fault_cases.py, run for real.

    python bench/chaos.py                  # all cases (~5 min on a 2-core box)
    python bench/chaos.py --quick          # only those the default test suite runs
    python bench/chaos.py --cases gen-hang,render-hang

Each row: the fault, what should happen, what did, the shapes / views the root holds after the
recovery, whether every file is byte-identical to an undisturbed run with the same seed, and the
seconds the case took (fault, checks and recovery). Exit status 1 if any case failed. The tmpfs
and bind-mount cases need root; elsewhere they are reported as skipped.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def main() -> None:
    from fault_cases import CASES, N, V, build_reference, run_case

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=None, help="Comma-separated case names (default: all).")
    parser.add_argument("--quick", action="store_true", help="Only the cases the default test suite runs.")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray the in-process cases share.")
    args = parser.parse_args()
    cases = [c for c in CASES if not (args.quick and c.chaos)]
    if args.cases:
        wanted = args.cases.split(",")
        unknown = sorted(set(wanted) - {c.name for c in CASES})
        if unknown:
            parser.error(f"--cases {','.join(unknown)}: unknown; choose from {', '.join(c.name for c in CASES)}")
        cases = [c for c in CASES if c.name in wanted]

    import ray

    ray.init(num_cpus=args.cpus, include_dashboard=False, configure_logging=False, log_to_driver=False)
    started = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory(prefix="zv-chaos-") as tmp:
        reference = build_reference(Path(tmp) / "reference" / "root")
        print(f"reference: {N} shapes x {V} views, {time.monotonic() - started:.1f} s", file=sys.stderr)
        for case in cases:
            outcome = run_case(case, reference, Path(tmp) / case.name)
            status = "skipped" if outcome.skipped else ("ok" if outcome.ok else "FAILED")
            print(f"{case.name}: {status} ({outcome.seconds:.1f} s)", file=sys.stderr)
            if outcome.skipped:
                observed, found, identical = f"skipped: {outcome.skipped}", "-", "-"
            elif outcome.error:
                observed, found, identical = outcome.error, "-", "-"
            else:
                observed = outcome.observed
                found = f"{outcome.state.shapes}/{outcome.state.views}"
                identical = "yes" if outcome.state.identical else "NO: " + outcome.state.problems[0]
            rows.append((case.name, case.fault, case.expected, observed, found, identical, f"{outcome.seconds:.1f}", outcome.ok or bool(outcome.skipped)))
    ray.shutdown()

    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    print(f"| case | fault | expected | observed | shapes/views found (of {N}/{N * V}) | identical to reference | seconds |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(cell(x) for x in row[:-1]) + " |")
    passed = sum(1 for r in rows if r[-1])
    print(f"\n{passed}/{len(rows)} cases as expected, {time.monotonic() - started:.0f} s in all")
    sys.exit(0 if passed == len(rows) else 1)


if __name__ == "__main__":
    main()
