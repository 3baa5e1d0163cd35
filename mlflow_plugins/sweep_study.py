"""A sweep's Optuna study: storage (a journal file or a database URL), sampler, and handing
out trials so that the study never holds more than its total, whatever the workers."""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mlflow_plugins.sweep_space import SweepInputError, SweepSpec, is_url

SURPLUS_ATTR = "sweep.surplus"
PARENT_ATTR = "mlflow_parent_run_id"  # study user attr: the parent run of the study
MISSED_HEARTBEATS = 3  # a running trial without a heartbeat for this many intervals is abandoned


def make_storage(
    storage: str, heartbeat: int = 0, on_abandoned: Callable[[Any, Any], None] | None = None
) -> Any:
    """The study's storage. A database URL with `heartbeat` seconds > 0 turns on Optuna's
    heartbeats: `fail_abandoned_trials` then fails a RUNNING trial whose worker (on any machine)
    has been silent for MISSED_HEARTBEATS intervals and calls `on_abandoned(study, trial)`."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if is_url(storage):
        if heartbeat <= 0:
            return optuna.storages.RDBStorage(storage)
        return optuna.storages.RDBStorage(
            storage,
            heartbeat_interval=heartbeat,
            grace_period=MISSED_HEARTBEATS * heartbeat,
            failed_trial_callback=on_abandoned,
        )
    path = storage[len("journal:") :].lstrip("/") if storage.startswith("journal:") else storage
    if storage.startswith("journal:///"):
        path = "/" + path
    Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(Path(path).expanduser())))


def make_sampler(spec: SweepSpec) -> Any:
    import optuna

    if spec.all_categorical:

        class Grid(optuna.samplers.GridSampler):
            """A grid whose exhaustion does not call `study.stop()` (which raises under
            ask-and-tell); the sweep stops at the grid's size itself (SweepSpec.target)."""

            def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
                return None

        return Grid({d.key: list(d.choices) for d in spec.dims})
    return optuna.samplers.TPESampler(constant_liar=True)


def open_study(spec: SweepSpec, storage: Any | None = None) -> Any:
    import optuna

    from mlflow_plugins.sweep_pruner import make_pruner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = storage if storage is not None else make_storage(spec.storage)
    study = optuna.create_study(
        study_name=spec.study,
        storage=storage,
        sampler=make_sampler(spec),
        pruner=make_pruner(spec.pruner),
        direction=spec.direction,
        load_if_exists=True,
    )
    if study.direction.name.lower() != spec.direction:
        raise SweepInputError(
            f"study '{spec.study}' exists with direction {study.direction.name.lower()}, "
            f"not {spec.direction}"
        )
    return study


def fail_abandoned_trials(study: Any) -> None:
    """FAIL the trials whose worker stopped sending heartbeats (see `make_storage`); a no-op
    on storages without heartbeats."""
    import optuna

    with warnings.catch_warnings():  # fail_stale_trials is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


@contextlib.contextmanager
def heartbeat(storage: Any, study: Any, trial: Any) -> Iterator[None]:
    """Record the trial's heartbeat now and every interval while the block runs (storages with
    heartbeats only), from a thread, so a long training keeps its trial alive."""
    from optuna.storages import RDBStorage

    interval = storage.get_heartbeat_interval() if isinstance(storage, RDBStorage) else None
    if not interval:
        yield
        return
    study_id = storage.get_study_id_from_name(study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a database away for a moment: next beat
                storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name="tvae-sweep-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def counted(trials: list[Any]) -> list[Any]:
    """The trials that count toward the study's size: any state but WAITING, not surplus."""
    from optuna.trial import TrialState

    return [
        t for t in trials if t.state != TrialState.WAITING and not t.user_attrs.get(SURPLUS_ATTR)
    ]


@contextlib.contextmanager
def claim_lock(spec: SweepSpec):
    """One worker at a time (per study, on this machine) counts the trials and asks a new one."""
    digest = hashlib.sha256(f"{spec.storage}\0{spec.study}".encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"tvae-sweep-{digest}.lock"
    try:
        import fcntl
    except ImportError:  # no flock (Windows): the surplus check still keeps the count
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ask_trial(spec: SweepSpec, study: Any) -> Any | None:
    """A new trial, or None when the study holds its `target` trials."""
    from optuna.trial import TrialState

    with claim_lock(spec):
        if len(counted(study.get_trials(deepcopy=False))) >= spec.target:
            return None
        trial = study.ask({d.key: d.distribution() for d in spec.dims})
    before = [t for t in counted(study.get_trials(deepcopy=False)) if t.number < trial.number]
    if len(before) >= spec.target:  # another machine claimed the last one at the same moment
        trial.set_user_attr(SURPLUS_ATTR, True)
        study.tell(trial, state=TrialState.FAIL)
        return None
    return trial
