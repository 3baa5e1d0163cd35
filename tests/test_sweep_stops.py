"""`tvae-sweep` when trials stop early: pruning (ours spares a live plateau), SIGTERM and
Ctrl-C, and workers killed hard, on a real SQLite store and Optuna journal storage."""

from __future__ import annotations

import pytest
from test_sweep import (
    REPO,
    SMOKE,
    all_runs,
    load_study,
    long_space,
    sweep_cli,
    wait_for_two_epochs,
)

from tvae import contract as C

optuna = pytest.importorskip("optuna")


def _trial_with(study, values: dict[int, float], live_state: str | None = None):
    trial = study.ask()
    for step, value in values.items():
        trial.report(value, step)
    if live_state is not None:
        trial.set_user_attr("live_state", live_state)
    return trial


def test_the_grokking_aware_pruner_spares_a_live_plateau_only():
    """The median rule prunes a trial that trails the others at the same epoch; ours does the
    same, unless the trial's first run is in a live plateau (or breakthrough)."""
    from mlflow_plugins.sweep_pruner import STARTUP_TRIALS, WARMUP_EPOCHS, make_pruner

    for name in ("median", "grokking"):
        study = optuna.create_study(direction="maximize", pruner=make_pruner(name))
        steps = range(1, WARMUP_EPOCHS + 4)
        for _ in range(STARTUP_TRIALS):
            study.tell(_trial_with(study, {s: 1.0 for s in steps}), 1.0)
        verdicts = {}
        for state in ("plateau", "breakthrough", "none", "confirmed", None):
            trial = _trial_with(study, {s: 0.1 for s in steps}, state)
            verdicts[state] = trial.should_prune()
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        spared = {s for s, pruned in verdicts.items() if not pruned}
        assert spared == (set() if name == "median" else {"plateau", "breakthrough"}), verdicts
        early = _trial_with(study, {1: 0.1})  # within the warm-up: never pruned
        assert not early.should_prune()


def test_a_pruned_trial_stops_its_first_seed_and_trains_no_other(
    tracking_uri, tmp_path, capsys, monkeypatch
):
    import mlflow

    from mlflow_plugins import sweep_pruner

    class PruneTrialZeroAtTwo(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return trial.number == 0 and trial.last_step >= 2

    monkeypatch.setattr(sweep_pruner, "make_pruner", lambda name: PruneTrialZeroAtTwo())
    space = tmp_path / "one.yaml"
    space.write_text(
        "train.lr: {type: float, low: 0.0005, high: 0.002}\n"
        "fixed: {train.epochs: 4, train.threads: 1}\n"
    )
    storage = tmp_path / "study.log"
    args = ["--space", str(space), "--config", SMOKE, "--trials", "2", "--seeds", "2"]
    code, out, err = sweep_cli(capsys, *args, "--storage", str(storage))
    assert code == 0, err
    pruned, done = load_study(storage, "one").trials
    assert pruned.state.name == "PRUNED" and pruned.intermediate_values.keys() == {1, 2}
    assert done.state.name == "COMPLETE" and done.intermediate_values.keys() == {1, 2, 3, 4}
    assert "trial 0 PRUNED" in out and "pruned at epoch 2" in out
    runs = [r for r in all_runs(mlflow.MlflowClient()) if r.data.tags.get("sweep.trial") == "0"]
    assert len(runs) == 1  # its seed 1 never trained
    (run,) = runs
    assert run.info.status == "KILLED" and run.data.tags[C.SWEEP_PRUNED] == "2"
    assert run.data.tags["sweep.seed"] == "0"
    steps = mlflow.MlflowClient().get_metric_history(run.info.run_id, "eval/Q")
    assert sorted(m.step for m in steps) == [1, 2]


def test_sigterm_stops_the_training_at_an_epoch_boundary_and_the_study_goes_on(
    tracking_uri, tmp_path
):
    """SIGTERM to a sweep: the training in progress ends KILLED (resumable: last.pt), its
    trial FAIL, the parent KILLED, exit 130; the same command again goes on with the study."""
    import os
    import signal
    import subprocess
    import sys

    import mlflow

    client = mlflow.MlflowClient()
    space = long_space(tmp_path, "long", ", train.checkpoint_every: 1")
    storage = tmp_path / "study.log"
    cmd = [sys.executable, "-m", "entrypoints.sweep", "--space", str(space), "--config", SMOKE]
    cmd += ["--trials", "2", "--storage", str(storage), "--pruner", "none"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    wait_for_two_epochs(client, proc)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=240)[0].decode()
    assert proc.returncode == 130, out
    (run,) = [r for r in all_runs(client) if "sweep.trial" in r.data.tags]
    assert run.info.status == "KILLED"
    epochs = len(client.get_metric_history(run.info.run_id, "eval/Q"))
    assert 2 <= epochs < 60
    stored = {f.path for f in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert "checkpoints/last.pt" in stored
    (parent,) = [r for r in all_runs(client) if "sweep.trial" not in r.data.tags]
    assert parent.info.status == "KILLED"
    assert [t.state.name for t in load_study(storage, "long").trials] == ["FAIL"]
    # the study goes on: the same command trains the one trial left, not two
    space.write_text(space.read_text().replace("train.epochs: 60", "train.epochs: 2"))
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert [t.state.name for t in load_study(storage, "long").trials] == ["FAIL", "COMPLETE"]


def test_workers_killed_hard_are_failed_by_the_next_command_on_any_host(tracking_uri, tmp_path):
    """kill -9 of a sweep with two workers mid-training (a database storage with heartbeats
    every second) leaves both runs and trials RUNNING. One run is made to look owned on another
    host. The next command on the study ends the local one FAILED because its process is gone,
    the other because its trial sent no heartbeat for 3 s; both trials FAIL; the study goes on
    (its own trial, heartbeating while it trains, COMPLETE)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import mlflow

    client = mlflow.MlflowClient()
    space = long_space(tmp_path, "hard")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    cmd = [sys.executable, "-m", "entrypoints.sweep", "--space", str(space), "--config", SMOKE]
    cmd += ["--trials", "3", "--storage", storage, "--pruner", "none", "--heartbeat", "1"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    out = subprocess.DEVNULL
    proc = subprocess.Popen(
        [*cmd, "--workers", "2"], cwd=REPO, env=env, stdout=out, stderr=out, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        runs = [r for r in all_runs(client) if "sweep.trial" in r.data.tags]
        if len(runs) == 2 and all(client.get_metric_history(r.info.run_id, "eval/Q") for r in runs):
            break
        assert proc.poll() is None, "the sweep ended before both trainings logged an epoch"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    here, away = sorted(runs, key=lambda r: int(r.data.tags["sweep.trial"]))
    assert {here.info.status, away.info.status} == {"RUNNING"}
    _, pid, started = away.data.tags[C.OWNER].rsplit(":", 2)
    client.set_tag(away.info.run_id, C.OWNER, f"elsewhere.example:{pid}:{started}")
    space.write_text(space.read_text().replace("train.epochs: 60", "train.epochs: 2"))
    time.sleep(3.5)  # 3 heartbeats missed
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    trial_here, trial_away = here.data.tags["sweep.trial"], away.data.tags["sweep.trial"]
    assert f"trial {trial_here} FAIL" in again.stdout and "died while training it" in again.stdout
    assert f"trial {trial_away} FAIL" in again.stdout and "no heartbeat for 3 s" in again.stdout
    reason = client.get_run(here.info.run_id).data.tags[C.FAILURE_REASON]
    assert "died" in reason and client.get_run(here.info.run_id).info.status == "FAILED"
    after = client.get_run(away.info.run_id)
    assert after.info.status == "FAILED"
    assert "elsewhere.example" in after.data.tags[C.FAILURE_REASON]
    study = optuna.load_study(study_name="hard", storage=storage)
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL", "COMPLETE"]


def test_ctrl_c_under_mlflow_run_leaves_the_parent_killed_not_failed(tracking_uri, tmp_path):
    """MLflow's launcher marks its run FAILED when the command exits non-zero; the sweep's
    parent (the launcher's run) must read KILLED, like its interrupted training run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import mlflow

    client = mlflow.MlflowClient()
    space = long_space(tmp_path, "ctrlc")
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "sweep", "--env-manager"]
    cmd += ["local", "-P", f"space={space}", "-P", f"config={SMOKE}", "-P", "trials=1"]
    cmd += ["-P", f"storage={tmp_path / 'study.log'}", "-P", "pruner=none"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_for_two_epochs(client, proc)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        out = proc.communicate(timeout=120)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    (training,) = [r for r in all_runs(client) if "sweep.trial" in r.data.tags]
    parent_id = training.data.tags["mlflow.parentRunId"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and client.get_run(parent_id).info.status != "KILLED":
        time.sleep(0.5)
    assert client.get_run(parent_id).info.status == "KILLED", out[-2000:]
    assert client.get_run(training.info.run_id).info.status == "KILLED"
