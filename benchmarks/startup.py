"""Start-up times of the CLI beside references, and the time of a no-op `dvc repro`.

    python benchmarks/startup.py              # median of 5 runs per command
    python benchmarks/startup.py --dvc        # also `dvc repro` on this repository (run it once first)

References: a bare interpreter and `import torch`, which every command used to pay. The no-op
`dvc repro` line needs a finished pipeline (dvc.lock up to date); it shows what DVC itself costs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

COMMANDS = {
    "python -c pass (reference)": [sys.executable, "-c", "pass"],
    "python -c 'import torch' (reference)": [sys.executable, "-c", "import torch"],
    "asdtool --version": [sys.executable, "-m", "asdtool", "--version"],
    "asdtool --help": [sys.executable, "-m", "asdtool", "--help"],
    "asdtool finetune --help": [sys.executable, "-m", "asdtool", "finetune", "--help"],
    "asdtool evaluate (no arguments: its error)": [sys.executable, "-m", "asdtool", "evaluate"],
}


def timed(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dvc", action="store_true", help="also time a no-op `dvc repro` of this repository")
    args = ap.parse_args()
    rows = [(name, timed(cmd, args.runs)) for name, cmd in COMMANDS.items()]
    if args.dvc:
        rows.append(("dvc repro (nothing to do)", timed([sys.executable, "-m", "dvc", "repro"], 1)))
    width = max(len(n) for n, _ in rows)
    print(f"{'command'.ljust(width)}  seconds (median of {args.runs})")
    for name, seconds in rows:
        print(f"{name.ljust(width)}  {seconds:7.3f}")


if __name__ == "__main__":
    main()
