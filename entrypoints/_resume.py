"""`--resume-from`: find the run to continue, its newest `last.pt`, and the config in it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from entrypoints._cli import option_hint
from tvae import contract as C
from tvae.config import TVAEConfig, config_from_dict


@dataclass
class Resume:
    """What `--resume-from` resolved to: the run, its work folder and the checkpoint."""

    run_id: str
    workdir: Path
    checkpoint: Path
    config: TVAEConfig
    took_over: str | None  # the dead owner of a RUNNING run this resume takes over
    finished: bool = False  # the run FINISHED and its checkpoint has every epoch of config

    def nothing_to_do(self) -> str | None:
        """The line to print instead of training when there is nothing left to train."""
        if not self.finished:
            return None
        epochs = self.config.train.epochs
        more = option_hint("epochs", f"<more than {epochs}>")
        return f"run {self.run_id} already FINISHED its {epochs} epochs: nothing to do ({more})"


def resume_run(target: str, overrides: dict[str, Any], given: dict[str, str]) -> Resume:
    """Find the run and its newest last.pt (the store's or its work folder's, or the file
    given) and rebuild its config (plus overrides, from the options ``given`` names) from
    that checkpoint."""
    import torch
    from mlflow import MlflowClient

    from mlflow_plugins.runs import download_checkpoints, get_resumable_run, resume_target
    from tvae.checkpoint import check_resumable

    client = MlflowClient()
    run_id, workdir = resume_target(target)
    local = workdir / "checkpoints" / "last.pt"
    if run_id != target and Path(target).suffix == ".pt":
        local = Path(target).expanduser()
    notes: list[str] = []
    run = get_resumable_run(client, run_id, local, notice=notes.append)
    workdir.mkdir(parents=True, exist_ok=True)
    if run_id != target:  # a local checkpoint given: that very file, whatever the store holds
        ckpt = local
    else:
        before = local.stat().st_mtime_ns if local.is_file() else None
        ckpt = download_checkpoints(client, run_id, workdir)["last"]
        if before is None or local.stat().st_mtime_ns != before:  # the store's was newer
            _fetch_log(client, run_id, workdir)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    check_resumable(state, f"--resume-from: run {run_id} last.pt")
    source = f"run {run_id} last.pt config"
    config = config_from_dict(state["config"], overrides, source=source, given=given)
    for line in notes:
        click.echo(line, err=True)
    owner = run.data.tags.get(C.OWNER) if notes else None
    finished = run.info.status == "FINISHED" and int(state["epoch"]) >= config.train.epochs
    return Resume(run_id, workdir, ckpt, config, owner, finished)


def _fetch_log(client: Any, run_id: str, workdir: Path) -> None:
    """The run's console log from the store, to keep appending to it."""
    try:
        client.download_artifacts(run_id, "training.log", str(workdir))
    except Exception:  # noqa: BLE001 - a run killed before its first log upload has none
        pass
