"""The team stack under load (issue 16): PostgreSQL + moto S3 + `mlflow server` with proxied
artifacts, started with the tests' own helper (tests/team_stack.py), then two measurements:

1. Load: --trainings (8) `python -m entrypoints.train --config configs/smoke.yaml --epochs 4
   --seed i --device cpu` started at once, clients holding MLFLOW_TRACKING_URI only
   (MLFLOW_EXPERIMENT_NAME=load). Target: every run exits 0 and is FINISHED, every contract
   metric (tests/contract.py) at every step 1..epochs exactly once (0 points lost, 0
   duplicated), model.id tagged, 0 errors. Printed per run and in total, with the batch's wall.
2. 100k: a synthetic --long-epochs (100,000) epoch run (5 keys, tests/live_curves.py's textbook
   grokking curve plus train_acc) logged through the REST server with `log_batch` in chunks of
   1000 metrics, ended FINISHED, then `python -m entrypoints.analyze --run-id ... --metric-map
   ... --register false` timed as a subprocess against the server. Target: < 60 s wall.
   The time to log the run is printed too (not a target).

The load average (`os.getloadavg`) is printed next to each figure. Everything the script
started, the stack included, is stopped at the end, also on failure.

    python benchmarks/team_stack_load.py [--trainings 8] [--epochs 4] [--long-epochs 100000]
        [--skip-load] [--skip-long] [--report /tmp/team_stack_load.md]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
from contract import CPU_CONTRACT_KEYS  # noqa: E402
from live_curves import METRIC_MAP, textbook  # noqa: E402
from stack_services import postgres_driver_problem  # noqa: E402
from team_stack import TeamStack, missing_parts, team_stack  # noqa: E402

from tvae import contract as C  # noqa: E402

SMOKE = REPO / "configs" / "smoke.yaml"
LOAD_EXPERIMENT = "load"
LONG_EXPERIMENT = "load-100k"
BATCH_LIMIT = 1000  # MLflow's most metrics per log_batch
ANALYZE_TARGET_S = 60.0
ERROR_LINE = re.compile(r"Traceback|^error:|\bERROR\b", re.MULTILINE)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


@contextlib.contextmanager
def process_groups() -> Iterator[list[subprocess.Popen]]:
    """A list to put started processes in; each one's process group is SIGKILLed at the end."""
    started: list[subprocess.Popen] = []
    try:
        yield started
    finally:
        for proc in started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


def server_log_errors(stack: TeamStack, since: int) -> list[str]:
    """Lines of the mlflow server's log written after byte `since` that show an error."""
    text = stack.server.log_path.read_bytes()[since:].decode(errors="replace")
    return [
        line
        for line in text.splitlines()
        if ERROR_LINE.search(line) or re.search(r'" 5\d\d\b| 5\d\d Internal', line)
    ]


# ------------------------------------------------------------------------------- load


@dataclass
class Training:
    seed: int
    returncode: int | None = None
    seconds: float = 0.0
    run_id: str | None = None
    status: str = "?"
    lost: int = 0
    duplicated: int = 0
    extra: int = 0  # points at steps outside 1..epochs
    model_id: bool = False
    error_lines: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.returncode == 0
            and self.status == "FINISHED"
            and not (self.lost or self.duplicated or self.extra or self.error_lines)
            and self.model_id
        )


def run_trainings(
    stack: TeamStack, count: int, epochs: int, timeout_s: float
) -> tuple[list[Training], float]:
    """Start `count` trainings at once, wait for all: (one Training per seed, batch wall s)."""
    folder = stack.root / "load"
    folder.mkdir()
    env = stack.client_env(MLFLOW_EXPERIMENT_NAME=LOAD_EXPERIMENT)
    trainings = [Training(seed) for seed in range(count)]
    with process_groups() as started:
        begun = time.monotonic()
        for t in trainings:
            argv = [sys.executable, "-m", "entrypoints.train", "--config", str(SMOKE)]
            argv += ["--epochs", str(epochs), "--seed", str(t.seed), "--device", "cpu"]
            with (
                open(folder / f"seed{t.seed}.out", "wb") as out,
                open(folder / f"seed{t.seed}.err", "wb") as err,
            ):
                started.append(
                    subprocess.Popen(
                        argv, cwd=REPO, env=env, stdout=out, stderr=err, start_new_session=True
                    )
                )
        for t, proc in zip(trainings, started, strict=True):
            try:
                t.returncode = proc.wait(timeout=max(1.0, begun + timeout_s - time.monotonic()))
            except subprocess.TimeoutExpired:
                t.error_lines.append(f"killed after {timeout_s:.0f}s")
            t.seconds = time.monotonic() - begun
        wall = time.monotonic() - begun
    for t in trainings:
        stdout = (folder / f"seed{t.seed}.out").read_text(errors="replace")
        stderr = (folder / f"seed{t.seed}.err").read_text(errors="replace")
        found = re.search(r"^run ([0-9a-f]{32}) FINISHED", stdout, re.MULTILINE)
        t.run_id = found.group(1) if found else None
        t.error_lines += [line for line in stderr.splitlines() if ERROR_LINE.search(line)]
        if t.returncode not in (0, None):
            tail = stderr.strip().splitlines()[-3:]
            print(f"  seed {t.seed}: exit {t.returncode}; stderr ends: {tail}")
    return trainings, wall


def find_run_id(client: MlflowClient, seed: int) -> str | None:
    """The load experiment's run for `seed`, for a training that did not print its id."""
    exp = client.get_experiment_by_name(LOAD_EXPERIMENT)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], f"params.`train.seed` = '{seed}'")
    return runs[0].info.run_id if len(runs) == 1 else None


def check_training(client: MlflowClient, t: Training, epochs: int) -> None:
    """Fill in status, point counts and model.id from the server."""
    t.run_id = t.run_id or find_run_id(client, t.seed)
    if t.run_id is None:
        t.lost = len(CPU_CONTRACT_KEYS) * epochs
        return
    run = client.get_run(t.run_id)
    t.status = run.info.status
    t.model_id = bool(run.data.tags.get(C.MODEL_ID))
    wanted = set(range(1, epochs + 1))
    for key in CPU_CONTRACT_KEYS:
        steps = Counter(m.step for m in client.get_metric_history(t.run_id, key))
        t.lost += sum(1 for step in wanted if steps[step] == 0)
        t.duplicated += sum(n - 1 for step, n in steps.items() if step in wanted and n > 1)
        t.extra += sum(n for step, n in steps.items() if step not in wanted)


def measure_load(stack: TeamStack, count: int, epochs: int, timeout_s: float) -> list[str]:
    """Measurement 1; returns its report lines."""
    client = MlflowClient(stack.tracking_uri)
    log_start = stack.server.log_path.stat().st_size
    load_before = load_average()
    print(f"\n== load: {count} trainings x {epochs} epochs at once (load avg {load_before})")
    trainings, wall = run_trainings(stack, count, epochs, timeout_s)
    load_after = load_average()
    for t in trainings:
        check_training(client, t, epochs)
    server_errors = server_log_errors(stack, log_start)

    header = "| seed | exit | wall s | status | lost | dup | extra | model.id | error lines | run |"
    rows = [header, "|" + "---|" * 10]
    for t in trainings:
        rows.append(
            f"| {t.seed} | {t.returncode} | {t.seconds:.1f} | {t.status} | {t.lost} "
            f"| {t.duplicated} | {t.extra} | {'yes' if t.model_id else 'NO'} "
            f"| {len(t.error_lines)} | {t.run_id or '-'} |"
        )
    expected = count * len(CPU_CONTRACT_KEYS) * epochs
    lost = sum(t.lost for t in trainings)
    errors = sum(
        (t.returncode != 0) + (t.status != "FINISHED") + len(t.error_lines) for t in trainings
    ) + len(server_errors)
    ok = sum(t.ok for t in trainings)
    totals = [
        f"runs OK: {ok}/{count}",
        f"metric points: {expected - lost}/{expected} present, lost {lost}, "
        f"duplicated {sum(t.duplicated for t in trainings)}, "
        f"outside steps 1..{epochs} {sum(t.extra for t in trainings)}",
        f"errors: {errors} (non-zero exits {sum(t.returncode != 0 for t in trainings)}, "
        f"not FINISHED {sum(t.status != 'FINISHED' for t in trainings)}, "
        f"trainer error lines {sum(len(t.error_lines) for t in trainings)}, "
        f"server log error lines {len(server_errors)})",
        f"batch wall: {wall:.1f} s (first start to last exit)",
        f"load average: {load_before} before, {load_after} after the batch",
    ]
    for t in trainings:
        for line in t.error_lines[:5]:
            totals.append(f"  seed {t.seed} stderr: {line}")
    totals += [f"  server log: {line}" for line in server_errors[:10]]
    report = ["## Load", "", *rows, "", *[f"- {line}" for line in totals]]
    print("\n".join(rows + totals))
    return report


# ------------------------------------------------------------------------------- 100k


def long_curves(epochs: int) -> pd.DataFrame:
    """The textbook grokking run stretched to `epochs` (jump at 60%), with train_acc."""
    frame = textbook(n=epochs, jump=int(0.6 * epochs), rise=max(3, epochs // 1000))
    e = frame.index.to_numpy(dtype=float)
    frame["train_acc"] = 1.0 - 0.98 * np.exp(-e / 5)
    return frame


def log_long_run(client: MlflowClient, frame: pd.DataFrame) -> str:
    """Log `frame` (epochs x keys) as one FINISHED run, `log_batch` in chunks of BATCH_LIMIT."""
    exp = client.get_experiment_by_name(LONG_EXPERIMENT)
    exp_id = exp.experiment_id if exp else client.create_experiment(LONG_EXPERIMENT)
    run_id = client.create_run(exp_id, run_name=f"textbook-{len(frame)}").info.run_id
    start_ms = int(time.time() * 1000)
    metrics = [
        Metric(key, float(value), start_ms + int(step), int(step))
        for step, row in zip(frame.index, frame.itertuples(index=False), strict=True)
        for key, value in zip(frame.columns, row, strict=True)
    ]
    for i in range(0, len(metrics), BATCH_LIMIT):
        client.log_batch(run_id, metrics=metrics[i : i + BATCH_LIMIT])
    client.set_terminated(run_id, "FINISHED")
    return run_id


def measure_long(stack: TeamStack, epochs: int, timeout_s: float) -> list[str]:
    """Measurement 2; returns its report lines."""
    client = MlflowClient(stack.tracking_uri)
    frame = long_curves(epochs)
    n_points = frame.size
    print(f"\n== 100k: logging {epochs} epochs x {frame.shape[1]} keys (load avg {load_average()})")
    begun = time.monotonic()
    run_id = log_long_run(client, frame)
    log_s = time.monotonic() - begun
    load_logged = load_average()
    print(f"logged {n_points} points in {log_s:.1f} s (load avg {load_logged})")

    argv = [sys.executable, "-m", "entrypoints.analyze", "--run-id", run_id]
    argv += ["--metric-map", METRIC_MAP, "--register", "false"]
    load_before = load_average()
    with process_groups() as started:
        begun = time.monotonic()
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=stack.client_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        started.append(proc)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            err += f"\n[killed after {timeout_s:.0f}s]"
        analyze_s = time.monotonic() - begun
    load_after = load_average()
    tags = client.get_run(run_id).data.tags
    written = {k: tags[k] for k in (*C.ANALYSIS_TAGS, C.TIER) if k in tags}
    verdict = "PASS" if proc.returncode == 0 and analyze_s < ANALYZE_TARGET_S else "FAIL"
    lines = [
        f"run {run_id}: {epochs} epochs x {frame.shape[1]} keys = {n_points} points",
        f"logging through REST (log_batch x {BATCH_LIMIT}): {log_s:.1f} s "
        f"(load avg after {load_logged}; not a target)",
        f"analyze: {analyze_s:.1f} s wall, exit {proc.returncode} "
        f"(target < {ANALYZE_TARGET_S:.0f} s: {verdict})",
        f"load average: {load_before} before, {load_after} after analyze",
        *[f"tag {k} = {v}" for k, v in written.items()],
    ]
    print("\n".join(lines))
    print(f"--- analyze stdout ---\n{out.strip()[-3000:]}")
    if err.strip():
        print(f"--- analyze stderr ---\n{err.strip()[-3000:]}")
    return ["## 100k-epoch analyze", "", *[f"- {line}" for line in lines]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainings", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--long-epochs", type=int, default=100_000)
    parser.add_argument("--train-timeout", type=float, default=1200)
    parser.add_argument("--analyze-timeout", type=float, default=600)
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-long", action="store_true")
    parser.add_argument("--report", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    reason = missing_parts() or postgres_driver_problem()
    if reason:
        sys.exit(f"team stack not available: {reason}")
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    report = ["# Team stack under load", "", f"command: {' '.join(sys.argv)}", ""]
    started = time.monotonic()
    print(f"starting the team stack (load avg {load_average()})")
    with team_stack(with_auth=False) as stack:
        print(f"stack up in {time.monotonic() - started:.1f} s: {stack.tracking_uri}")
        try:
            if not args.skip_load:
                report += measure_load(stack, args.trainings, args.epochs, args.train_timeout)
                report.append("")
            if not args.skip_long:
                report += measure_long(stack, args.long_epochs, args.analyze_timeout)
        except BaseException:
            print(stack.logs(), file=sys.stderr)
            raise
        finally:
            if args.report:
                args.report.write_text("\n".join(report) + "\n")
    print(f"stack stopped; {time.monotonic() - started:.1f} s in all")


if __name__ == "__main__":
    main()
