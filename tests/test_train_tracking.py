"""In-process training into a real temporary SQLite MLflow store (tiny model, a few epochs).

One run is trained once per module and inspected by several tests; resume continues that same
run at the end. Cost: ~30-60 s on 2 shared cores (store creation, three tiny trainings).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import fresh_store
from contract import CPU_CONTRACT_KEYS
from mlflow import MlflowClient

from entrypoints.train import main as train_main
from mlflow_plugins.model_logging import predictions_to_frame, warm_export
from tvae import contract as C
from tvae.ops import ternary_ops

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3
CONTRACT_KEYS = CPU_CONTRACT_KEYS


def tiny_config(path: Path, **train: object) -> Path:
    """The smoke config shrunk to a seconds-per-epoch model."""
    data = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    data["name"] = "tiny"
    data["model"].update(
        encoder_hidden=[32], decoder_hidden=[16], latent_dim=4, projection_hidden=8
    )
    data["train"].update(epochs=EPOCHS, batch_size=4096, checkpoint_every=2, **train)
    for term in ("rank", "geodesic"):
        data["loss"][term]["pairs"] = 128
    path.write_text(yaml.safe_dump(data))
    return path


def run_cli(*args: str) -> int:
    """Call the CLI in-process as a fresh process would (mlflow.set_experiment sets this env)."""
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    old = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as done:
            train_main(list(args))
    finally:
        signal.signal(signal.SIGTERM, old)
    return done.value.code


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating a store costs seconds)."""
    root = tmp_path_factory.mktemp("store")
    uri = fresh_store(root)
    keys = (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_RUN_ID",
        "MLFLOW_EXPERIMENT_ID",
        "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL",
        "TVAE_WORK_DIR",
    )
    saved = {k: os.environ.get(k) for k in keys}
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ["TVAE_WORK_DIR"] = str(root / "work")  # runs' local work folders
    os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "0.5"  # runs here last seconds
    os.environ.pop("MLFLOW_RUN_ID", None)
    mlflow.set_tracking_uri(uri)
    yield root
    mlflow.set_tracking_uri(None)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


PRINTED: dict[str, str] = {}  # what the module's one training printed


@pytest.fixture(scope="module")
def trained(store):
    cfg = tiny_config(store / "tiny.yaml")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_cli("--config", str(cfg), "--seed", "3", "--lr", "") == 0
    PRINTED["train"] = out.getvalue()
    client = MlflowClient()
    exp = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([exp.experiment_id])
    return client, run


def test_run_finished_with_name_tags_and_params(trained):
    client, run = trained
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tiny-s3-lr8e-4"
    tags = run.data.tags
    assert tags["torch.version"] == torch.__version__
    assert tags["device"] == "cpu" and tags["device.name"]
    assert tags["amp"] == "off" and tags["config.name"] == "tiny"
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # one commit tag, MLflow's own
        assert tags["mlflow.source.git.commit"] == head.stdout.strip()
    assert "git.commit" not in tags
    assert run.data.params["train.seed"] == "3"
    assert run.data.params["loss.geodesic.start_epoch"] == "2"
    assert run.data.params["model.encoder_hidden"] == "32"


def test_train_ends_by_naming_the_run_its_experiment_and_the_next_commands(trained):
    _, run = trained
    text = PRINTED["train"]
    assert f"run {run.info.run_id} FINISHED" in text
    assert f"experiment 'tiny' (id {run.info.experiment_id})" in text
    assert f"store {mlflow.get_tracking_uri()}" in text
    # the trainer was started directly: the console scripts, which work from any folder
    assert f"analyse:  tvae-analyze --run-id {run.info.run_id}" in text
    assert "compare:  tvae-compare --experiment 'tiny'" in text


def test_contract_metrics_at_every_step_one_batch_per_epoch(trained):
    client, run = trained
    stamps: dict[int, set[int]] = {}
    for key in CONTRACT_KEYS:
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), key
        for m in history:
            stamps.setdefault(m.step, set()).add(m.timestamp)
    # one log_batch per epoch: every value of an epoch carries that batch's single timestamp
    assert all(len(ts) == 1 for ts in stamps.values())
    assert any(k.startswith("system/") for k in run.data.metrics)


def test_artifacts_and_checkpoints_load(trained, tmp_path):
    client, run = trained
    rid = run.info.run_id
    top = {a.path for a in client.list_artifacts(rid)}
    assert {"config.yaml", "training.log", "training_summary.json"} <= top
    summary = json.loads(Path(client.download_artifacts(rid, "training_summary.json")).read_text())
    assert summary["status"] == "FINISHED" and summary["last_epoch"] == EPOCHS
    log = Path(client.download_artifacts(rid, "training.log")).read_text().splitlines()
    epochs = [line for line in log if line.startswith("epoch ")]
    assert len(epochs) == EPOCHS
    # the rest: the live grokking state, judged once more at the end
    assert [line.split(":")[0] for line in log if line not in epochs][-1:] == ["grokking live"]
    for name in ("last", "best"):
        path = client.download_artifacts(rid, f"checkpoints/{name}.pt", str(tmp_path))
        state = torch.load(path, weights_only=True)
        assert {"model", "optimizer", "epoch", "config", "metrics"} <= set(state)
    assert state["epoch"] == int(run.data.tags["model.step"])


def test_logged_model_reproduces_logged_coverage(trained):
    client, run = trained
    tags = run.data.tags
    step = int(tags["model.step"])
    assert tags["model.uri"] == f"models:/{tags['model.id']}"
    model = mlflow.pyfunc.load_model(tags["model.uri"])
    ops = ternary_ops().numpy()
    frame = predictions_to_frame(model.predict(pd.DataFrame(ops.astype(np.float64))))
    assert list(frame.columns[:3]) == ["radius_A", "radius_B", "recon_0"]
    assert frame.shape == (len(ops), 2 + 9 + 4)
    recon = frame[[f"recon_{i}" for i in range(9)]].to_numpy()
    coverage = float((recon == ops).all(axis=1).mean())
    history = client.get_metric_history(run.info.run_id, "eval/coverage")
    logged = next(m.value for m in history if m.step == step)
    assert coverage == pytest.approx(logged, abs=1e-9)
    logged_model = client.get_logged_model(tags["model.id"])
    assert logged_model.source_run_id == run.info.run_id


def test_bad_parameter_exits_with_one_line_and_writes_nothing(store, capsys):
    before = len(MlflowClient().search_runs(search_all_experiments_ids(), max_results=1000))
    assert run_cli("--config", str(store / "tiny.yaml"), "--epochs", "0") == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x and " INFO mlflow" not in x]
    assert len(err) == 1 and "--epochs" in err[0]
    assert run_cli("--config", str(store / "tiny.yaml"), "--lr", "nan") == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x and " INFO mlflow" not in x]
    assert err == ["error: Invalid value for '--lr': nan is not a number"]  # not the config's
    for option, value, says in (("--lr", "abc", "a number"), ("--epochs", "5.0", "an integer")):
        assert run_cli("--config", str(store / "tiny.yaml"), option, value) == 2
        err = [x for x in capsys.readouterr().err.splitlines() if x and " INFO mlflow" not in x]
        assert err == [f"error: Invalid value for '{option}': '{value}' is not {says}"]
    assert run_cli("--config", str(store / "missing.yaml")) == 2
    missing = f"error: --config: config file not found: {store / 'missing.yaml'}"
    assert capsys.readouterr().err.strip().splitlines()[-1] == missing  # names the option
    assert run_cli("--config", str(tiny_config(store / "mps.yaml")), "--device", "mps") == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x and " INFO mlflow" not in x]
    assert len(err) == 1 and "device 'mps' is not available" in err[0]
    # the option that gave a bad device is blamed, not the config file
    bad = [("gpu", "--device: invalid value 'gpu'")]
    bad += [] if torch.cuda.is_available() else [("cuda", "--device: device")]
    for device, says in bad:
        assert run_cli("--config", str(tiny_config(store / "d.yaml")), "--device", device) == 2
        err = [x for x in capsys.readouterr().err.splitlines() if x and " INFO mlflow" not in x]
        assert len(err) == 1 and err[0].startswith(f"error: {says}") and "yaml" not in err[0]
    after = MlflowClient().search_runs(search_all_experiments_ids(), max_results=1000)
    assert len(after) == before
    assert not [r for r in after if r.info.status == "RUNNING"]


def test_under_mlflow_run_errors_name_the_options_as_its_parameters(monkeypatch):
    from entrypoints._cli import _remember_options, as_given
    from entrypoints.train import cli

    _remember_options(cli)  # as the train command's run does
    message = "Invalid value for '--lr': nan; --resume-from: x; mlflow run --env-manager local"
    typo = "No such option '--num_epochs'. (Did you mean one of: '--epochs', '--nproc'?)"
    assert as_given(message) == message and as_given(typo) == typo
    monkeypatch.setenv("MLFLOW_RUN_ID", "0" * 32)  # what `mlflow run` exports
    assert as_given(message) == (
        "Invalid value for '-P lr': nan; -P resume_from: x; mlflow run --env-manager local"
    )
    assert as_given(typo) == (
        "No such option '-P num_epochs'. (Did you mean one of: '-P epochs', '-P nproc'?)"
    )
    assert as_given("no registered model '--x'") == "no registered model '--x'"  # a value


def search_all_experiments_ids() -> list[str]:
    return [e.experiment_id for e in MlflowClient().search_experiments()]


def test_divergence_fails_run_with_reason_and_keeps_last_good(store, monkeypatch, tmp_path):
    import tvae.train as trainer_module

    real = trainer_module.evaluate_model
    calls = {"n": 0}

    def nan_on_second(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        if calls["n"] == 2:
            out = {k: float("nan") for k in out}
        return out

    monkeypatch.setattr(trainer_module, "evaluate_model", nan_on_second)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "diverge")
    cfg = tiny_config(tmp_path / "tiny.yaml")
    assert run_cli("--config", str(cfg)) == 1
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("diverge").experiment_id])
    assert run.info.status == "FAILED"
    assert "non-finite" in run.data.tags["failure.reason"]
    path = client.download_artifacts(run.info.run_id, "checkpoints/last.pt", str(tmp_path))
    assert torch.load(path, weights_only=True)["epoch"] == 1
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == [1]
    monkeypatch.undo()  # the same run, resumed past the failure, ends without its reason
    assert run_cli("--resume-from", run.info.run_id) == 0
    again = client.get_run(run.info.run_id)
    assert again.info.status == "FINISHED" and "failure.reason" not in again.data.tags


def test_resume_continues_same_run_without_gaps_or_repeats(trained):
    client, run = trained
    rid = run.info.run_id
    assert run_cli("--resume-from", rid, "--epochs", str(EPOCHS + 2)) == 0
    again = client.get_run(rid)
    assert again.info.status == "FINISHED"
    assert again.data.tags["resume.from_epoch"] == str(EPOCHS)
    for key in ("train/loss", "eval/Q", "opt/lr"):
        steps = sorted(m.step for m in client.get_metric_history(rid, key))
        assert steps == list(range(1, EPOCHS + 3)), key
    assert "train.epochs" in again.data.tags["resume.changed_params"]
    log = Path(client.download_artifacts(rid, "training.log")).read_text().splitlines()
    assert len([line for line in log if line.startswith("epoch ")]) == EPOCHS + 2


def test_resume_of_a_run_with_nothing_left_to_train_says_so_and_writes_nothing(trained, capsys):
    """Before, it ran the end of training again and logged a second model."""
    client, run = trained
    rid = run.info.run_id
    before = client.get_run(rid)
    models = [m.model_id for m in client.search_logged_models([run.info.experiment_id])]
    assert run_cli("--resume-from", rid) == 0
    said = capsys.readouterr()
    lines = [x for x in (said.out + said.err).splitlines() if x and " INFO mlflow" not in x]
    assert len(lines) == 1 and lines[0].startswith(f"run {rid} already FINISHED its ")
    assert "nothing to do" in lines[0]
    after = client.get_run(rid)
    assert after.info.status == "FINISHED" and after.info.end_time == before.info.end_time
    assert after.data.tags == before.data.tags and after.data.metrics == before.data.metrics
    assert [m.model_id for m in client.search_logged_models([run.info.experiment_id])] == models


def test_a_launcher_run_with_nothing_to_resume_says_why_it_is_empty(trained, monkeypatch):
    """`mlflow run -P resume_from=<finished run>` made a run before the trainer started: it
    is named for what it did and its note holds the line, and the resumed run is untouched."""
    client, run = trained
    rid = run.info.run_id
    launcher = client.create_run(run.info.experiment_id).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher)  # as `mlflow run` exports it
    before = client.get_run(rid).data
    assert run_cli("--resume-from", rid) == 0
    tags = client.get_run(launcher).data.tags
    assert tags["mlflow.runName"] == f"resume-{rid[:8]}-nothing-to-do"
    assert tags["mlflow.note.content"].startswith(f"run {rid} already FINISHED its ")
    assert client.get_run(rid).data.tags == before.tags


def test_resume_of_unknown_run_is_bad_input(store, capsys):
    assert run_cli("--resume-from", "0123456789abcdef0123456789abcdef") == 2
    assert "no run with id" in capsys.readouterr().err


def test_context_provider_tags_user_runs_in_a_tvae_process_only(store):
    import tvae.train  # noqa: F401 - this process trains with tvae

    with mlflow.start_run() as run:
        pass
    tags = MlflowClient().get_run(run.info.run_id).data.tags
    assert tags["torch.version"] == torch.__version__
    assert tags["device"] in ("cpu", "cuda")
    assert "device.name" in tags
    other = "import mlflow\nwith mlflow.start_run() as run:\n    print(run.info.run_id)\n"
    out = subprocess.run(
        [sys.executable, "-c", other], capture_output=True, text=True, check=True, env=os.environ
    )
    plain = MlflowClient().get_run(out.stdout.split()[-1]).data.tags
    assert "device" not in plain and "torch.version" not in plain


def test_export_prewarm_leaves_the_training_random_stream_alone():
    """The logger warms torch.export on a thread while the trainer trains; drawing from the
    global generator there shifted the run's random numbers (a default 50-epoch `mlflow run`
    ended at Q 2.15843 instead of the trainer's own 2.15852)."""
    torch.manual_seed(0)
    before = torch.get_rng_state()
    warm_export()  # raises if the warm-up itself fails (the logger's wrapper would hide it)
    assert torch.equal(torch.get_rng_state(), before)


class _WatchingClient(MlflowClient):
    """A real client that notes, as each last.pt upload starts, the run's highest logged step."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int]] = []  # (checkpoint epoch, logged step then)

    def log_artifact(self, run_id, local_path, artifact_path=None):
        if Path(local_path).name == "last.pt":
            epoch = int(torch.load(local_path, weights_only=True)["epoch"])
            steps = [m.step for m in self.get_metric_history(run_id, "train/loss")]
            self.seen.append((epoch, max(steps, default=0)))
        return super().log_artifact(run_id, local_path, artifact_path)


def test_an_epochs_metrics_are_in_the_store_before_its_checkpoint(store, tmp_path):
    """A kill -9 at any moment must not leave a checkpoint ahead of the logged steps (resume
    continues from the checkpoint and would never log the missing epoch)."""
    from mlflow_plugins.tracking import train_in_run
    from tvae.config import load_config

    config = load_config(tiny_config(tmp_path / "tiny.yaml"), {"train.checkpoint_every": 1})
    client = _WatchingClient()
    run = client.create_run(client.get_experiment_by_name("Default").experiment_id)
    result = train_in_run(config, run.info.run_id, tmp_path, client=client, log_model=False)
    client.set_terminated(run.info.run_id, result.status)
    assert [e for e, _ in client.seen] == list(range(1, EPOCHS + 1))
    assert all(logged >= epoch for epoch, logged in client.seen), client.seen


def test_a_resume_without_a_new_best_epoch_still_logs_the_model(store, tmp_path):
    """A run that lost its model (killed before logging it) gets it on resume, even when no
    resumed epoch beats the best one: best.pt comes from the run's artifacts."""
    from mlflow_plugins.tracking import train_in_run
    from tvae.config import load_config

    config = load_config(tiny_config(tmp_path / "tiny.yaml"))
    client = MlflowClient()
    run = client.create_run(client.get_experiment_by_name("Default").experiment_id)
    rid = run.info.run_id
    first = train_in_run(config, rid, tmp_path / "first", client=client, log_model=False)
    client.set_terminated(rid, "KILLED")
    assert "model.id" not in client.get_run(rid).data.tags
    assert run_cli("--resume-from", rid, "--epochs", str(EPOCHS)) == 0  # no epoch left to train
    tags = client.get_run(rid).data.tags
    assert tags["model.step"] == str(first.best_epoch)
    assert client.get_logged_model(tags["model.id"]).source_run_id == rid


class _CountingClient(MlflowClient):
    """A real client that notes each log_batch: its metric steps, and the highest step already
    in the store when a tag batch arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.metric_calls: list[list[int]] = []
        self.tags_after_step: list[int] = []

    def log_batch(self, run_id, metrics=(), params=(), tags=(), synchronous=None):
        if metrics:
            self.metric_calls.append(sorted({m.step for m in metrics}))
        if tags:
            steps = [m.step for m in self.get_metric_history(run_id, C.TRAIN_LOSS)]
            self.tags_after_step.append(max(steps, default=0))
        return super().log_batch(run_id, metrics, params, tags, synchronous=synchronous)


def test_short_epochs_share_store_calls_in_journal_order(store, tmp_path):
    """Epochs shorter than the hold time go out several per call; a tag written after epoch 30
    reaches the store after epoch 30's metrics; every step arrives once and the journal ends
    fully done."""
    from mlflow_plugins.train_logger import MlflowTrainLogger

    client = _CountingClient()
    run = client.create_run(client.get_experiment_by_name("Default").experiment_id)
    logger = MlflowTrainLogger(run.info.run_id, tmp_path, client)
    for epoch in range(1, 61):
        logger.on_epoch_end(epoch, {C.TRAIN_LOSS: 1.0 / epoch, C.COVERAGE: epoch / 60})
        if epoch == 30:
            logger.write_tags({C.GROKKING_LIVE_STATE: "plateau"}, [])
    logger.close()
    assert len(client.metric_calls) < 10, client.metric_calls
    assert [s for call in client.metric_calls for s in call] == list(range(1, 61))
    assert client.tags_after_step == [30]
    for key in (C.TRAIN_LOSS, C.COVERAGE):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == list(range(1, 61))
    assert logger.pending() == 0
    assert client.get_run(run.info.run_id).data.tags[C.GROKKING_LIVE_STATE] == "plateau"


def test_the_system_sample_taken_at_the_end_reaches_the_store(store, tmp_path, monkeypatch):
    """The sampler publishes what it took when it is stopped, right after the last epoch's
    metrics went out: that aggregate is sent, not left held in the journal."""
    from mlflow_plugins.system_sampler import CPU_KEY
    from mlflow_plugins.train_logger import MlflowTrainLogger

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "60")  # only the stop publishes
    monkeypatch.setattr("mlflow_plugins.train_logger.METRICS_HOLD_S", 60.0)  # ... and is held
    client = MlflowClient()
    run = client.create_run(client.get_experiment_by_name("Default").experiment_id)
    logger = MlflowTrainLogger(run.info.run_id, tmp_path, client)
    logger.on_train_start({"device": "cpu"})
    logger.on_epoch_end(1, {C.TRAIN_LOSS: 1.0})
    logger.close()
    assert [m.step for m in client.get_metric_history(run.info.run_id, CPU_KEY)] == [0]
    assert logger.pending() == 0
