"""Do the phases tell a grokking run's story? Scored on the labelled corpus (tests/corpus).

For each run labelled `grokking`, per view: "jump" when a `fast improvement` phase overlaps the
onset window; "plateau" when the middle of [fit epoch, last near-chance epoch] lies in no
`fast improvement` phase. Printed per split and view: each count, both together, and phases per
run. Tune on `--split train` only.

    python benchmarks/phase_accuracy.py [--split train]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "corpus"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import VIEWS, index, load_run, metric_map  # noqa: E402
from detection_accuracy import split_names  # noqa: E402

from tvae.analysis import Roles, analyze  # noqa: E402
from tvae.analysis.phases import FAST  # noqa: E402


def score(name: str, label: dict, view: str) -> tuple[bool, bool, int]:
    """(jump in a fast phase, plateau middle outside one, number of phases) for one run."""
    report = analyze(load_run(name), Roles.from_metric_map(metric_map(view)))

    def fast_over(lo: float, hi: float) -> bool:
        return any(p.character == FAST and p.start <= hi and p.end >= lo for p in report.phases)

    middle = (label["fit"] + label["last_near_chance"]) / 2
    return fast_over(*label["window"]), not fast_over(middle, middle), len(report.phases)


def main() -> None:
    runs = index()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=(*split_names(runs), "all"), default="all")
    args = parser.parse_args()
    splits = split_names(runs) if args.split == "all" else [args.split]
    for split in splits:
        mine = {
            name: entry["label"]
            for name, entry in runs.items()
            if entry.get("split") == split and entry.get("label", {}).get("cls") == "grokking"
        }
        for view in VIEWS:
            scores = [score(name, label, view) for name, label in mine.items()]
            n = len(scores)
            jump = sum(s[0] for s in scores)
            plateau = sum(s[1] for s in scores)
            both = sum(s[0] and s[1] for s in scores)
            per_run = sum(s[2] for s in scores) / max(n, 1)
            print(
                f"{split:6s} {view:9s} jump {jump}/{n}  plateau {plateau}/{n}  "
                f"both {both}/{n}  phases a run {per_run:.1f}"
            )


if __name__ == "__main__":
    main()
