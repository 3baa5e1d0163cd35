"""Kill a real tracking server in the middle of a training run, keep it away for --outage
seconds, restart it on the same port and store, and check what issue 14 promises: the run
FINISHED, every contract metric at every step exactly once (0 lost, 0 duplicated), the model and
the logs present.

    python benchmarks/outage_soak.py --outage 30
    python benchmarks/outage_soak.py --outage 600 --sync-wait 900   # training ends in the outage
    python benchmarks/outage_soak.py --outage 200                   # past the default 120 s wait

`mlflow server` (one worker, SQLite backend, proxied local artifacts, 127.0.0.1, a free port) is
started, SIGKILLed (its process group) and restarted with the project's test helpers
(tests/mlflow_server.py). The trainer is `python -m entrypoints.train` on a tiny config; the
server is killed once the trainer has printed epoch line --kill-after. MLflow's own HTTP
retries are off by default (--http-retries 0, 5 s timeout, as in tests/test_outage.py) so the
trainer feels the outage at once; TVAE_SYNC_WAIT is left at its default (120 s) unless
--sync-wait is given. When the trainer gives up (exit 1, its one `error:` line naming
`python -m mlflow_plugins.sync <run id>`), that command is run once the server is back and the
run is checked again. Prints the trainer's warning/resume/error lines and a results table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import yaml
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from contract import CPU_CONTRACT_KEYS  # noqa: E402
from mlflow_server import free_port, kill_server, start_server  # noqa: E402

TRAIN = [sys.executable, "-m", "entrypoints.train"]
SYNC = [sys.executable, "-m", "mlflow_plugins.sync"]
NOTABLE = ("warning:", "error:", "tracking server back", "synced ", "run ")


def tiny_config(root: Path, epochs: int) -> Path:
    """The smoke config shrunk to a fraction of a second per epoch, last.pt every 2 epochs."""
    data = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    data["name"] = "outage"
    data["model"].update(encoder_hidden=[32], decoder_hidden=[16], latent_dim=4)
    data["train"].update(epochs=epochs, batch_size=4096, checkpoint_every=2, device="cpu")
    for term in ("rank", "geodesic"):
        data["loss"][term]["pairs"] = 128
    path = root / "outage.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Output:
    """The trainer's merged stdout/stderr, read on a thread, each line with its time."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[tuple[float, str]] = []
        self.ended = 0.0  # when the trainer exited
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))
        proc.wait()
        self.ended = time.monotonic()

    def last_epoch(self) -> int:
        epochs = [int(s.split()[1].split("/")[0]) for _, s in self.lines if s.startswith("epoch ")]
        return max(epochs, default=0)

    def join(self) -> None:
        self._thread.join(timeout=10)


def check(client: MlflowClient, run_id: str, epochs: int) -> dict:
    """Status, metric points lost/duplicated over steps 1..epochs, model tag, artifacts."""
    run = client.get_run(run_id)
    keys = set(CPU_CONTRACT_KEYS) | {k for k in run.data.metrics if not k.startswith("system/")}
    lost = duplicated = points = 0
    for key in sorted(keys):
        counts = Counter(m.step for m in client.get_metric_history(run_id, key))
        points += sum(counts.values())
        lost += sum(1 for step in range(1, epochs + 1) if counts[step] == 0)
        duplicated += sum(c - 1 for c in counts.values() if c > 1)
        duplicated += sum(c for s, c in counts.items() if not 1 <= s <= epochs)
    files = {f.path for f in client.list_artifacts(run_id)}
    files |= {f.path for f in client.list_artifacts(run_id, "checkpoints")}
    wanted = ("training.log", "training_summary.json", "checkpoints/last.pt")
    return {
        "status": run.info.status,
        "keys": len(keys),
        "points": points,
        "expected": len(keys) * epochs,
        "lost": lost,
        "duplicated": duplicated,
        "model": bool(run.data.tags.get("model.id")),
        "missing_artifacts": [f for f in wanted if f not in files],
    }


def describe(result: dict) -> str:
    missing = ", ".join(result["missing_artifacts"]) or "none"
    return (
        f"{result['status']}; {result['keys']} keys, {result['points']}/{result['expected']} "
        f"points, lost {result['lost']}, duplicated {result['duplicated']}; "
        f"model.id {'yes' if result['model'] else 'NO'}; missing artifacts: {missing}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outage", type=float, required=True, help="seconds the server stays away")
    ap.add_argument("--epochs", type=int, default=600)
    ap.add_argument("--kill-after", type=int, default=3, help="epoch line that triggers the kill")
    ap.add_argument("--sync-wait", type=float, help="TVAE_SYNC_WAIT (unset: the default 120 s)")
    ap.add_argument("--http-retries", default="0", help="MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    ap.add_argument("--http-timeout", default="5", help="MLFLOW_HTTP_REQUEST_TIMEOUT")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="tvae-outage-") as tmp:
        root = Path(tmp)
        port = free_port()
        server = start_server(root / "server", port)
        client = MlflowClient(server.url)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TVAE_"))}
        env.update(
            MLFLOW_TRACKING_URI=server.url,
            MLFLOW_DISABLE_TELEMETRY="true",
            MLFLOW_HTTP_REQUEST_MAX_RETRIES=args.http_retries,
            MLFLOW_HTTP_REQUEST_TIMEOUT=args.http_timeout,
            TVAE_WORK_DIR=str(root / "work"),
        )
        if args.sync_wait is not None:
            env["TVAE_SYNC_WAIT"] = str(args.sync_wait)
        cfg = tiny_config(root, args.epochs)
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [*TRAIN, "--config", str(cfg)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        out = Output(proc)
        try:
            while out.last_epoch() < args.kill_after:
                if proc.poll() is not None:
                    out.join()
                    said = "\n".join(s for _, s in out.lines)
                    sys.exit(f"the trainer ended before the kill:\n{said}")
                time.sleep(0.05)
            exp = client.get_experiment_by_name("outage")
            (run,) = client.search_runs([exp.experiment_id])
            run_id = run.info.run_id
            kill_server(server)
            t_kill, killed_at = time.monotonic(), out.last_epoch()
            time.sleep(args.outage)
            ended_in_outage = proc.poll() is not None
            server = start_server(root / "server", port)
            t_back, back_at = time.monotonic(), out.last_epoch()
            rc = proc.wait(timeout=(args.sync_wait or 120) + 900)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            out.join()
        t_end = out.ended
        lines = [(t, s) for t, s in out.lines if s.startswith(NOTABLE)]
        last_line = next(t for t, s in reversed(out.lines) if s.startswith("epoch "))
        result = check(client, run_id, args.epochs)
        workdir_left = (root / "work" / run_id).exists()
        synced = after_sync = None
        if rc != 0 and any(f"mlflow_plugins.sync {run_id}" in s for _, s in lines):
            synced = subprocess.run(
                [*SYNC, run_id], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
            )
            after_sync = check(client, run_id, args.epochs)
            workdir_left = (root / "work" / run_id).exists()
        server_log = server.log_tail()
        kill_server(server)

    print(f"run {run_id}, {args.epochs} epochs, server killed after epoch {killed_at}")
    print("trainer lines (seconds from the kill):")
    for t, s in lines:
        print(f"  {t - t_kill:+7.1f}  {s[:400]}")
    if synced is not None:
        said = synced.stdout.strip() or synced.stderr.strip()[-1500:]
        print(f"sync ({' '.join(SYNC[1:])} {run_id}) exit {synced.returncode}: {said}")
    final = after_sync or result
    if final["status"] != "FINISHED" or final["lost"] or final["duplicated"]:
        print("trainer output tail:\n  " + "\n  ".join(s for _, s in out.lines[-15:]))
        print("server log tail:\n" + server_log[-1500:])
    back = f"at epoch {back_at}" if back_at < args.epochs else "after the last epoch"
    back += ", the trainer had exited" if ended_in_outage else ""
    rows = [
        ("outage", f"{args.outage:.0f} s (server back {t_back - t_kill:.0f} s after the kill)"),
        ("TVAE_SYNC_WAIT", env.get("TVAE_SYNC_WAIT", "unset (120)")),
        ("MLflow HTTP retries/timeout", f"{args.http_retries} / {args.http_timeout} s"),
        ("server killed / back", f"after epoch {killed_at} / {back}"),
        ("last epoch line", f"{last_line - t_kill:+.0f} s from the kill"),
        ("trainer exit, wall", f"{rc}, {t_end - t0:.0f} s ({t_end - t_back:+.0f} s from back)"),
        ("run when the trainer exited", describe(result)),
    ]
    if synced is not None:
        rows.append(("sync exit", str(synced.returncode)))
        rows.append(("run after sync", describe(after_sync)))
    rows.append(("work folder left", "yes" if workdir_left else "no (all uploaded)"))
    width = max(len(k) for k, _ in rows)
    print("\n| " + "what".ljust(width) + " | result |\n|" + "-" * (width + 2) + "|---|")
    for key, value in rows:
        print(f"| {key.ljust(width)} | {value} |")


if __name__ == "__main__":
    main()
