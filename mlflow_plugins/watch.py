"""Follow RUNNING MLflow runs of any trainer and raise grokking while they train.

    from mlflow_plugins.watch import Watch
    Watch(MlflowClient(), run_id=run_id, roles=roles).run()      # until the run ends

Each poll reads only the rows logged since the last one (`mlflow_plugins.history.MetricReader`),
feeds them to the live detector (`tvae.analysis.live.LiveDetector`, the detector of `analyze`)
and, when the live state changes, sets the `grokking.live.*` tags on the run (only while it is
RUNNING, checked just before writing), prints one line and notifies (a webhook POST, a shell
command). When a run ends, the detector runs once more on everything and only
`grokking.live.state` is written (``confirmed`` or ``none``: what `analyze` will say), on a run
the watcher had tagged; then the watcher leaves it. `analyze` stays the final word.

A store that does not answer (a server restarting) is one line, then the watcher keeps polling;
a deleted run is one line and is left alone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlflow.exceptions import MlflowException

from mlflow_plugins.analysis_writer import tool_run
from mlflow_plugins.history import MetricReader
from mlflow_plugins.notify import Notifier
from mlflow_plugins.stepless import LivePlacer
from mlflow_plugins.store_writes import is_not_found, set_tags
from tvae import contract as C
from tvae.analysis.guess_roles import roles_for
from tvae.analysis.live import LiveDetector
from tvae.analysis.live_state import LiveState, fmt_epoch
from tvae.analysis.roles import Roles

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from tvae.analysis import Thresholds

RUNNING = "RUNNING"
DEFAULT_INTERVAL = 5.0  # seconds between polls
DEFAULT_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves, for stores that are not a server


def ui_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI: on the tracking server, else where `mlflow ui` serves
    (``TVAE_UI_URL`` overrides the base)."""
    base = os.environ.get("TVAE_UI_URL") or (
        tracking_uri if tracking_uri.startswith(("http://", "https://")) else DEFAULT_UI
    )
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


@dataclass
class RunWatch:
    """One watched run: its reader, its live detector and what was written onto it."""

    client: MlflowClient
    run_id: str
    run_name: str
    experiment_id: str
    experiment: str
    detector: LiveDetector
    reader: MetricReader
    placer: LivePlacer = field(default_factory=LivePlacer)  # rows logged without a step
    written: dict[str, str] = field(default_factory=dict)  # live tags as last written
    reported: LiveState | None = None  # the last state printed and notified
    changes: list[LiveState] = field(default_factory=list)  # every state printed, in order
    final: LiveState | None = None  # the state at the run's end
    mapped: bool = True  # roles settled (False: read by key names once a held-out key is seen)
    waiting: bool = False  # said that it has not logged every key of the metric_map yet
    done: bool = False

    @property
    def label(self) -> str:
        return f"run {self.run_id}" + (f" ({self.run_name})" if self.run_name else "")


class Watch:
    """Watches one run (``run_id``) or every RUNNING run of an experiment (``experiment_id``).

    `poll` does one round (usable on its own, e.g. in lockstep with a replay); `run` polls
    every ``interval`` seconds until the run ends, or for ``until`` seconds at most.
    ``roles`` None (no metric_map): TernaryVAE's, or for a run that logs none of their
    generalisation keys, read off its key names as `analyze` reads them (`roles_for`).
    ``exclude``: run ids never to watch (the `mlflow run` launcher run of the watcher itself).
    ``required``: {role: key} the metric_map names; a run is judged once it has logged them all
    (`analyze` refuses a run without them), and one line says which it waits for.
    """

    def __init__(
        self,
        client: MlflowClient,
        *,
        roles: Roles | None,
        thresholds: Thresholds | None = None,
        run_id: str | None = None,
        experiment_id: str | None = None,
        interval: float = DEFAULT_INTERVAL,
        until: float | None = None,
        notifier: Notifier | None = None,
        echo: Callable[[str], None] = print,
        exclude: tuple[str, ...] = (),
        required: Mapping[str, str] | None = None,
    ) -> None:
        if (run_id is None) == (experiment_id is None):
            raise ValueError("watch one run_id or one experiment_id")
        self.client = client
        self.by_names = roles is None
        self.roles, self.thresholds = roles or Roles(), thresholds
        self.run_id, self.experiment_id = run_id, experiment_id
        self.interval, self.until = interval, until
        self.echo = echo
        self.notifier = notifier or Notifier(echo=echo)
        self.exclude = set(exclude)
        self.required = dict(required or {})
        self.runs: dict[str, RunWatch] = {}
        self.cpu_seconds = 0.0  # thread CPU time spent polling (not sleeping)
        self.polls = 0
        self._outage: float | None = None  # when the store stopped answering
        self._experiments: dict[str, str] = {}

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> dict[str, RunWatch]:
        """Poll until the watched run ends (single run) or ``until`` seconds pass."""
        started = time.monotonic()
        while True:
            if not self.poll():
                break
            if self.until is not None and time.monotonic() - started >= self.until:
                left = [w.label for w in self.runs.values() if not w.done]
                still = f"; still RUNNING: {', '.join(left)}" if left else ""
                self.echo(f"watch: stopped after {self.until:g} s (until){still}")
                break
            wait = self.interval
            if self.until is not None:
                wait = min(wait, max(0.0, self.until - (time.monotonic() - started)))
            time.sleep(wait)
        return self.runs

    def poll(self) -> bool:
        """One round over the watched runs; False once there is nothing left to watch."""
        started = time.thread_time()
        try:
            try:
                targets = self._targets()
            except Exception as err:  # noqa: BLE001 - the store may be away: say so once, go on
                if self.run_id is not None and is_not_found(err):
                    self.echo(f"watch: run {self.run_id} no longer exists: stopped watching it")
                    return False
                self._away(err)
                return True
            for watch in targets:
                try:
                    self._poll_run(watch)
                    self._back()
                except Exception as err:  # noqa: BLE001
                    self._away(err)
            return self.experiment_id is not None or not all(w.done for w in self.runs.values())
        finally:
            self.polls += 1
            self.cpu_seconds += time.thread_time() - started

    # -- which runs -------------------------------------------------------------------------
    def _targets(self) -> list[RunWatch]:
        """This round's runs: the watched run, or every RUNNING run of the experiment (one
        search, new ones picked up) and each watched one that has not been seen to end."""
        if self.run_id is not None:
            if self.run_id not in self.runs:
                self._new_watch(self.client.get_run(self.run_id))
                self._back()
        else:
            found = self.client.search_runs(
                [self.experiment_id], filter_string=f"attributes.status = '{RUNNING}'"
            )
            self._back()
            for run in found:
                run_id = run.info.run_id
                if run_id in self.runs or run_id in self.exclude:
                    continue
                if tool_run(run.data.tags):  # never watched in experiment mode
                    self.exclude.add(run_id)
                    continue
                self._new_watch(run)
        return [w for w in self.runs.values() if not w.done]

    def _new_watch(self, run: Run) -> RunWatch:
        watch = RunWatch(
            self.client,
            run.info.run_id,
            run.info.run_name or "",
            run.info.experiment_id,
            self._experiment_name(run.info.experiment_id),
            LiveDetector(self.roles, self.thresholds),
            MetricReader(self.client, run.info.run_id),
            mapped=not self.by_names,
        )
        self.runs[watch.run_id] = watch
        self.echo(f"watch: following {watch.label} in experiment '{watch.experiment}'")
        return watch

    def _experiment_name(self, experiment_id: str) -> str:
        if experiment_id not in self._experiments:
            try:
                self._experiments[experiment_id] = self.client.get_experiment(experiment_id).name
            except MlflowException:
                self._experiments[experiment_id] = experiment_id
        return self._experiments[experiment_id]

    # -- one run ----------------------------------------------------------------------------
    def _poll_run(self, watch: RunWatch) -> None:
        """Status and new rows of one run (the status read first: rows logged before a run
        ends are all in the store by the time it reads as ended), then judge and publish."""
        status, new = watch.reader.poll()
        start = status is not None and watch.placer.needs_all(new)
        if start:  # a key logged without a step: read it all again, to place it in order
            watch.reader.rewind()
            status, new = watch.reader.poll()
        if status is None:
            self._stop(watch, f"{watch.label} no longer exists: stopped watching it")
            return
        if status.lifecycle_stage == "deleted":
            self._stop(watch, f"{watch.label} was deleted: stopped watching it")
            return
        rows, again = watch.placer.place(new, start=start)
        if again:  # rows fed before moved: judge them all afresh, from the state so far
            old = watch.detector
            watch.detector = LiveDetector(old.roles, old.t)
            watch.detector.state = old.state
        if start and watch.placer.note:
            self.echo(f"watch: {watch.label}: {watch.placer.note}")
        for key, (steps, values, _) in rows.items():
            watch.detector.add(key, steps, values)
        if not watch.mapped:
            self._map_by_names(watch)
        keys = watch.detector.keys  # the detector leaves out MLflow's system/ keys: so does this
        missing = sorted(
            f"{r}={k}"
            for r, k in self.required.items()
            if k not in keys and not k.startswith(C.SYSTEM_PREFIX)
        )
        if status.status != RUNNING:
            self._finish(watch, status.status, missing)
            return
        if missing:
            self._wait_for(watch, missing)
            return
        state = watch.detector.update()
        if state.seen_at_step is None:
            return  # not judged yet (too few rows)
        self._publish(watch, state)

    def _map_by_names(self, watch: RunWatch) -> None:
        """Settle the roles of a run watched without a metric_map once its keys say them."""
        found = roles_for(watch.detector.keys)
        if found is None:
            return  # no generalisation key logged yet
        roles, guessed = found
        watch.mapped = True
        if guessed:
            watch.detector.remap(roles)
            self.echo(
                f"watch: {watch.label} logs none of TernaryVAE's keys: read by its key names as "
                f'metric_map="{guessed}"'
            )

    def _wait_for(self, watch: RunWatch, missing: list[str]) -> None:
        """Once the run logs anything: one line naming the metric_map keys it has not."""
        if watch.waiting or not watch.detector.rows:
            return
        watch.waiting = True
        self.echo(
            f"watch: {watch.label} has not logged {', '.join(missing)} of the metric_map (it "
            f"logs {', '.join(sorted(watch.detector.keys))}): judged once it does"
        )

    def _publish(self, watch: RunWatch, state: LiveState) -> None:
        update = state.tag_update(watch.written)
        if update is not None:
            if not self._still_running(watch):
                return  # it ended since this poll's read: the next poll finishes it
            tags, stale = update
            set_tags(watch.client, watch.run_id, tags, stale)
            watch.written = dict(tags)
        if watch.reported is None or watch.reported.change_key() != state.change_key():
            self._report(watch, state)

    def _still_running(self, watch: RunWatch) -> bool:
        status = watch.reader.status()
        return (
            status is not None
            and status.status == RUNNING
            and (status.lifecycle_stage != "deleted")
        )

    def _finish(self, watch: RunWatch, status: str, missing: list[str]) -> None:
        """The run ended: one last judgement on everything, only the state tag written."""
        if missing:  # never judged, so never tagged
            self._stop(
                watch,
                f"{watch.label} ended {status} without logging {', '.join(missing)} of the "
                "metric_map: not judged (analyze refuses it too)",
            )
            return
        state = watch.detector.update(ended=True)
        watch.final = state
        watch.done = True
        if watch.written:
            watch.client.set_tag(watch.run_id, C.GROKKING_LIVE_STATE, state.state)
            watch.written[C.GROKKING_LIVE_STATE] = state.state
        self._report(watch, state, ended=status)

    def _stop(self, watch: RunWatch, message: str) -> None:
        watch.done = True
        self.echo(f"watch: {message}")

    def _report(self, watch: RunWatch, state: LiveState, ended: str | None = None) -> None:
        before = watch.reported
        watch.reported = state
        watch.changes.append(state)
        if ended:
            line = (
                f"watch: {watch.label} ended {ended}: live state {state.state} "
                f"({state.detail}); `analyze` has the final word"
            )
        else:
            line = f"watch: {watch.label}: {state.line()}"
        self.echo(line)
        if before is not None and before.change_key() == state.change_key():
            return
        self.notifier.send(self._payload(watch, state, before, ended))

    def _payload(
        self, watch: RunWatch, state: LiveState, before: LiveState | None, ended: str | None
    ) -> dict[str, Any]:
        return {
            "run_id": watch.run_id,
            "run_name": watch.run_name,
            "experiment": watch.experiment,
            "experiment_id": watch.experiment_id,
            "state": state.state,
            "previous_state": before.state if before else None,
            "epoch": fmt_epoch(state.since) or None,
            "first_epoch": fmt_epoch(state.first_epoch) or None,
            "severity": state.severity,
            "confidence": round(state.confidence, 3),
            "events": state.events,
            "seen_at_step": state.seen_at_step,
            "withdrawn": state.withdrawn_reason,
            "detail": state.detail,
            "ended": ended,
            "ui_url": ui_url(self.client.tracking_uri, watch.experiment_id, watch.run_id),
        }

    # -- the store away and back ------------------------------------------------------------
    def _away(self, err: BaseException) -> None:
        if self._outage is None:
            self._outage = time.monotonic()
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            self.echo(
                f"watch: tracking store not answering ({type(err).__name__}: {first}); "
                f"retrying every {self.interval:g} s"
            )

    def _back(self) -> None:
        if self._outage is not None:
            away = time.monotonic() - self._outage
            self._outage = None
            self.echo(f"watch: tracking store answering again after {away:.0f} s")
