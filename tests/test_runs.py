"""Experiment choice for training runs: one per config, safe under concurrent starts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlflow_plugins.runs import EXPERIMENT_KIND_TAG, ensure_experiment


def test_concurrent_starts_share_one_experiment_tagged_for_model_training(tracking_uri):
    client = MlflowClient()
    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda _: ensure_experiment(client, "cfg-a"), range(8)))
    assert len(set(ids)) == 1
    exp = client.get_experiment(ids[0])
    assert exp.name == "cfg-a"
    assert exp.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_existing_untagged_experiment_is_tagged_and_deleted_one_refused(tracking_uri):
    client = MlflowClient()
    old = client.create_experiment("legacy")
    assert ensure_experiment(client, "legacy") == old
    assert EXPERIMENT_KIND_TAG in client.get_experiment(old).tags
    client.delete_experiment(old)
    with pytest.raises(MlflowException, match="deleted"):
        ensure_experiment(client, "legacy")


class _LosesTheTagRace(MlflowClient):
    """A client whose tag write loses the race seen in CI: another training's create_experiment
    wrote the tag between the read and the write, and the store raised a UNIQUE error."""

    def set_experiment_tag(self, experiment_id, key, value):
        super().set_experiment_tag(experiment_id, key, value)  # the other training's write
        raise MlflowException("UNIQUE constraint failed: experiment_tags.key")


def test_losing_the_experiment_tag_race_to_another_training_is_not_an_error(tracking_uri):
    client = _LosesTheTagRace()
    exp_id = MlflowClient().create_experiment("raced")  # seen untagged, as in the race
    assert ensure_experiment(client, "raced") == exp_id
    assert client.get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_a_tag_write_that_really_fails_still_raises(tracking_uri):
    class Refuses(MlflowClient):
        def set_experiment_tag(self, experiment_id, key, value):
            raise MlflowException("store is read-only")

    MlflowClient().create_experiment("read-only")
    with pytest.raises(MlflowException, match="read-only"):
        ensure_experiment(Refuses(), "read-only")


def test_fail_run_says_why_and_leaves_ended_runs_alone(tracking_uri):
    from mlflow_plugins.runs import fail_run
    from tvae.contract import FAILURE_REASON

    client = MlflowClient()
    exp = client.create_experiment("fails")
    running = client.create_run(exp).info.run_id
    assert fail_run(client, running, "bad\ninput:  --lr nan")
    run = client.get_run(running)
    assert run.info.status == "FAILED" and run.data.tags[FAILURE_REASON] == "bad input: --lr nan"
    ended = client.create_run(exp).info.run_id
    client.set_terminated(ended, "FINISHED")
    assert not fail_run(client, ended, "late")
    assert client.get_run(ended).info.status == "FINISHED"
    assert FAILURE_REASON not in client.get_run(ended).data.tags


# -- resume: owners of RUNNING runs, local work folders (issue 14, items 6 and 8) -------------


def _dead_pid() -> tuple[int, float]:
    """The pid and start time of a process that has exited."""
    import subprocess
    import sys

    import psutil

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    started = psutil.Process(proc.pid).create_time()
    proc.wait()
    return proc.pid, started


def test_an_owner_is_alive_only_while_that_very_process_runs():
    import os
    import socket

    from mlflow_plugins.runs import owner_alive, owner_value

    me = owner_value()
    host, pid, started = me.rsplit(":", 2)
    assert host == socket.gethostname() and int(pid) == os.getpid()
    assert owner_alive(me) is True
    assert owner_alive(f"{host}:{pid}:{float(started) - 60:.2f}") is False  # pid reused
    dead, when = _dead_pid()
    assert owner_alive(f"{host}:{dead}:{when:.2f}") is False
    assert owner_alive(f"elsewhere:{pid}:{started}") is None  # cannot be told from here
    assert owner_alive("garbled") is None


def test_a_running_run_is_refused_naming_its_owner_or_taken_over_from_a_dead_one(
    tracking_uri, tmp_path
):
    import os
    import socket

    import torch

    from mlflow_plugins.runs import ResumeError, get_resumable_run, owner_value
    from tvae.contract import OWNER

    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("owners")).info.run_id
    local = tmp_path / "last.pt"
    heard: list[str] = []

    def refusal(owner: str | None, checkpoint: bool) -> str:
        if owner is not None:
            client.set_tag(run_id, OWNER, owner)
        with pytest.raises(ResumeError) as err:
            get_resumable_run(client, run_id, local if checkpoint else None, heard.append)
        assert "\n" not in str(err.value)
        return str(err.value)

    torch.save({"epoch": 2}, local)
    assert "training never started" in refusal(None, checkpoint=False)
    assert "no recorded owner" in refusal(None, checkpoint=True)
    text = refusal(owner_value(), checkpoint=True)
    assert "still alive" in text and f"pid {os.getpid()} on host {socket.gethostname()}" in text
    text = refusal("gpu-box:4242:1700000000.00", checkpoint=True)
    assert "pid 4242 on host gpu-box" in text and "resume it there" in text
    dead, when = _dead_pid()
    gone = f"{socket.gethostname()}:{dead}:{when:.2f}"
    assert "before its first checkpoint" in refusal(gone, checkpoint=False)
    assert heard == []  # nothing taken over so far
    assert get_resumable_run(client, run_id, local, heard.append).info.run_id == run_id
    (line,) = heard
    assert f"left RUNNING by pid {dead}" in line and line.endswith("taking it over")


def test_resume_takes_the_newer_of_the_stores_and_the_work_folders_checkpoint(
    tracking_uri, tmp_path
):
    import torch

    from mlflow_plugins.runs import download_checkpoints

    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("newest")).info.run_id
    stored = tmp_path / "stored"
    stored.mkdir()
    for kind in ("last", "best"):
        torch.save({"epoch": 3, "kind": f"stored {kind}"}, stored / f"{kind}.pt")
        client.log_artifact(run_id, str(stored / f"{kind}.pt"), "checkpoints")

    def local_epochs(workdir, last: int | None) -> dict[str, tuple[int, str]]:
        (workdir / "checkpoints").mkdir(parents=True)
        if last is not None:
            torch.save({"epoch": last, "kind": "local last"}, workdir / "checkpoints/last.pt")
        got = download_checkpoints(client, run_id, workdir)
        return {k: tuple(torch.load(p, weights_only=True).values()) for k, p in got.items()}

    # an upload that failed at epoch 5: the work folder's last.pt wins (best fills in)
    assert local_epochs(tmp_path / "a", 5) == {
        "last": (5, "local last"),
        "best": (3, "stored best"),
    }
    # a stale work folder, or none: the store's
    assert local_epochs(tmp_path / "b", 2) == {
        "last": (3, "stored last"),
        "best": (3, "stored best"),
    }
    assert local_epochs(tmp_path / "c", None)["last"] == (3, "stored last")


def test_resume_from_names_a_run_id_or_a_checkpoint_in_a_work_folder(tmp_path, monkeypatch):
    from mlflow_plugins.runs import ResumeError, claim_work_dir, resume_target

    monkeypatch.setenv("TVAE_WORK_DIR", str(tmp_path / "work"))
    rid = "0123456789abcdef0123456789abcdef"
    assert resume_target(rid) == (rid, tmp_path / "work" / rid)
    folder = claim_work_dir(rid, "sqlite:///x.db")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.pt").write_bytes(b"x")
    assert resume_target(str(folder / "checkpoints" / "last.pt")) == (rid, folder)
    assert resume_target(str(folder)) == (rid, folder)
    stray = tmp_path / "stray" / "last.pt"
    stray.parent.mkdir()
    stray.write_bytes(b"x")
    with pytest.raises(ResumeError, match="not in a run's work folder"):
        resume_target(str(stray))
    with pytest.raises(ResumeError, match="no checkpoint file"):
        resume_target(str(tmp_path / "missing.pt"))
