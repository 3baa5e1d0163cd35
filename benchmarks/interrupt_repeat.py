"""Stop training N times each by Ctrl-C (under `mlflow run` and bare), SIGTERM to a bare
trainer and SIGTERM to the `mlflow run` process group, then resume each run, and count what issue 14
promises: the run ends KILLED, with last.pt, and resumes to FINISHED with every contract metric
at every step exactly once.

    python benchmarks/interrupt_repeat.py [--n 10] [--epochs 60] [--max-delay 3] [--seed 0]
        [--scenario ctrl-c/bare ...]

Real processes against one temporary SQLite store, each trial its own experiment:
- ctrl-c/mlflow-run: SIGINT to the process group of
  `mlflow run . -e train --env-manager local -P config=<tiny config>` (what a terminal does);
- ctrl-c/bare: SIGINT to the process group of `python -m entrypoints.train --config <tiny config>`;
- sigterm/bare: SIGTERM to `python -m entrypoints.train --config <tiny config>` alone;
- sigterm/mlflow-run: SIGTERM to the `mlflow run` process group.
The signal goes a random 0..--max-delay seconds after the trainer's 2nd epoch line. The run's
status is read until it is KILLED (30 s at most: under `mlflow run` the launcher writes FAILED
and a detached process puts KILLED back); then `python -m entrypoints.train --resume-from <run
id>` must exit 0 with the run FINISHED and steps 1..epochs each logged once. Prints one line per
trial, failure details, and per scenario "KILLED k/N, resumable r/N".
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import torch
import yaml
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from contract import CPU_CONTRACT_KEYS  # noqa: E402

TRAIN = [sys.executable, "-m", "entrypoints.train"]
MLFLOW_RUN = [sys.executable, "-m", "mlflow", "run", ".", "-e", "train", "--env-manager", "local"]
SCENARIOS = {  # name: (launched by `mlflow run`, signal, to the whole process group)
    "ctrl-c/mlflow-run": (True, signal.SIGINT, True),
    "ctrl-c/bare": (False, signal.SIGINT, True),
    "sigterm/bare": (False, signal.SIGTERM, False),
    "sigterm/mlflow-run": (True, signal.SIGTERM, True),
}


def tiny_config(root: Path, epochs: int) -> Path:
    """The smoke config shrunk to a fraction of a second per epoch, last.pt every 2 epochs."""
    data = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    data["name"] = "interrupted"
    data["model"].update(encoder_hidden=[32], decoder_hidden=[16], latent_dim=4)
    data["train"].update(epochs=epochs, batch_size=4096, checkpoint_every=2, device="cpu")
    for term in ("rank", "geodesic"):
        data["loss"][term]["pairs"] = 128
    path = root / "interrupted.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, list[str]]:
    """Start `cmd` in its own process group; its merged output is collected on a thread."""
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal's foreground job
    )
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    return proc, lines


def epochs_printed(lines: list[str]) -> int:
    return sum(1 for line in list(lines) if line.startswith("epoch "))


def points(client: MlflowClient, run_id: str, epochs: int) -> tuple[int, int]:
    """Metric points lost and duplicated over every contract key and steps 1..epochs."""
    lost = duplicated = 0
    for key in CPU_CONTRACT_KEYS:
        counts = Counter(m.step for m in client.get_metric_history(run_id, key))
        lost += sum(1 for step in range(1, epochs + 1) if counts[step] == 0)
        duplicated += sum(c - 1 for c in counts.values() if c > 1)
    return lost, duplicated


def last_pt(client: MlflowClient, run_id: str, work: Path, root: Path) -> tuple[str, int | None]:
    """Where the run's newest last.pt is (store, local work folder, none) and its epoch."""
    found = {}
    if "checkpoints/last.pt" in {f.path for f in client.list_artifacts(run_id, "checkpoints")}:
        root.mkdir(parents=True, exist_ok=True)
        found["store"] = client.download_artifacts(run_id, "checkpoints/last.pt", str(root))
    if (work / run_id / "checkpoints" / "last.pt").is_file():
        found["local"] = work / run_id / "checkpoints" / "last.pt"
    epochs = {
        k: torch.load(p, map_location="cpu", weights_only=True)["epoch"] for k, p in found.items()
    }
    if not epochs:
        return "none", None
    newest = max(epochs.values())
    return "+".join(k for k, e in epochs.items() if e == newest), newest


def trial(
    name: str,
    i: int,
    cfg: Path,
    env: dict[str, str],
    root: Path,
    args: argparse.Namespace,
    rng: random.Random,
) -> dict:
    """One interruption and its resume; a dict of what was seen."""
    launched, sig, group = SCENARIOS[name]
    experiment = f"{name.replace('/', '-')}-{i}"
    if launched:
        cmd = [*MLFLOW_RUN, "--experiment-name", experiment, "-P", f"config={cfg}"]
    else:
        cmd = [*TRAIN, "--config", str(cfg)]
    proc, lines = start(cmd, {**env, "MLFLOW_EXPERIMENT_NAME": experiment})
    deadline = time.time() + 300
    while epochs_printed(lines) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(rng.uniform(0, args.max_delay))
    at = epochs_printed(lines)
    if proc.poll() is None:
        (os.killpg if group else os.kill)(proc.pid, sig)
    try:
        rc = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        rc = f"hung, SIGKILLed ({proc.wait()})"
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    seen = {"at": at, "rc": rc, "runs": len(runs), "output": "".join(lines)[-1500:]}
    if len(runs) != 1:
        return seen
    run_id = runs[0].info.run_id
    t0 = time.time()
    while client.get_run(run_id).info.status != "KILLED" and time.time() < t0 + 30:
        time.sleep(0.25)
    run = client.get_run(run_id)
    seen.update(run_id=run_id, status=run.info.status, after=time.time() - t0)
    seen["reason"] = run.data.tags.get("failure.reason", "")
    logged = sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))
    seen["logged"] = max(logged, default=0)
    seen["last_pt"], seen["ckpt_epoch"] = last_pt(client, run_id, root / "work", root / run_id)
    resumed = subprocess.run(
        [*TRAIN, "--resume-from", run_id],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    seen["resume_rc"] = resumed.returncode
    seen["resume_output"] = (resumed.stdout + resumed.stderr)[-1500:]
    seen["final"] = client.get_run(run_id).info.status
    seen["lost"], seen["duplicated"] = points(client, run_id, args.epochs)
    seen["killed"] = seen["status"] == "KILLED"
    seen["checkpoint_ok"] = seen["ckpt_epoch"] is not None and seen["ckpt_epoch"] == seen["logged"]
    complete = seen["lost"] == 0 and seen["duplicated"] == 0
    seen["resumable"] = resumed.returncode == 0 and seen["final"] == "FINISHED" and complete
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--max-delay", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenario", action="append", choices=tuple(SCENARIOS), help="only these")
    args = ap.parse_args()
    chosen = args.scenario or list(SCENARIOS)
    rng = random.Random(args.seed)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # this process's downloads
    results: dict[str, list[dict]] = {name: [] for name in chosen}
    with tempfile.TemporaryDirectory(prefix="tvae-interrupt-") as tmp:
        root = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TVAE_"))}
        env.update(
            MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
            MLFLOW_DISABLE_TELEMETRY="true",
            TVAE_WORK_DIR=str(root / "work"),
        )
        cfg = tiny_config(root, args.epochs)
        for i in range(args.n):
            for name in chosen:  # interleaved, so a busy spell of the box hits them all
                t0 = time.time()
                r = trial(name, i, cfg, env, root, args, rng)
                results[name].append(r)
                print(
                    f"{name:18s} #{i}: signal after {r['at']} epoch lines, exit {r['rc']}; "
                    f"{r.get('status')} (read after {r.get('after', 0):.1f} s), logged to "
                    f"{r.get('logged')}, last.pt {r.get('last_pt')} epoch {r.get('ckpt_epoch')}; "
                    f"resume exit {r.get('resume_rc')}, {r.get('final')}, lost {r.get('lost')}, "
                    f"duplicated {r.get('duplicated')}  [{time.time() - t0:.0f} s]",
                    flush=True,
                )
                if not (r.get("killed") and r.get("checkpoint_ok") and r.get("resumable")):
                    print(f"  FAILURE: runs {r['runs']}, reason {r.get('reason')!r}")
                    print("  output tail:\n    " + r["output"].replace("\n", "\n    "))
                    tail = r.get("resume_output", "").replace("\n", "\n    ")
                    print("  resume output tail:\n    " + tail, flush=True)
    print()
    for name, rs in results.items():
        n = len(rs)
        killed = sum(bool(r.get("killed")) for r in rs)
        resumable = sum(bool(r.get("resumable")) for r in rs)
        ckpt = sum(bool(r.get("checkpoint_ok")) for r in rs)
        codes = sorted({str(r["rc"]) for r in rs})
        wait = max((r.get("after", 0) for r in rs), default=0)
        print(
            f"{name:18s} KILLED {killed}/{n}, resumable {resumable}/{n}, last.pt at the last "
            f"logged epoch {ckpt}/{n} (exit codes {', '.join(codes)}; status read as KILLED "
            f"at most {wait:.1f} s after the exit)"
        )


if __name__ == "__main__":
    main()
