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


def sweep_cli(capsys, *args: str) -> tuple[int, str, str]:
    from entrypoints.sweep import main

    with pytest.raises(SystemExit) as done:
        main(list(args))
    out = capsys.readouterr()
    return done.value.code or 0, out.out, out.err


def all_runs(client) -> list:
    import mlflow

    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def load_study(storage: Path, name: str):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return optuna.load_study(
        study_name=name, storage=JournalStorage(JournalFileBackend(str(storage)))
    )


def long_space(tmp_path: Path, name: str, fixed: str = "") -> Path:
    """A one-key space whose trials train 60 epochs (time to interrupt them); `fixed` adds
    overrides. The tests shorten it to 2 epochs by replacing `train.epochs: 60`."""
    space = tmp_path / f"{name}.yaml"
    space.write_text(
        "train.lr: {type: float, low: 0.0005, high: 0.002}\n"
        f"fixed: {{train.epochs: 60, train.threads: 1{fixed}}}\n"
    )
    return space


def wait_for_two_epochs(client, proc, timeout: float = 240) -> None:
    """Until the sweep's first training run has logged 2 epochs (the sweep still running)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [r for r in all_runs(client) if "sweep.trial" in r.data.tags]
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
    code, out, err = sweep_cli(capsys, *args)
    assert code == 0, err

    runs = all_runs(client)
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
    study = load_study(storage, "smoke-sweep")
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
    code, out, err = sweep_cli(capsys, *args)
    assert code == 0, err
    assert len(load_study(storage, "smoke-sweep").trials) == 2
    again = all_runs(client)
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
    code, out, err = sweep_cli(capsys, *args, "--workers", "2", "--storage", str(storage))
    assert code == 0, err
    study = load_study(storage, "space")
    assert sorted(t.number for t in study.trials) == [0, 1, 2]
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    training = [r for r in all_runs(mlflow.MlflowClient()) if "sweep.seed" in r.data.tags]
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
    code, out, err = sweep_cli(capsys, *args)
    assert code == 0, err
    study = load_study(storage, "grid")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]  # the grid holds 2
    assert "trial 0 FAIL" in out and "boom" in out
    runs = all_runs(mlflow.MlflowClient())
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
    code, out, err = sweep_cli(capsys, *args)
    assert code == 0, err
    runs = all_runs(client)
    assert len(runs) == 3  # the launcher (parent), the training run, its analyze run
    parent = client.get_run(launcher)
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.best_trial"] == "0"
    training = [r for r in runs if "sweep.seed" in r.data.tags]
    assert training[0].data.tags["mlflow.parentRunId"] == launcher

    # bad input under `mlflow run`: the launcher run ends FAILED with why, nothing else
    second = client.create_run("0").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", second)
    code, out, err = sweep_cli(capsys, *args[:-2], "--seeds", "0", "--storage", str(storage))
    assert code == 2 and err.strip().startswith("error: ")
    assert client.get_run(second).info.status == "FAILED"
    assert len(all_runs(client)) == 4


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
    code, out, err = sweep_cli(capsys, *argv, "--config", SMOKE, "--storage", str(storage))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], err
    assert all_runs(mlflow.MlflowClient()) == []
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
    code, out, err = sweep_cli(capsys, *args, "--storage", "postgresql://u:hush@127.0.0.1:1/db")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: optuna storage")
    assert "hush" not in err
    assert all_runs(mlflow.MlflowClient()) == []


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
        code, out, err = sweep_cli(capsys, *args, *more)
        assert code == 0, err
        best = load_study(storage, study_name).best_trial
        values, runs = best.user_attrs["seed_values"], best.user_attrs["seed_runs"]
        seed = max(range(2), key=values.__getitem__)
        assert f"run {runs[seed]} (seed {seed})" in out
        analyses = [
            r for r in all_runs(client) if r.data.tags.get("analysis.source_run_id") == runs[seed]
        ]
        assert len(analyses) == 2  # the trial's analysis, then the registering one
        parent = [r for r in all_runs(client) if r.data.tags.get("sweep.study") == study_name]
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
