"""compare: run selection and its errors, epoch alignment, table/ranking, artifacts, CLI.

Runs are created in a real temporary SQLite store with `log_batch` from synthetic histories.
Cost: ~15 s on 2 cores (most of it matplotlib rendering and MLflow store set-up).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from entrypoints.compare import main, parse_run_ids
from mlflow_plugins.analysis_writer import SOURCE_RUN_TAG
from mlflow_plugins.compare import compare_runs, load_compared_runs
from mlflow_plugins.compare_select import CompareError, select_runs
from tvae.compare import align_by_epoch

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def synthetic_history(
    epochs: list[int], jump_at: int, height: float
) -> dict[str, dict[int, float]]:
    """Contract-like curves: coverage/Q rise by `height` at `jump_at`, hierarchy and loss fall."""
    out: dict[str, dict[int, float]] = {}
    for e in epochs:
        up = 1.0 if e >= jump_at else 0.0
        out.setdefault("eval/coverage", {})[e] = 0.6 + height * up + 0.001 * e
        out.setdefault("eval/hierarchy_B", {})[e] = -0.5 - 0.3 * up * height
        out.setdefault("eval/Q", {})[e] = 1.0 + 2 * height * up
        out.setdefault("train/loss", {})[e] = 2.0 / (1 + e) + 0.01
        out.setdefault("perf/samples_per_sec", {})[e] = 5000.0 + e
    return out


def log_run(
    client: MlflowClient,
    experiment_id: str,
    name: str,
    history: dict[str, dict[int, float]],
    tags: dict[str, str] | None = None,
) -> str:
    """A finished run holding `history` (step = epoch) and `tags`."""
    run = client.create_run(experiment_id, run_name=name, tags=tags or {})
    metrics = [
        Metric(key, float(v), 1_700_000_000_000 + step, step)
        for key, series in history.items()
        for step, v in series.items()
    ]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run.info.run_id, metrics=metrics[i : i + 1000])
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def analysed(tier: str, first_epoch: int | None, severity: str = "standard") -> dict[str, str]:
    tags = {"tier": tier, "grokking.severity": severity if first_epoch else "none"}
    tags["grokking.events"] = "1" if first_epoch else "0"
    if first_epoch:
        tags["grokking.first_epoch"] = str(first_epoch)
    return tags


@pytest.fixture
def store(tracking_uri):
    client = MlflowClient(tracking_uri)
    exp = client.create_experiment("cmp")
    return client, exp


def test_parse_run_ids_keeps_order_and_drops_blanks():
    assert parse_run_ids(" b, a,,b ,") == ["b", "a"]
    assert parse_run_ids("") == []


def test_runs_of_different_lengths_and_irregular_steps_line_up_by_epoch(store):
    client, exp = store
    dense = log_run(
        client, exp, "dense", synthetic_history(list(range(1, 11)), 5, 0.2), analysed("Good", 5)
    )
    sparse = log_run(
        client, exp, "sparse", synthetic_history([1, 4, 9, 16, 25], 9, 0.3), analysed("Good", 9)
    )
    runs = select_runs(client, [dense, sparse]).runs
    compared = load_compared_runs(client, runs, analyzer=_no_analysis)
    aligned = align_by_epoch(compared, "eval/Q")
    assert list(aligned.index) == sorted(set(range(1, 11)) | {16, 25})
    assert aligned.loc[25, "sparse"] == pytest.approx(1.6)
    assert np.isnan(aligned.loc[25, "dense"]) and np.isnan(aligned.loc[2, "sparse"])
    assert aligned.loc[5, "dense"] == pytest.approx(1.4) and aligned.loc[4, "sparse"] == 1.0


def _no_analysis(history, system, status):  # only for runs that already carry tags
    raise AssertionError("a stored analysis must be used, not a new one")


def test_table_ranks_by_tier_then_quality_and_reports_stored_events(store):
    client, exp = store
    good = log_run(
        client, exp, "good", synthetic_history(list(range(1, 31)), 12, 0.3), analysed("Good", 12)
    )
    best = log_run(
        client,
        exp,
        "excellent",
        synthetic_history(list(range(1, 41)), 20, 0.35),
        analysed("Excellent", 20, "major"),
    )
    weak = log_run(
        client, exp, "weak", synthetic_history(list(range(1, 21)), 99, 0.0), analysed("None", None)
    )
    result = compare_runs(
        client, select_runs(client, [good, weak, best]).runs, analyzer=_no_analysis, log=False
    )
    table = result.table
    assert list(table["run"]) == ["excellent", "good", "weak"]
    assert list(table["rank"]) == [1, 2, 3]
    row = table.set_index("run").loc["excellent"]
    assert row["events"] == 1 and row["event_epochs"] == "20" and row["severity"] == "major"
    assert row["epochs"] == 40 and row["analysis"] == "stored"
    assert row["best_Q"] == pytest.approx(1.7) and row["final_loss"] == pytest.approx(2 / 41 + 0.01)
    assert row["best_hierarchy_B"] == pytest.approx(-0.5 - 0.3 * 0.35)
    assert table.set_index("run").loc["weak", "events"] == 0
    assert result.ranking[0].startswith(" 1. excellent [Excellent]")
    assert "no grokking" in result.ranking[2]


def test_compare_logs_plots_table_and_html_to_its_own_run_and_leaves_runs_alone(store, tmp_path):
    client, exp = store
    a = log_run(
        client, exp, "a", synthetic_history(list(range(1, 21)), 8, 0.3), analysed("Good", 8)
    )
    b = log_run(
        client, exp, "b", synthetic_history(list(range(1, 31, 2)), 15, 0.2), analysed("Minimal", 15)
    )
    before = {r: client.get_run(r).data for r in (a, b)}
    result = compare_runs(client, select_runs(client, [a, b]).runs, analyzer=_no_analysis)
    own = client.get_run(result.compare_run_id)
    assert own.info.experiment_id == exp and own.info.status == "FINISHED"
    assert set(own.data.tags["compare.runs"].split(",")) == {a, b}
    listed = {f.path for f in client.list_artifacts(result.compare_run_id, "compare")}
    expected = {
        "coverage.png",
        "hierarchy_B.png",
        "Q.png",
        "loss.png",
        "table.csv",
        "table.html",
        "ranking.txt",
    }
    assert listed == {f"compare/{n}" for n in expected}
    local = client.download_artifacts(result.compare_run_id, "compare", str(tmp_path / "dl"))
    csv = pd.read_csv(f"{local}/table.csv")
    assert list(csv["run_id"]) == [a, b] and list(csv["tier"]) == ["Good", "Minimal"]
    page = open(f"{local}/table.html").read()
    assert page.startswith("<!DOCTYPE html>") and '<span class="Minimal">Minimal</span>' in page
    assert open(f"{local}/coverage.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    for run_id, data in before.items():
        after = client.get_run(run_id).data
        assert after.tags == data.tags and after.metrics == data.metrics
        assert client.list_artifacts(run_id) == []


def test_runs_that_logged_nan_are_compared(store):
    """Two seeds that diverged alike (the training loss logged as NaN at the same steps): their
    histories carry the same logged-NaN ranges, and the overlays line them up."""
    client, exp = store
    runs = []
    for name in ("s1", "s2"):
        history = synthetic_history(list(range(1, 21)), 8, 0.3)
        history["train/loss"].update({19: float("nan"), 20: float("nan")})
        runs.append(log_run(client, exp, name, history, analysed("Good", 8)))
    selected = select_runs(client, runs).runs
    result = compare_runs(client, selected, analyzer=_no_analysis)
    listed = {f.path for f in client.list_artifacts(result.compare_run_id, "compare")}
    assert "compare/loss.png" in listed
    compared = load_compared_runs(client, selected, analyzer=_no_analysis)
    aligned = align_by_epoch(compared, "train/loss")
    assert aligned.loc[19:].isna().all().all() and aligned.loc[:18].notna().all().all()


def test_experiment_and_filter_select_only_matching_training_runs(store):
    client, exp = store
    good = log_run(client, exp, "g", synthetic_history([1, 2, 3], 2, 0.2), analysed("Good", 2))
    log_run(client, exp, "m", synthetic_history([1, 2, 3], 2, 0.1), analysed("Minimal", 2))
    # an analyze run of `good` carries the same tags: a search must not take it for training
    log_run(
        client,
        exp,
        "analyze-g",
        {"analysis/seconds": {0: 1.0}},
        {**analysed("Good", 2), "analysis.source_run_id": good},
    )
    runs = select_runs(client, experiment="cmp", filter_string="tags.tier = 'Good'").runs
    assert [r.info.run_id for r in runs] == [good]
    assert len(select_runs(client, experiment="cmp").runs) == 2
    found = select_runs(client, filter_string="tags.tier = 'Good'")
    assert [r.info.run_id for r in found.runs] == [good] and found.skipped == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"run_ids": ["0" * 32]}, "unknown run id(s): " + "0" * 32),
        ({"experiment": "nope"}, "no experiment named 'nope'"),
        ({"experiment": "cmp", "filter_string": "tags.tier = 'Exceptional'"}, "no training runs"),
        ({"experiment": "cmp", "filter_string": "tags.tier =="}, "--filter:"),
        ({}, "nothing to compare"),
        ({"run_ids": ["x"], "experiment": "cmp"}, "give one of --runs, --experiment, --sweep"),
        ({"sweep": "0" * 32}, "--sweep: unknown run id(s): " + "0" * 32),
    ],
)
def test_bad_selections_fail_with_one_clear_line(store, kwargs, message):
    client, exp = store
    log_run(client, exp, "only", synthetic_history([1, 2], 2, 0.1), analysed("Good", 2))
    with pytest.raises(CompareError) as err:
        select_runs(client, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_runs_from_other_experiments_without_compared_metrics_are_refused(store):
    client, exp = store
    ours = log_run(client, exp, "ours", synthetic_history([1, 2], 2, 0.1), analysed("Good", 2))
    other = client.create_experiment("sklearn")
    theirs = log_run(client, other, "theirs", {"rmse": {0: 0.3}})
    with pytest.raises(CompareError, match=f"--runs: run.s. log none of eval/coverage.*{theirs}"):
        select_runs(client, [ours, theirs])
    bare = client.create_run(other).info.run_id
    with pytest.raises(CompareError, match=f"log none of .*{bare}"):
        select_runs(client, [ours, bare])
    # one of this tool's own runs named by mistake: said for what it is
    tool = log_run(client, exp, "analyze-ours", {}, {SOURCE_RUN_TAG: ours})
    with pytest.raises(CompareError) as err:
        select_runs(client, [ours, tool])
    assert str(err.value) == (
        f"--runs: run '{tool}' is an analyze run (of training run {ours}), not a training run"
    )


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """The console script in-process: exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as done:
        main(list(args))
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


def test_cli_prints_ranking_and_rejects_bad_input_without_logging(store, capsys):
    client, exp = store
    a = log_run(
        client, exp, "alpha", synthetic_history(list(range(1, 6)), 3, 0.3), analysed("Excellent", 3)
    )
    b = log_run(
        client, exp, "beta", synthetic_history(list(range(1, 6)), 3, 0.1), analysed("Minimal", 3)
    )
    main(["--runs", f"{b},{a}", "--experiment", "", "--filter", ""])  # returns on success
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith(" 1. alpha [Excellent]") and lines[2].startswith(
        " 2. beta [Minimal]"
    )
    n_runs = len(client.search_runs([exp]))
    code, _, err = run_cli(capsys, "--runs", "", "--experiment", "cmp", "--filter", "tags.x = 'y'")
    assert code == 2
    assert err.strip().splitlines() == [
        "error: no training runs in experiment 'cmp' matching filter \"tags.x = 'y'\""
    ]
    assert len(client.search_runs([exp])) == n_runs
    code, _, err = run_cli(capsys, "--bogus", "x")
    (line,) = err.strip().splitlines()
    assert code == 2 and line.startswith("error: No such option") and "--bogus" in line


def test_help_documents_the_choice_for_runs_not_yet_analysed():
    out = subprocess.run(
        [sys.executable, "-m", "entrypoints.compare", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "ON THE FLY" in out and "nothing is written to those runs" in out


def grokking_history(jumps: tuple[int, ...], epochs: int = 60) -> dict[str, dict[int, float]]:
    """The training loss fits in five epochs; then plateaus, each ended by a 2-epoch jump in
    coverage/hierarchy/Q with the loss falling."""
    rng = np.random.default_rng(sum(jumps))
    n = len(jumps)
    out: dict[str, dict[int, float]] = {}
    for e in range(1, epochs + 1):
        up = sum(min(max((e - j) / 2, 0.0), 1.0) for j in jumps) / n
        fitting = 2.0 * max(0.0, 1.0 - (e - 1) / 5)
        out.setdefault("train/loss", {})[e] = 1.0 - 0.5 * up + fitting + rng.normal(0, 1e-5)
        out.setdefault("eval/coverage", {})[e] = (
            0.99 - 0.19 * n + 0.19 * n * up + rng.normal(0, 1e-4)
        )
        out.setdefault("eval/hierarchy_B", {})[e] = -0.55 - 0.27 * up
        out.setdefault("eval/Q", {})[e] = 1.2 + 1.0 * up
        out.setdefault("opt/lr", {})[e] = 1e-3
    return out


def test_runs_not_analysed_are_analysed_in_memory_and_left_untouched(store):
    from mlflow_plugins.history import load_history
    from tvae.analysis import analyze

    client, exp = store
    fresh = log_run(client, exp, "fresh", grokking_history((30,)))
    stored = log_run(
        client, exp, "stored", synthetic_history(list(range(1, 21)), 8, 0.1), analysed("Minimal", 8)
    )
    before = client.get_run(fresh).data
    result = compare_runs(client, select_runs(client, [stored, fresh]).runs)
    expected = analyze(load_history(client, fresh)[0])  # the engine itself, on the same history
    assert expected.confirmed, "the fixture history must hold a grokking event"
    row = result.table.set_index("run").loc["fresh"]
    assert row["analysis"] == "on the fly"
    assert row["tier"] == expected.tags()["tier"]
    assert row["severity"] == expected.tags()["grokking.severity"]
    assert row["event_epochs"] == ",".join(
        str(int(c.breakthrough_epoch)) for c in expected.confirmed
    )
    assert result.table.set_index("run").loc["stored", "analysis"] == "stored"
    after = client.get_run(fresh)
    assert after.data.tags == before.tags and "tier" not in after.data.tags
    assert client.list_artifacts(fresh) == []
    everything = {r.info.run_id for r in client.search_runs([exp])}
    assert everything == {fresh, stored, result.compare_run_id}  # no analyze run was made


def test_stored_analysis_events_come_from_the_report_the_analyzer_wrote(store, tmp_path):
    from mlflow_plugins.analysis_writer import render_artifacts, write_training_run
    from mlflow_plugins.history import load_history
    from tvae.analysis import analyze

    client, exp = store
    run_id = log_run(client, exp, "grokked", grokking_history((30, 70), epochs=100))
    report = analyze(load_history(client, run_id)[0])
    # two events: the tags alone (grokking.first_epoch) could not give the second epoch
    assert len(report.confirmed) == 2, report.summary()
    folder = tmp_path / "analysis"
    render_artifacts(report.to_dict(), {}, folder)
    write_training_run(client, run_id, folder, report.tags())  # as `analyze` stores it
    result = compare_runs(
        client, select_runs(client, [run_id]).runs, analyzer=_no_analysis, log=False
    )
    row = result.table.iloc[0]
    assert row["analysis"] == "stored" and row["tier"] == report.tags()["tier"]
    assert row["event_epochs"] == ",".join(str(int(c.breakthrough_epoch)) for c in report.confirmed)
    assert row["events"] == len(report.confirmed)


def test_table_and_page_need_no_mlflow_and_escape_what_runs_are_called():
    from tvae.compare import ComparedRun, RunAnalysis, build_table, ranking_lines, table_html

    def item(name: str, tier: str, q: float) -> ComparedRun:
        history = pd.DataFrame({"eval/Q": [q - 0.5, q], "eval/coverage": [np.nan, 0.9]})
        history.index = pd.Index([1, 2], name="epoch")
        return ComparedRun(name, name, "FINISHED", np.nan, history,
                           RunAnalysis(tier, [], "none", "stored"), label=name)  # fmt: skip

    runs = [item("<b>x</b>", "Good", 1.0), item("odd", "Custom", 9.0), item("top", "Good", 2.0)]
    table = build_table(runs)
    assert list(table["run"]) == ["top", "<b>x</b>", "odd"]  # an unknown tier ranks last
    assert table.loc[0, "best_coverage"] == pytest.approx(0.9) and np.isnan(table.loc[0, "wall_s"])
    assert ranking_lines(table)[0] == (
        " 1. top [Good] Q=2 hierarchy_B=- coverage=0.9 no grokking; 2 epochs"
    )
    page = table_html(table, "t")
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page
    assert '<span class="Good">Good</span>' in page and "<td>2 / 2</td>" in page


def test_a_sweeps_runs_are_grouped_by_config_with_mean_and_spread_over_seeds(store, tmp_path):
    """`--sweep` takes the training runs nested under the parent (not its analyze runs, not
    other runs); each trial's seeds make one config row and one band per metric."""
    client, exp = store
    parent = client.create_run(exp, run_name="sweep-s").info.run_id
    heights = {(0, 0): 0.1, (0, 1): 0.3, (1, 0): 0.25, (1, 1): 0.25}
    ids = {}
    for (trial, seed), height in heights.items():
        tags = {"mlflow.parentRunId": parent, "sweep.study": "s", "sweep.trial": str(trial)}
        tags.update({"sweep.seed": str(seed), **analysed("Good" if trial else "Minimal", 8)})
        history = synthetic_history(list(range(1, 21)), 8, height)
        ids[trial, seed] = log_run(client, exp, f"t{trial}-s{seed}", history, tags)
    nested_tool = {"mlflow.parentRunId": parent, "analysis.source_run_id": ids[0, 0]}
    log_run(client, exp, "analyze-x", synthetic_history([1, 2], 2, 0.1), nested_tool)
    log_run(client, exp, "outside", synthetic_history([1, 2], 2, 0.1), analysed("Good", 2))

    found = select_runs(client, sweep=parent)
    assert sorted(r.info.run_id for r in found.runs) == sorted(ids.values())
    result = compare_runs(client, found.runs, analyzer=_no_analysis)
    listed = {f.path for f in client.list_artifacts(result.compare_run_id, "compare")}
    for name in ("coverage", "hierarchy_B", "Q", "loss"):
        assert f"compare/{name}_by_config.png" in listed
    local = client.download_artifacts(result.compare_run_id, "compare", str(tmp_path / "dl"))
    configs = pd.read_csv(f"{local}/configs.csv").set_index("config")
    assert list(configs.index) == ["s trial 1", "s trial 0"]  # best mean Q first
    assert list(configs["seeds"]) == [2, 2] and list(configs["grokking"]) == ["2/2", "2/2"]
    q0 = [1.0 + 2 * heights[0, s] for s in (0, 1)]  # each seed's best eval/Q
    assert configs.loc["s trial 0", "best_Q_mean"] == pytest.approx(sum(q0) / 2)
    assert configs.loc["s trial 0", "best_Q_std"] == pytest.approx(abs(q0[0] - q0[1]) / 2)
    assert configs.loc["s trial 1", "best_Q_std"] == pytest.approx(0.0)
    assert configs.loc["s trial 0", "tiers"] == "Minimal x2"


def test_runs_differing_only_in_seed_share_a_config():
    from tvae.compare.groups import config_key

    a = config_key("tiny-s3-lr8e-4", {"train.seed": "3", "train.lr": "0.0008"}, {})
    b = config_key("tiny-s4-lr8e-4", {"train.seed": "4", "train.lr": "0.0008"}, {})
    c = config_key("tiny-s3-lr1e-3", {"train.seed": "3", "train.lr": "0.001"}, {})
    assert a == b and a[1].startswith("tiny-lr8e-4 [") and c[0] != a[0]
