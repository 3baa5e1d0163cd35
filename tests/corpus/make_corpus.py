"""Regenerate the detection corpus: train every run, label it, assign the split.

    python tests/corpus/make_corpus.py                 # all runs (over an hour on 2 cores)
    python tests/corpus/make_corpus.py --only NAME...  # some runs
    python tests/corpus/make_corpus.py --relabel       # labels and split from the CSVs only

Writes tests/corpus/runs/<name>.csv.gz (one row per logged epoch) and tests/corpus/index.json
(each run's spec, facts, label and split). See tests/corpus/README.md for the labelling rule.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from corpus import INDEX, RUNS_DIR, load_run  # noqa: E402
from label import label  # noqa: E402
from trainers import Spec, train  # noqa: E402

SPECS = HERE / "specs.yaml"
SPLIT_SEED = 12  # fixed before any tuning; a quarter of each class goes to the test split
TEST_SHARE = 0.25


def load_specs() -> dict[str, list[Spec]]:
    """The runs in specs.yaml, by section: `train` (split into train and test when first
    labelled), later additions to the training split (`train6`, ...) and each held-out set."""
    sections = yaml.safe_load(SPECS.read_text())
    return {split: [Spec(**fields) for fields in runs] for split, runs in sections.items()}


def _train_one(spec: Spec) -> tuple[str, dict]:
    import torch

    torch.set_num_threads(1)
    history, facts = train(spec)
    RUNS_DIR.mkdir(exist_ok=True)
    history.to_csv(RUNS_DIR / f"{spec.name}.csv.gz", float_format="%.6g")
    return spec.name, facts


def relabel(index: dict, held_out: dict[str, str]) -> dict:
    """Label every run from its CSV and assign the split: a held-out run's set (`held_out`:
    name -> split), else train or test, stratified by class with a fixed seed."""
    for name, entry in index.items():
        entry["label"] = label(load_run(name), entry["classes"], entry["lr_steps"])
    rng = random.Random(SPLIT_SEED)
    by_class: dict[str, list[str]] = {}
    for name in sorted(index):
        by_class.setdefault(index[name]["label"]["cls"], []).append(name)
    for names in by_class.values():
        test = set(rng.sample(names, round(TEST_SHARE * len(names))))
        for name in names:  # a split once assigned stays: it was fixed before tuning
            index[name].setdefault("split", "test" if name in test else "train")
            if name in held_out:
                index[name]["split"] = held_out[name]
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run names to (re)train")
    parser.add_argument("--relabel", action="store_true", help="only relabel and split")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    index = json.loads(INDEX.read_text()) if INDEX.exists() else {}
    specs = load_specs()
    runs = [spec for section in specs.values() for spec in section]
    # a later `trainN` section joins the training split; any other section is its own split
    held_out = {
        s.name: "train" if split.startswith("train") else split
        for split, sec in specs.items()
        if split != "train"
        for s in sec
    }
    if not args.relabel:
        todo = [s for s in runs if not args.only or s.name in args.only]
        todo.sort(key=lambda s: -s.epochs * (20 if s.model == "transformer" else 1))
        with mp.get_context("spawn").Pool(args.workers) as pool:
            for name, facts in pool.imap_unordered(_train_one, todo):
                index[name] = {**index.get(name, {}), **facts}
                INDEX.write_text(json.dumps(index, indent=1) + "\n")
                print(f"{name}: {facts['seconds']} s", flush=True)
    known = {s.name for s in runs}
    index = relabel({k: v for k, v in sorted(index.items()) if k in known}, held_out)
    INDEX.write_text(json.dumps(index, indent=1) + "\n")
    for name, entry in index.items():
        lab = entry["label"]
        print(f"{entry['split']:5s} {lab['cls']:11s} {name} window={lab.get('window')}")


if __name__ == "__main__":
    main()
