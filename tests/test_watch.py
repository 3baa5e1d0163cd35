"""The live watcher against real MLflow: a temporary SQLite store (a trainer thread logging
while the watcher polls, or the two in lockstep) and one real `mlflow server` (the REST read
path, and the server going away and coming back)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner
from corpus import load_run, metric_map, without_steps
from live_curves import METRIC_MAP, textbook
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from mlflow_server import mlflow_server
from test_analyze_cli import assert_one_line_error

from entrypoints.watch import main as watch_main
from mlflow_plugins.analyze_inputs import mapped_keys
from mlflow_plugins.history import load_history
from mlflow_plugins.notify import Notifier
from mlflow_plugins.watch import Watch
from tvae import contract as C
from tvae.analysis import Roles, analyze

ROLES = Roles.from_metric_map(METRIC_MAP)
ROLES_BY_NAMES = Roles.from_metric_map("accuracy=val_acc,val_loss=val_loss,loss=train_loss,lr=lr")


def live_tags(run_id: str) -> dict[str, str]:
    tags = MlflowClient().get_run(run_id).data.tags
    return {k: v for k, v in tags.items() if k.startswith("grokking.live.")}


def new_run(name: str = "trainer", experiment_id: str = "0", tags=None) -> str:
    return MlflowClient().create_run(experiment_id, run_name=name, tags=tags or {}).info.run_id


def log_rows(client: MlflowClient, run_id: str, frame: pd.DataFrame) -> None:
    """Log ``frame``'s rows (step = epoch), NaN included, as one batch per 1000 values."""
    ts = int(time.time() * 1000)
    metrics = [
        Metric(key, float(value), ts + int(epoch), int(epoch))
        for epoch, row in frame.iterrows()
        for key, value in row.items()
        if not (key == "late" and pd.isna(value))
    ]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])


def lockstep(watch: Watch, client, run_id, frame, pace: int, end: str | None = "FINISHED"):
    """Replay ``frame`` into the RUNNING run ``pace`` epochs per poll, then end it."""
    for i in range(0, len(frame), pace):
        log_rows(client, run_id, frame.iloc[i : i + pace])
        watch.poll()
    if end:
        client.set_terminated(run_id, end)
        assert watch.poll() is False


class Hook(BaseHTTPRequestHandler):
    """A webhook receiver: keeps every JSON body POSTed to it; answers 500 to the first."""

    bodies: list = []
    fail_first = True

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if Hook.fail_first:
            Hook.fail_first = False
            self.send_response(500)
        else:
            Hook.bodies.append(body)
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    Hook.bodies, Hook.fail_first = [], True
    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", Hook.bodies
    server.shutdown()


def test_live_states_tags_webhook_and_command_while_a_trainer_logs(tracking_uri, webhook, tmp_path):
    """A trainer thread logs a textbook grokking run (NaN rows, a key that appears late)
    while the watcher polls: the tags say plateau while it is in the plateau and RUNNING,
    then confirmed at the epoch `analyze` reports; the webhook and the command hear of it."""
    url, bodies = webhook
    client = MlflowClient()
    run_id = new_run()
    frame = textbook(n=220)
    frame.loc[40:41, "train_loss"] = float("nan")
    frame["late"] = frame.index.where(frame.index >= 100).astype(float)
    seen_in_plateau = {}

    def trainer():
        for start in range(0, len(frame), 4):
            log_rows(client, run_id, frame.iloc[start : start + 4])
            if start == 120:  # well into the plateau: wait until the UI would show it
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    run = client.get_run(run_id)
                    if run.data.tags.get(C.GROKKING_LIVE_STATE) == "plateau":
                        seen_in_plateau.update(run.data.tags, status=run.info.status)
                        break
                    time.sleep(0.05)
            time.sleep(0.01)
        client.set_terminated(run_id, "FINISHED")

    lines: list[str] = []
    envfile = tmp_path / "env.txt"
    command = f'echo "$TVAE_STATE $TVAE_EPOCH $TVAE_RUN_ID $TVAE_EXPERIMENT" >> {envfile}'
    notifier = Notifier(url, command, lines.append)
    watch = Watch(client, run_id=run_id, roles=ROLES, interval=0.05, notifier=notifier,
                  echo=lines.append)  # fmt: skip
    thread = threading.Thread(target=trainer)
    thread.start()
    runs = watch.run()
    thread.join()

    assert seen_in_plateau["status"] == "RUNNING", lines
    assert "in a plateau since epoch" in seen_in_plateau[C.GROKKING_LIVE_DETAIL]
    states = [s.state for s in runs[run_id].changes]
    assert states[0] in ("none", "plateau") and "plateau" in states, lines
    assert states[-2:] == ["confirmed", "confirmed"], lines  # the last: the run's end
    assert states.index("plateau") < states.index("confirmed")
    history, _ = load_history(client, run_id)
    final = analyze(history, ROLES).confirmed
    tags = live_tags(run_id)
    assert tags[C.GROKKING_LIVE_STATE] == "confirmed"
    assert tags[C.GROKKING_LIVE_FIRST_EPOCH] == "151" == f"{final[0].breakthrough_epoch:g}"
    assert tags[C.GROKKING_LIVE_EVENTS] == "1"
    assert int(tags[C.GROKKING_LIVE_SEEN_AT_STEP]) >= final[0].rise_end + 5
    assert sum("): confirmed at step" in line for line in lines) == 1, lines
    assert any("ended FINISHED: live state confirmed" in line for line in lines), lines
    # webhook: the first POST got a 500 and was retried; one body per state change
    posted = [b["state"] for b in bodies]
    assert "confirmed" in posted and "plateau" in posted, bodies
    hit = next(b for b in bodies if b["state"] == "confirmed")
    assert hit["run_id"] == run_id and hit["experiment"] == "Default"
    assert hit["epoch"] in ("150", "151") and hit["severity"] in ("standard", "major")
    assert hit["ui_url"].endswith(f"/#/experiments/0/runs/{run_id}")
    env_lines = envfile.read_text().splitlines()
    assert any(line.startswith("confirmed 15") and run_id in line for line in env_lines)
    assert env_lines[0].endswith("Default")


def test_run_end_stops_the_watcher_and_only_the_state_tag_is_written(tracking_uri):
    """A run that ends mid-jump: live said breakthrough; at the end only grokking.live.state
    changes (to what analyze says), nothing else is written, and the watcher stops."""
    client = MlflowClient()
    run_id = new_run()
    watch = Watch(client, run_id=run_id, roles=ROLES, echo=lambda line: None)
    lockstep(watch, client, run_id, textbook(n=153), pace=9, end=None)
    before = client.get_run(run_id).data.tags
    assert before[C.GROKKING_LIVE_STATE] == "breakthrough"
    assert not analyze(load_history(client, run_id)[0], ROLES).confirmed
    client.set_terminated(run_id, "FINISHED")
    assert watch.poll() is False
    after = client.get_run(run_id).data.tags
    assert after[C.GROKKING_LIVE_STATE] == "none"
    assert {k: v for k, v in after.items() if k != C.GROKKING_LIVE_STATE} == {
        k: v for k, v in before.items() if k != C.GROKKING_LIVE_STATE
    }
    log_rows(client, run_id, textbook(n=160).iloc[153:])  # logged after the end: not read
    assert watch.poll() is False
    assert client.get_run(run_id).data.tags == after


@pytest.mark.parametrize(
    "name,view,grokking",
    [("add53_f40_wd1", "acc+loss", True), ("blobs_step35", "acc+loss", False),
     ("add53_f15_wd1", "val_acc", False)],
)  # fmt: skip
def test_corpus_runs_replayed_live(tracking_uri, name, view, grokking):
    """Real runs replayed into a RUNNING run: an event the final analysis confirms is raised
    live; a run it does not confirm (an LR-drop confound, a run that never generalises) never
    gets a live `confirmed`."""
    client = MlflowClient()
    frame = load_run(name)
    roles = Roles.from_metric_map(metric_map(view))
    run_id = new_run(name)
    watch = Watch(client, run_id=run_id, roles=roles, echo=lambda line: None)
    lockstep(watch, client, run_id, frame, pace=max(5, len(frame) // 60))
    final = analyze(load_history(client, run_id)[0], roles).confirmed
    live = [s for s in watch.runs[run_id].changes[:-1] if s.state == "confirmed"]
    assert bool(final) == grokking
    assert bool(live) == grokking, [s.line() for s in watch.runs[run_id].changes]
    if grokking:
        first = live[0]
        c = final[0]
        assert c.plateau_start <= first.first_epoch <= c.rise_end
        assert live_tags(run_id)[C.GROKKING_LIVE_FIRST_EPOCH] == f"{c.breakthrough_epoch:g}"
    assert live_tags(run_id)[C.GROKKING_LIVE_STATE] == ("confirmed" if grokking else "none")


def test_bad_input_is_one_line_and_writes_nothing(tracking_uri, tmp_path):
    client = MlflowClient()
    running = new_run()
    log_rows(client, running, textbook(n=20))
    done = new_run("done")
    client.set_terminated(done, "FINISHED")
    watcher = new_run("watch-x", tags={"mlflow.source.name": "/usr/local/bin/tvae-watch"})
    bad_yaml = tmp_path / "t.yaml"
    bad_yaml.write_text("plateau: {min_epochs: -x}\n")
    cases = [
        (["--run-id", "nope"], "--run-id: no run 'nope'"),
        (["--run-id", done], "is FINISHED, not RUNNING"),
        (["--run-id", watcher], "is a `tvae-watch` run, not a training run"),
        (["--run-id", running, "--interval", "0"], "--interval: '0' is not a positive number"),
        (["--run-id", running, "--interval", "abc"], "--interval: 'abc' is not a number"),
        (["--run-id", running, "--until", "-5"], "--until: '-5' is not a positive number"),
        (["--experiment", "no-such-experiment"], "--experiment: no experiment"),
        (["--run-id", running, "--metric-map", "acc"], "--metric-map: entry 'acc' is not role=key"),
        (["--run-id", running, "--metric-map", "speed=x"], "unknown role 'speed'"),
        (["--run-id", running, "--config", str(tmp_path / "none.yaml")], "not found"),
        (["--run-id", running, "--config", str(bad_yaml)], "--config:"),
        (["--run-id", running, "--webhook", "ftp://x"], "--webhook: 'ftp://x' is not an http"),
        ([], "give --run-id (one run) or --experiment"),
        (["--run-id", running, "--experiment", "Default"], "give --run-id (one run) or"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(watch_main, args)
        assert_one_line_error(result, message)
    own = CliRunner().invoke(watch_main, ["--run-id", running], env={"MLFLOW_RUN_ID": running})
    assert_one_line_error(own, "-P run_id names this command's own run")  # as `mlflow run` runs it
    assert not live_tags(running) and not live_tags(done) and not live_tags(watcher)


def test_cli_watches_until_and_prints_lines(tracking_uri, monkeypatch):
    client = MlflowClient()
    run_id = new_run()
    log_rows(client, run_id, textbook(n=60))
    launcher = new_run("random-name-7")
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher)  # as `mlflow run -e watch` starts it
    result = CliRunner().invoke(
        watch_main,
        ["--run-id", run_id, "--metric-map", METRIC_MAP, "--interval", "0.1", "--until", "0.5"],
    )
    assert result.exit_code == 0, result.output
    assert "plateau at step 60" in result.output
    assert "stopped after 0.5 s (until); still RUNNING" in result.output
    assert live_tags(run_id)[C.GROKKING_LIVE_STATE] == "plateau"
    assert client.get_run(run_id).info.status == "RUNNING"
    assert client.get_run(launcher).info.run_name == f"watch-{run_id[:8]}"


def test_a_run_is_judged_once_it_logs_every_key_the_metric_map_names(tracking_uri):
    """As `analyze` refuses a run without a key its metric_map names: the watcher waits for
    such a key (one that appears late), saying once which; a run that never logs one (a typo)
    is never judged nor tagged, and its end says why."""
    client = MlflowClient()
    frame = textbook()
    run_id = new_run()
    lines: list[str] = []
    watch = Watch(
        client, run_id=run_id, roles=ROLES, required=mapped_keys(METRIC_MAP), echo=lines.append
    )
    lockstep(watch, client, run_id, frame.loc[:20].drop(columns="val_loss"), pace=10, end=None)
    assert live_tags(run_id) == {} and watch.runs[run_id].changes == []
    (said,) = [line for line in lines if "of the metric_map" in line]
    assert "has not logged val_loss=val_loss" in said and "logs lr, train_loss, val_acc" in said
    lockstep(watch, client, run_id, frame.loc[21:], pace=25)
    assert live_tags(run_id)[C.GROKKING_LIVE_STATE] == "confirmed"

    typo = new_run()
    log_rows(client, typo, frame)
    wrong = METRIC_MAP.replace("=train_loss", "=train_los")
    result = CliRunner().invoke(
        watch_main, ["--run-id", typo, "--metric-map", wrong, "--interval", "0.1", "--until", "0.3"]
    )
    assert result.exit_code == 0, result.output
    assert "has not logged loss=train_los of the metric_map" in result.output
    lines.clear()
    roles = Roles.from_metric_map(wrong)
    watch = Watch(client, run_id=typo, roles=roles, required=mapped_keys(wrong), echo=lines.append)
    assert watch.poll() is True
    client.set_terminated(typo)
    assert watch.poll() is False and live_tags(typo) == {}
    assert (
        "ended FINISHED without logging loss=train_los of the metric_map: not judged" in lines[-1]
    )


def test_deleted_run_ends_the_watch_cleanly(tracking_uri):
    client = MlflowClient()
    run_id = new_run()
    lines: list[str] = []
    watch = Watch(client, run_id=run_id, roles=ROLES, echo=lines.append)
    lockstep(watch, client, run_id, textbook(n=40), pace=10, end=None)
    written = live_tags(run_id)
    client.delete_run(run_id)
    assert watch.poll() is False
    assert lines[-1] == f"watch: run {run_id} (trainer) was deleted: stopped watching it"
    client.restore_run(run_id)
    assert live_tags(run_id) == written


def test_experiment_mode_follows_new_runs_not_its_own(tracking_uri):
    client = MlflowClient()
    exp = client.create_experiment("live")
    own = new_run("watch-launcher", exp, {"mlflow.project.entryPoint": "watch"})
    other = new_run("analyze", exp, {"mlflow.source.name": "tvae-analyze"})
    first = new_run("first", exp)
    lines: list[str] = []
    watch = Watch(client, experiment_id=exp, roles=ROLES, exclude=(own,), echo=lines.append)
    frame = textbook(n=60)
    for i in range(0, 60, 10):
        log_rows(client, first, frame.iloc[i : i + 10])
        for tool in (own, other):
            log_rows(client, tool, frame.iloc[i : i + 10])
        assert watch.poll() is True
    second = new_run("second", exp)
    log_rows(client, second, frame)
    watch.poll()
    client.set_terminated(first, "FINISHED")
    watch.poll()
    assert set(watch.runs) == {first, second}
    assert live_tags(first)[C.GROKKING_LIVE_STATE] == "none"  # ended: no event
    assert live_tags(second)[C.GROKKING_LIVE_STATE] == "plateau"
    assert not live_tags(own) and not live_tags(other)
    assert watch.runs[first].done and not watch.runs[second].done


class Outage:
    """A TCP relay in front of a server: `down()` drops every connection and refuses new ones
    (what a client sees of a server that restarts), `up()` relays again."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.serving = True
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if not self.serving:
                conn.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.open += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for sock in (a, b):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def down(self) -> None:
        self.serving = False
        for sock in self.open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.open = []

    def up(self) -> None:
        self.serving = True

    def close(self) -> None:
        self.down()
        self.listener.close()


def test_through_a_real_server_that_goes_away(tmp_path, monkeypatch):
    """REST: only new rows are read (get-history-bulk-interval), and a server that goes away
    and comes back costs one line each way; the event is still raised, from every row."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # a stale pooled connection
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    with mlflow_server(tmp_path / "server") as server:
        relay = Outage(int(server.url.rsplit(":", 1)[1]))
        url = f"http://127.0.0.1:{relay.port}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        mlflow.set_tracking_uri(url)
        try:
            client = MlflowClient()
            run_id = new_run()
            lines: list[str] = []
            watch = Watch(client, run_id=run_id, roles=ROLES, echo=lines.append)
            frame = textbook(n=200)
            lockstep(watch, client, run_id, frame.iloc[:120], pace=20, end=None)
            reader = watch.runs[run_id].reader
            assert reader.path == "rest"
            relay.down()
            assert watch.poll() is True and watch.poll() is True
            relay.up()
            lockstep(watch, client, run_id, frame.iloc[120:], pace=20)
            away = [line for line in lines if "not answering" in line]
            back = [line for line in lines if "answering again" in line]
            assert len(away) == 1 and len(back) == 1, "\n".join(lines)
            assert reader.full_reads == 0  # every read after the first: only the new rows
            assert live_tags(run_id)[C.GROKKING_LIVE_STATE] == "confirmed"
            assert any("): confirmed at step" in line for line in lines), lines
            history, _ = load_history(client, run_id)
            seen = watch.runs[run_id].detector.history()
            pd.testing.assert_frame_equal(seen[history.columns], history)
        finally:
            relay.close()
            mlflow.set_tracking_uri(None)


def test_a_foreign_run_watched_without_a_metric_map_is_read_by_its_key_names(tracking_uri):
    """As `analyze` reads it: once a held-out key is logged (here after 20 epochs of training
    loss alone), the run's keys say its roles, one line says so, and what is raised live is
    what the final analysis with those roles confirms."""
    client = MlflowClient()
    frame = load_run("add53_f40_wd1").loc[:1200]
    run_id = new_run("foreign")
    lines: list[str] = []
    watch = Watch(client, run_id=run_id, roles=None, echo=lines.append)
    log_rows(client, run_id, frame.loc[:20, ["train_loss"]])
    watch.poll()
    assert not watch.runs[run_id].mapped and not any("key names" in line for line in lines)
    lockstep(watch, client, run_id, frame.loc[21:], pace=25)
    (said,) = [line for line in lines if "read by its key names" in line]
    assert 'metric_map="accuracy=val_acc,val_loss=val_loss,loss=train_loss,lr=lr,' in said
    (event,) = analyze(load_history(client, run_id)[0], ROLES_BY_NAMES).confirmed
    live = [s for s in watch.runs[run_id].changes[:-1] if s.state == "confirmed"]
    assert live and event.plateau_start <= live[0].first_epoch <= event.rise_end
    assert live_tags(run_id)[C.GROKKING_LIVE_STATE] == "confirmed"


def test_a_run_logged_without_steps_is_watched_in_the_order_logged(tracking_uri):
    """Every row at step 0 (`log_metric(key, value)`, the training loss 4 times an epoch), read
    mid-round: the watcher places the rows as `analyze` does, says so in one line, and raises
    the event the final analysis confirms. Before, it read each key's first rows only."""
    client = MlflowClient()
    frame = load_run("add53_f40_wd1").loc[:1200]
    run_id = new_run("no-steps")
    lines: list[str] = []
    watch = Watch(client, run_id=run_id, roles=None, echo=lines.append)
    t0 = int(time.time() * 1000)
    logged = without_steps(frame, batches=4, t0=t0)
    per_epoch = 2 * (3 + len(frame.columns))  # ms a logged epoch takes
    for first in range(0, len(frame), 25):  # each poll lands mid-round, after 3 of its rows
        since, upto = (t0 + (e * per_epoch + 6 if e else 0) for e in (first, first + 25))
        rows = [
            Metric(key, float(v), int(t), 0)
            for key, (_, values, stamps) in logged.items()
            for v, t in zip(values, stamps, strict=True)
            if since <= t < upto
        ]
        client.log_batch(run_id, metrics=rows)
        watch.poll()
    client.set_terminated(run_id, "FINISHED")
    assert watch.poll() is False
    (said,) = [line for line in lines if "logged without a step" in line]
    assert "one step per lr row" in said
    history = load_history(client, run_id)[0]
    assert len(history) == len(frame)
    (event,) = analyze(history, ROLES_BY_NAMES).confirmed
    live = [s for s in watch.runs[run_id].changes[:-1] if s.state == "confirmed"]
    assert live and event.plateau_start <= live[0].first_epoch <= event.rise_end
    assert live_tags(run_id)[C.GROKKING_LIVE_STATE] == "confirmed"
