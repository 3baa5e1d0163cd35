"""Kill -9 the trainer at random moments (half of them right as last.pt is written), resume each
run, and check what a user relies on: the final checkpoint bit-exact against an uninterrupted
run, every metric step logged exactly once, the model logged.

    python benchmarks/kill_resume.py [--trials 20] [--epochs 12]

Real processes (`python -m entrypoints.train`) against one temporary SQLite store; each trial is
its own experiment. Prints one line per trial and the totals (issue 14's target: 20/20
bit-exact, 0 missing or duplicated steps, model logged).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from tvae import contract as C

REPO = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, "-m", "entrypoints.train"]


def tiny_config(root: Path, epochs: int) -> Path:
    """A small model checkpointed every other epoch: a few seconds of training in all."""
    data = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    data["name"] = "killed"
    data["model"].update(encoder_hidden=[32], decoder_hidden=[16], latent_dim=4)
    data["train"].update(epochs=epochs, batch_size=4096, checkpoint_every=2, device="cpu")
    for term in ("rank", "geodesic"):
        data["loss"][term]["pairs"] = 128
    path = root / "killed.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def the_run(client, experiment: str, proc: subprocess.Popen, timeout: float = 300):
    """The trial's run once it exists (None if the process ended first)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs:
            return runs[0]
        if proc.poll() is not None:
            return None
        time.sleep(0.1)
    return None


def kill_at(client, run, work: Path, proc: subprocess.Popen, at_checkpoint: bool, rng) -> str:
    """Kill the trainer at a random logged epoch, or the moment last.pt is next replaced."""
    rid = run.info.run_id
    last = work / rid / "checkpoints" / "last.pt"
    if at_checkpoint:
        seen = last.stat().st_mtime_ns if last.exists() else None
        target = rng.randint(1, 2)  # the first or second checkpoint written from now
        while proc.poll() is None:
            now = last.stat().st_mtime_ns if last.exists() else None
            if now != seen:
                seen, target = now, target - 1
                if target == 0:
                    break
            time.sleep(0.002)
        moment = "at a last.pt write"
    else:
        steps = rng.randint(1, 10)
        while proc.poll() is None:
            logged = client.get_metric_history(rid, C.TRAIN_LOSS)
            if len(logged) >= steps:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 0.5))
        moment = f"after {steps} logged epoch(s)"
    if proc.poll() is not None:
        return "finished before the kill"
    proc.kill()
    proc.wait()
    return moment


def tensors_equal(a, b) -> bool:
    """Deep equality of checkpoint contents, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory(prefix="tvae-kill-") as tmp:
        root = Path(tmp)
        cfg = tiny_config(root, args.epochs)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TVAE_"))}
        env.update(
            MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
            MLFLOW_DISABLE_TELEMETRY="true",
            TVAE_WORK_DIR=str(root / "work"),
        )
        client = MlflowClient(env["MLFLOW_TRACKING_URI"])
        keys = ("checkpoints/last.pt",)

        def final_state(rid: str) -> dict:
            path = client.download_artifacts(rid, keys[0], str(root / rid))
            state = torch.load(path, weights_only=True)
            return {k: state[k] for k in ("model", "optimizer", "scaler", "rng", "epoch")}

        ref_env = {**env, "MLFLOW_EXPERIMENT_NAME": "reference"}
        subprocess.run(
            [*TRAIN, "--config", str(cfg)], env=ref_env, cwd=REPO, check=True, capture_output=True
        )
        (ref,) = client.search_runs([client.get_experiment_by_name("reference").experiment_id])
        reference = final_state(ref.info.run_id)
        totals = {"exact": 0, "missing": 0, "duplicated": 0, "model": 0, "trials": 0}
        for i in range(args.trials):
            at_checkpoint = i % 2 == 0
            trial_env = {**env, "MLFLOW_EXPERIMENT_NAME": f"trial-{i}"}
            proc = subprocess.Popen(
                [*TRAIN, "--config", str(cfg)],
                env=trial_env,
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            run = the_run(client, f"trial-{i}", proc)
            if run is None:
                print(f"trial {i:2d}: the trainer ended before its run existed", flush=True)
                continue
            moment = kill_at(client, run, root / "work", proc, at_checkpoint, rng)
            rid = run.info.run_id
            done = subprocess.run(
                [*TRAIN, "--resume-from", rid],
                env=trial_env,
                cwd=REPO,
                capture_output=True,
                text=True,
            )
            after = client.get_run(rid)
            steps = [m.step for m in client.get_metric_history(rid, C.TRAIN_LOSS)]
            missing = len(set(range(1, args.epochs + 1)) - set(steps))
            duplicated = len(steps) - len(set(steps))
            exact = done.returncode == 0 and tensors_equal(final_state(rid), reference)
            model = C.MODEL_ID in after.data.tags
            totals["trials"] += 1
            totals["exact"] += exact
            totals["missing"] += missing
            totals["duplicated"] += duplicated
            totals["model"] += model
            print(
                f"trial {i:2d}: killed {moment}; resume exit {done.returncode}, "
                f"{after.info.status}, bit-exact {exact}, missing {missing}, "
                f"duplicated {duplicated}, model {model}",
                flush=True,
            )
            if done.returncode != 0:
                print("   " + (done.stderr.strip().splitlines() or ["?"])[-1], flush=True)
    n = totals["trials"]
    print(
        f"{n} trials: {totals['exact']}/{n} bit-exact final checkpoints, "
        f"{totals['missing']} missing and {totals['duplicated']} duplicated metric steps, "
        f"model logged in {totals['model']}/{n}"
    )


if __name__ == "__main__":
    main()
