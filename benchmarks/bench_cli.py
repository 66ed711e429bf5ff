"""Wall time of the CLI's quick commands, as whole processes.

Prints the median of several runs of ``psa-infra --help`` and
``psa-infra plan --offline inventory/production.yml``, side by side with a
bare ``python -c pass`` started the same way, since the interpreter's own
start-up is the floor on these noisy 2-core machines. Aim: under 0.3 s each.

The commands run as an installed psa-infra runs, with its modules' bytecode
cached (pip compiles it at install; here the warm-up run writes it), even
when PYTHONDONTWRITEBYTECODE is set around the script. ``--no-bytecode``
times them without, as from a checkout where nothing may be written.

    .venv/bin/python benchmarks/bench_cli.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AIM = 0.3


def wall(command: list[str], runs: int, env: dict[str, str]) -> float:
    """Median wall time of ``command`` over ``runs`` runs, after one warm-up."""
    subprocess.run(command, cwd=ROOT, capture_output=True, check=True, env=env)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, capture_output=True, check=True, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument(
        "--no-bytecode",
        action="store_true",
        help="compile every module at each start, as with PYTHONDONTWRITEBYTECODE",
    )
    options = parser.parse_args()
    runs = options.runs
    env = dict(os.environ)
    if options.no_bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        for folder in (ROOT / "psa_infra").rglob("__pycache__"):
            shutil.rmtree(folder)
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    cli = [sys.executable, "-m", "psa_infra"]
    cases = {
        "python -c pass (floor)": [sys.executable, "-c", "pass"],
        "psa-infra --help": [*cli, "--help"],
        "psa-infra plan --offline production": [
            *cli,
            "plan",
            "--offline",
            "inventory/production.yml",
        ],
        "psa-infra plan --offline production --json": [
            *cli,
            "plan",
            "--offline",
            "--json",
            "inventory/production.yml",
        ],
    }
    floor = None
    print(f"{'command':45} {'median':>8} {'x floor':>8}  aim")
    for name, command in cases.items():
        seconds = wall(command, runs, env)
        floor = floor or seconds
        verdict = "" if floor == seconds else ("ok" if seconds < AIM else "SLOW")
        print(f"{name:45} {seconds:7.3f}s {seconds / floor:7.1f}x  {verdict}")


if __name__ == "__main__":
    main()
