"""CI regression check of the embedded default: run after `dvc repro`.

    python tests/regression/check_hmean.py [--metrics metrics] [--reference hmean.json] [--update]

Three kinds of check, all read from the reference file (tests/regression/hmean.json):

* tolerance: no model or system may fall more than `tolerance` below its committed official score.
  The tolerance comes from the measured spread of the scores (see the file's `spread`), so noise
  passes and a real loss does not;
* floors: each learned model must stay at or above its floor (`floors`), a level a working model of
  that kind reaches on any CPU and a broken one (chance, 0.5) does not;
* best system: the best of `best_system.systems` must reach the named reference detector's score
  plus `best_system.margin`, measured in the same run (so it holds whatever the machine).

Exits 1 naming each failure. A deliberate change updates the committed scores in the same commit
(--update rewrites `official_score` only; tolerance, floors and spread are set by hand from measurements).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REFERENCE = Path(__file__).with_name("hmean.json")


def _read_scores(folder: Path, names: list[str]) -> tuple[dict[str, float], list[str]]:
    scores, missing = {}, []
    for name in names:
        path = folder / f"{name}.json"
        if not path.is_file():
            missing.append(str(path))
            continue
        scores[name] = float(json.loads(path.read_text())["official_score"])
    return scores, missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=Path, default=Path("metrics"), help="folder of <name>.json metrics")
    parser.add_argument("--reference", type=Path, default=REFERENCE, help="reference file (default: %(default)s)")
    parser.add_argument("--update", action="store_true", help="write the current scores as the new reference")
    args = parser.parse_args(argv)
    ref = json.loads(args.reference.read_text())
    floors: dict[str, float] = ref.get("floors", {})
    best = ref.get("best_system")
    names = list(dict.fromkeys([*ref["official_score"], *floors,
                                *((best["systems"] + [best["reference"]]) if best else [])]))
    current, missing = _read_scores(args.metrics, names)
    if missing:
        print(f"error: {missing[0]}: missing; run dvc repro first", file=sys.stderr)
        return 1
    if args.update:
        ref["official_score"] = {n: round(current[n], 6) for n in ref["official_score"]}
        args.reference.write_text(json.dumps(ref, indent=2) + "\n")
        print(f"updated {args.reference}")
        return 0

    tol = ref["tolerance"]
    failures = []
    print(f"{'name':<26} {'reference':>10} {'floor':>7} {'now':>8} {'change':>8}")
    for name in ref["official_score"]:
        change = current[name] - ref["official_score"][name]
        below_floor = name in floors and current[name] < floors[name]
        flag = "  FAIL" if change < -tol or below_floor else ""
        floor = f"{floors[name]:.3f}" if name in floors else "-"
        print(f"{name:<26} {ref['official_score'][name]:>10.4f} {floor:>7} {current[name]:>8.4f} {change:>+8.4f}{flag}")
        if change < -tol:
            failures.append(f"{name}: official score fell more than {tol} below the reference "
                            f"({current[name]:.4f} < {ref['official_score'][name]:.4f} - {tol})")
        if below_floor:
            failures.append(f"{name}: official score {current[name]:.4f} is below its floor {floors[name]}")
    for name in floors:
        if name not in ref["official_score"] and current[name] < floors[name]:
            failures.append(f"{name}: official score {current[name]:.4f} is below its floor {floors[name]}")
    if best:
        top = max(best["systems"], key=lambda s: current[s])
        need = current[best["reference"]] + best["margin"]
        print(f"best system {top} {current[top]:.4f}; needs {best['reference']} {current[best['reference']]:.4f} "
              f"+ {best['margin']} = {need:.4f}")
        if current[top] < need:
            failures.append(f"best system {top} ({current[top]:.4f}) is below {best['reference']} "
                            f"({current[best['reference']]:.4f}) + {best['margin']}")
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    if failures:
        return 1
    print(f"all {len(ref['official_score'])} official scores within {tol} of the reference, "
          f"{len(floors)} floors and the best-system check hold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
