"""`tvae-sweep` end to end on a real temporary MLflow SQLite store and a real Optuna journal
storage: nested training runs, the parent's summary, the study's size across invocations and
workers, and bad input that writes nothing."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd
import pytest

from tvae import contract as C

optuna = pytest.importorskip("optuna")

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "configs" / "smoke.yaml")
SPACE = str(REPO / "configs" / "sweep_smoke.yaml")


def _sweep(capsys, *args: str) -> tuple[int, str, str]:
    from entrypoints.sweep import main

    with pytest.raises(SystemExit) as done:
        main(list(args))
    out = capsys.readouterr()
    return done.value.code or 0, out.out, out.err


def _runs(client) -> list:
    import mlflow

    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def _study(storage: Path, name: str):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return optuna.load_study(
        study_name=name, storage=JournalStorage(JournalFileBackend(str(storage)))
    )


def _long_space(tmp_path: Path, name: str, fixed: str = "") -> Path:
    """A one-key space whose trials train 60 epochs (time to interrupt them); `fixed` adds
    overrides. The tests shorten it to 2 epochs by replacing `train.epochs: 60`."""
    space = tmp_path / f"{name}.yaml"
    space.write_text(
        "train.lr: {type: float, low: 0.0005, high: 0.002}\n"
        f"fixed: {{train.epochs: 60, train.threads: 1{fixed}}}\n"
    )
    return space


def _wait_for_two_epochs(client, proc, timeout: float = 240) -> None:
    """Until the sweep's first training run has logged 2 epochs (the sweep still running)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [r for r in _runs(client) if "sweep.trial" in r.data.tags]
        if runs and len(client.get_metric_history(runs[0].info.run_id, "eval/Q")) >= 2:
            return
        assert proc.poll() is None, "the sweep ended before its first training logged 2 epochs"
        time.sleep(0.5)
    raise AssertionError("no training logged 2 epochs in time")


def test_sweep_trains_nested_runs_and_keeps_the_study_total(tracking_uri, tmp_path, capsys):
    import mlflow
    import yaml

    from tvae.config import load_config

    client = mlflow.MlflowClient()
    storage = tmp_path / "study.log"
    args = ["--space", SPACE, "--config", SMOKE, "--trials", "2", "--seeds", "2"]
    args += ["--storage", str(storage), "--study", "smoke-sweep"]
    code, out, err = _sweep(capsys, *args)
    assert code == 0, err

    runs = _runs(client)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    training = [r for r in runs if "sweep.seed" in r.data.tags]
    assert len(training) == 4
    for run in training:
        tags = run.data.tags
        assert run.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["sweep.study"] == "smoke-sweep"
        assert tags["sweep.trial"] in {"0", "1"} and tags["sweep.seed"] in {"0", "1"}
        assert run.data.params["train.seed"] == tags["sweep.seed"]
        assert run.data.params["train.epochs"] == "2"
        for key in (*C.EVAL_KEYS, C.TRAIN_LOSS, C.LR, C.GRAD_NORM):
            assert key in run.data.metrics, key
        assert C.MODEL_ID in tags and C.TIER in tags  # trained like `train`, analysed too
    assert {(r.data.tags["sweep.trial"], r.data.tags["sweep.seed"]) for r in training} == {
        ("0", "0"),
        ("0", "1"),
        ("1", "0"),
        ("1", "1"),
    }

    # the study: 2 COMPLETE trials whose values are the mean over their seeds' runs
    study = _study(storage, "smoke-sweep")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    for trial in study.trials:
        values = []
        for run in (r for r in training if r.data.tags["sweep.trial"] == str(trial.number)):
            best_epoch = int(run.data.tags[C.MODEL_STEP])
            history = client.get_metric_history(run.info.run_id, C.QUALITY)
            values.append([m.value for m in history if m.step == best_epoch][-1])
            assert float(run.data.params["train.lr"]) == pytest.approx(trial.params["train.lr"])
        assert trial.value == pytest.approx(sum(values) / 2, rel=1e-12)

    # the parent: params, tags, artifacts
    tags, params = parent.data.tags, parent.data.params
    assert params["sweep.sampler"] == "TPESampler"
    assert params["sweep.seeds"] == "2" and params["sweep.trials"] == "2"
    assert params["sweep.space.train.lr"].startswith("float[")
    assert tags["sweep.study"] == "smoke-sweep" and tags["sweep.storage"] == str(storage)
    best = study.best_trial
    assert tags["sweep.best_trial"] == str(best.number)
    assert float(tags["sweep.best_value"]) == pytest.approx(best.value)
    assert yaml.safe_load(tags["sweep.best_params"]) == pytest.approx(best.params)
    names = {f.path for f in client.list_artifacts(parent.info.run_id, "sweep")}
    assert names == {"sweep/summary.csv", "sweep/best_config.yaml", "sweep/report"}
    folder = Path(client.download_artifacts(parent.info.run_id, "sweep", str(tmp_path / "dl")))
    # the report: the sweep's 4 training runs compared, each trial's 2 seeds one config
    configs = pd.read_csv(folder / "report" / "configs.csv")
    assert sorted(configs["seeds"]) == [2, 2] and (folder / "report" / "Q_by_config.png").is_file()
    assert (folder / "report" / "parallel_coordinates.png").read_bytes()[:4] == b"\x89PNG"
    assert len(pd.read_csv(folder / "report" / "table.csv")) == 4
    rows = list(csv.DictReader(io.StringIO((folder / "summary.csv").read_text())))
    assert [r["trial"] for r in rows] == ["0", "1"]
    for row, trial in zip(rows, study.trials, strict=True):
        seeds = [float(row["seed_0"]), float(row["seed_1"])]
        assert float(row["mean"]) == pytest.approx(trial.value)
        assert float(row["std"]) == pytest.approx(abs(seeds[0] - seeds[1]) / 2)
        assert float(row["train.lr"]) == pytest.approx(trial.params["train.lr"])
    config = load_config(folder / "best_config.yaml")
    assert config.train.lr == pytest.approx(best.params["train.lr"])
    assert config.loss.rank.weight == best.params["loss.rank.weight"]
    assert config.train.epochs == 2
    assert out.count("\ntrial ") + out.startswith("trial ") == 2
    assert "-P config=sweeps/smoke-sweep/best_config.yaml" in out
    assert Path("sweeps/smoke-sweep/best_config.yaml").is_file()

    # the same command again: the study already holds 2 trials, so nothing trains
    code, out, err = _sweep(capsys, *args)
    assert code == 0, err
    assert len(_study(storage, "smoke-sweep").trials) == 2
    again = _runs(client)
    assert len([r for r in again if "sweep.seed" in r.data.tags]) == 4
    assert len([r for r in again if "mlflow.parentRunId" not in r.data.tags]) == 1


def test_workers_share_the_study_without_running_a_trial_twice(tracking_uri, tmp_path, capsys):
    import mlflow

    space = tmp_path / "space.yaml"
    space.write_text(
        "train.lr: {type: float, low: 0.0005, high: 0.002, log: true}\n"
        "fixed: {train.epochs: 1, train.threads: 1}\n"
    )
    storage = tmp_path / "study.log"
    args = ["--space", str(space), "--config", SMOKE, "--trials", "3", "--seeds", "1"]
    code, out, err = _sweep(capsys, *args, "--workers", "2", "--storage", str(storage))
    assert code == 0, err
    study = _study(storage, "space")
    assert sorted(t.number for t in study.trials) == [0, 1, 2]
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    training = [r for r in _runs(mlflow.MlflowClient()) if "sweep.seed" in r.data.tags]
    assert sorted(r.data.tags["sweep.trial"] for r in training) == ["0", "1", "2"]
    assert all(r.info.status == "FINISHED" for r in training)


def test_failed_training_fails_its_trial_and_the_study_goes_on(
    tracking_uri, tmp_path, capsys, monkeypatch
):
    import mlflow

    from mlflow_plugins import tracking

    real = tracking.train_in_run
    calls = {"n": 0}

    def first_fails(config, run_id, workdir, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return real(config, run_id, workdir, **kw)

    monkeypatch.setattr(tracking, "train_in_run", first_fails)
    space = tmp_path / "grid.yaml"
    space.write_text(
        "loss.rank.weight: {type: categorical, choices: [0.25, 0.5]}\n"
        "fixed: {train.epochs: 1, train.threads: 1}\n"
    )
    storage = tmp_path / "study.log"
    args = ["--space", str(space), "--config", SMOKE, "--trials", "5", "--storage", str(storage)]
    code, out, err = _sweep(capsys, *args)
    assert code == 0, err
    study = _study(storage, "grid")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]  # the grid holds 2
    assert "trial 0 FAIL" in out and "boom" in out
    runs = _runs(mlflow.MlflowClient())
    failed = [r for r in runs if r.data.tags.get("sweep.trial") == "0"]
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    assert "boom" in failed[0].data.tags[C.FAILURE_REASON]
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent[0].data.params["sweep.sampler"] == "GridSampler"
    assert parent[0].data.tags["sweep.best_trial"] == "1"


def test_under_mlflow_run_the_launcher_run_is_the_parent(
    tracking_uri, tmp_path, capsys, monkeypatch
):
    import mlflow

    client = mlflow.MlflowClient()
    launcher = client.create_run("0").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher)
    space = tmp_path / "one.yaml"
    space.write_text(
        "train.lr: {type: float, low: 0.0005, high: 0.002}\n"
        "fixed: {train.epochs: 1, train.threads: 1}\n"
    )
    storage = tmp_path / "study.log"
    args = ["--space", str(space), "--config", SMOKE, "--trials", "1", "--storage", str(storage)]
    code, out, err = _sweep(capsys, *args)
    assert code == 0, err
    runs = _runs(client)
    assert len(runs) == 3  # the launcher (parent), the training run, its analyze run
    parent = client.get_run(launcher)
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.best_trial"] == "0"
    training = [r for r in runs if "sweep.seed" in r.data.tags]
    assert training[0].data.tags["mlflow.parentRunId"] == launcher

    # bad input under `mlflow run`: the launcher run ends FAILED with why, nothing else
    second = client.create_run("0").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", second)
    code, out, err = _sweep(capsys, *args[:-2], "--seeds", "0", "--storage", str(storage))
    assert code == 2 and err.strip().startswith("error: ")
    assert client.get_run(second).info.status == "FAILED"
    assert len(_runs(client)) == 4


BAD = [
    (["--space", "nope.yaml"], "space file not found"),
    (["--space", "{bad}"], "must be a mapping"),
    (["--space", "{unknown}"], "unknown key"),
    (["--space", "{range}"], "train.lr"),
    (["--space", "{seed}"], "train.seed"),
    (["--space", "{good}", "--trials", "0"], "--trials"),
    (["--space", "{good}", "--seeds", "0"], "--seeds"),
    (["--space", "{good}", "--workers", "0"], "--workers"),
    (["--space", "{good}", "--metric", "eval/nope"], "metric 'eval/nope'"),
    (["--space", "{good}", "--direction", "up"], "direction 'up'"),
    (["--space", "{good}", "--pruner", "asha"], "--pruner"),
    (["--space", "{good}", "--register", "true", "--model-name", "a/b"], "--model-name 'a/b'"),
]


@pytest.mark.parametrize(("argv", "says"), BAD)
def test_bad_input_is_one_line_and_writes_nothing(tracking_uri, tmp_path, capsys, argv, says):
    import mlflow

    files = {
        "bad": "- train.lr\n",
        "unknown": "train.lrr: {type: float, low: 0.001, high: 0.01}\n",
        "range": "train.lr: {type: float, low: 0.001, high: 5}\n",
        "seed": "train.seed: {type: int, low: 0, high: 3}\n",
        "good": "train.lr: {type: float, low: 0.001, high: 0.01}\n",
    }
    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    argv = [a.format(**{k: str(tmp_path / f"{k}.yaml") for k in files}) for a in argv]
    storage = tmp_path / "study.log"
    code, out, err = _sweep(capsys, *argv, "--config", SMOKE, "--storage", str(storage))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], err
    assert _runs(mlflow.MlflowClient()) == []
    assert not storage.exists()


def test_direction_storage_and_password_masking(tmp_path):
    from mlflow_plugins.sweep_space import default_storage, direction_for, mask_password

    assert direction_for("eval/Q", None) == "maximize"
    assert direction_for("train/loss", None) == "minimize"
    assert direction_for("eval/hierarchy_B", None) == "minimize"
    assert direction_for("eval/Q_latent", None) == "maximize"  # the latent keys too
    assert direction_for("eval/Q", "min") == "minimize"
    assert mask_password("postgresql://u:s3:cr@t@db.example:5432/optuna") == (
        "postgresql://u:***@db.example:5432/optuna"
    )
    assert mask_password("sqlite:///a/b.db") == "sqlite:///a/b.db"
    db = tmp_path / "mlflow.db"
    assert default_storage(f"sqlite:///{db}") == str(tmp_path / "optuna-journal.log")


def test_unreachable_storage_is_one_line_without_the_password(tracking_uri, tmp_path, capsys):
    import mlflow

    space = tmp_path / "s.yaml"
    space.write_text("train.lr: {type: float, low: 0.001, high: 0.01}\n")
    args = ["--space", str(space), "--config", SMOKE]
    code, out, err = _sweep(capsys, *args, "--storage", "postgresql://u:hush@127.0.0.1:1/db")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: optuna storage")
    assert "hush" not in err
    assert _runs(mlflow.MlflowClient()) == []


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
    code, out, err = _sweep(capsys, *args, "--storage", str(storage))
    assert code == 0, err
    pruned, done = _study(storage, "one").trials
    assert pruned.state.name == "PRUNED" and pruned.intermediate_values.keys() == {1, 2}
    assert done.state.name == "COMPLETE" and done.intermediate_values.keys() == {1, 2, 3, 4}
    assert "trial 0 PRUNED" in out and "pruned at epoch 2" in out
    runs = [r for r in _runs(mlflow.MlflowClient()) if r.data.tags.get("sweep.trial") == "0"]
    assert len(runs) == 1  # its seed 1 never trained
    (run,) = runs
    assert run.info.status == "KILLED" and run.data.tags[C.SWEEP_PRUNED] == "2"
    assert run.data.tags["sweep.seed"] == "0"
    steps = mlflow.MlflowClient().get_metric_history(run.info.run_id, "eval/Q")
    assert sorted(m.step for m in steps) == [1, 2]


def test_register_true_registers_the_best_trials_best_seed(tracking_uri, tmp_path, capsys):
    """With register=true the sweep ends by registering the best config's best seed's model
    through analyze's registry step: with the default min tier (Good, out of reach in 2 smoke
    epochs) the registry says why it skipped; with min tier None it registers that run."""
    import mlflow

    client = mlflow.MlflowClient()
    space = tmp_path / "two.yaml"
    space.write_text(
        "loss.rank.weight: {type: categorical, choices: [0.25, 0.5]}\n"
        "fixed: {train.epochs: 2, train.threads: 1}\n"
    )
    for study_name, more in (("good", []), ("none", ["--min-tier", "None"])):
        storage = tmp_path / f"{study_name}.log"
        args = ["--space", str(space), "--config", SMOKE, "--seeds", "2", "--study", study_name]
        args += ["--storage", str(storage), "--register", "true", "--model-name", "SweepVAE"]
        code, out, err = _sweep(capsys, *args, *more)
        assert code == 0, err
        best = _study(storage, study_name).best_trial
        values, runs = best.user_attrs["seed_values"], best.user_attrs["seed_runs"]
        seed = max(range(2), key=values.__getitem__)
        assert f"run {runs[seed]} (seed {seed})" in out
        analyses = [
            r for r in _runs(client) if r.data.tags.get("analysis.source_run_id") == runs[seed]
        ]
        assert len(analyses) == 2  # the trial's analysis, then the registering one
        parent = [r for r in _runs(client) if r.data.tags.get("sweep.study") == study_name]
        parent = [r for r in parent if "mlflow.parentRunId" not in r.data.tags][0]
        versions = client.search_model_versions("name = 'SweepVAE'")
        if study_name == "good":
            assert "registry: skipped (tier " in out and versions == []
            assert C.SWEEP_REGISTERED not in parent.data.tags
        else:
            assert "registry: registered" in out
            (version,) = versions
            assert version.run_id == runs[seed]
            assert parent.data.tags[C.SWEEP_REGISTERED] == "SweepVAE version 1"
            assert str(client.get_model_version_by_alias("SweepVAE", "champion").version) == "1"


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
    space = _long_space(tmp_path, "long", ", train.checkpoint_every: 1")
    storage = tmp_path / "study.log"
    cmd = [sys.executable, "-m", "entrypoints.sweep", "--space", str(space), "--config", SMOKE]
    cmd += ["--trials", "2", "--storage", str(storage), "--pruner", "none"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    _wait_for_two_epochs(client, proc)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=240)[0].decode()
    assert proc.returncode == 130, out
    (run,) = [r for r in _runs(client) if "sweep.trial" in r.data.tags]
    assert run.info.status == "KILLED"
    epochs = len(client.get_metric_history(run.info.run_id, "eval/Q"))
    assert 2 <= epochs < 60
    stored = {f.path for f in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert "checkpoints/last.pt" in stored
    (parent,) = [r for r in _runs(client) if "sweep.trial" not in r.data.tags]
    assert parent.info.status == "KILLED"
    assert [t.state.name for t in _study(storage, "long").trials] == ["FAIL"]
    # the study goes on: the same command trains the one trial left, not two
    space.write_text(space.read_text().replace("train.epochs: 60", "train.epochs: 2"))
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert [t.state.name for t in _study(storage, "long").trials] == ["FAIL", "COMPLETE"]


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
    space = _long_space(tmp_path, "hard")
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
        runs = [r for r in _runs(client) if "sweep.trial" in r.data.tags]
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
    space = _long_space(tmp_path, "ctrlc")
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "sweep", "--env-manager"]
    cmd += ["local", "-P", f"space={space}", "-P", f"config={SMOKE}", "-P", "trials=1"]
    cmd += ["-P", f"storage={tmp_path / 'study.log'}", "-P", "pruner=none"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        _wait_for_two_epochs(client, proc)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        out = proc.communicate(timeout=120)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    (training,) = [r for r in _runs(client) if "sweep.trial" in r.data.tags]
    parent_id = training.data.tags["mlflow.parentRunId"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and client.get_run(parent_id).info.status != "KILLED":
        time.sleep(0.5)
    assert client.get_run(parent_id).info.status == "KILLED", out[-2000:]
    assert client.get_run(training.info.run_id).info.status == "KILLED"
