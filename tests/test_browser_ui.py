"""The MLflow UI, rendered by a real headless Chromium, shows what our runs promise.

A real `mlflow server` (temp SQLite, proxied temp artifacts, one worker) receives two smoke
trainings (2 epochs each), their analyses and a comparison through the real entry points
(compare via `mlflow run` with a quoted filter). Then the React UI must show: the `tier` tag
in the runs table (per run, equal to the stored tag); the contract metrics of both runs
charted against step (= epoch) in the chart view; the compare-runs view with parallel
coordinates and every contract metric; the `analysis/` plots in the training run's artifact
view (one previewed); and the compare run's HTML table rendered in the artifact viewer.
Screenshots go to screenshots/browser_ui/ (printed). Cost: ~85 s on 2 cores, mostly training.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from mlflow_server import mlflow_server

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = REPO / "screenshots" / "browser_ui"
UI_TIMEOUT_MS = 120_000  # generous: a loaded 2-core machine renders slowly
# Names of the runs drawn in the chart titled `key`, sorted: plotly traces with points, once the
# card's SVG has a drawn line (a run has a raw and a smoothed trace; runs without the metric,
# such as the analyze and compare runs, have none). By name, not colour: the UI hashes run ids
# into a 29-colour palette, so two runs can share a colour.
DRAWN_RUNS_JS = """key => {
  const title = [...document.querySelectorAll('*')]
    .find(e => e.children.length === 0 && e.textContent.trim() === key);
  let card = title;
  while (card && !card.querySelector('svg.main-svg')) card = card.parentElement;
  const plot = card && card.querySelector('.js-plotly-plot');
  if (!plot || !plot.data) return [];
  const drawn = [...card.querySelectorAll('path.js-line')]
    .some(p => (p.getAttribute('d') || '').length > 2);
  if (!drawn) return [];
  return [...new Set(plot.data.filter(t => (t.x || []).length > 0).map(t => t.name))].sort();
}"""

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}"),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None,
        reason="the playwright Python package is not installed",
    ),
]


def _run_all(commands: list[list[str]], env: dict[str, str], cwd: Path, timeout: int) -> list[str]:
    """Run commands concurrently (2 cores, 2 runs); fail with their output if any fails."""
    procs = [
        subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
        for cmd in commands
    ]  # fmt: skip
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    for cmd, proc, out in zip(commands, procs, outputs, strict=True):
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{out[-3000:]}"
    return outputs


def _env(url: str) -> dict[str, str]:
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": url,
        "MLFLOW_REGISTRY_URI": url,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
    }


def _open(page, url: str, ready_text: str) -> None:
    """Go to a UI route and wait until the React app has rendered `ready_text`."""
    page.goto(url)
    page.get_by_text(ready_text, exact=True).first.wait_for(timeout=UI_TIMEOUT_MS)
    close = page.get_by_role("button", name="Close")  # the assistant side panel, when shown
    if close.count():
        close.first.click()


def _scroll_to_text(page, text: str) -> None:
    """Scroll the compare view's metrics table until `text` is rendered: it is a virtualised
    grid 300 px high that renders only the rows in view (`train/loss` sorts last)."""
    target = page.get_by_text(text, exact=True).first
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    while not target.count():
        assert time.monotonic() < deadline, f"{text!r} never rendered on {page.url}"
        page.evaluate(
            "() => document.querySelectorAll('.ReactVirtualized__Grid')"
            ".forEach(g => { g.scrollTop += 135; })"
        )
        page.wait_for_timeout(250)
    target.wait_for(timeout=UI_TIMEOUT_MS)


def test_ui_shows_tier_column_and_analysis_plots(tmp_path):
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import sync_playwright

    from mlflow_plugins.compare_select import CompareError, select_runs

    SHOTS.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {SHOTS}")
    with mlflow_server(tmp_path / "server") as server:
        env = _env(server.url)
        config = str(REPO / "configs" / "smoke.yaml")
        # two epochs keep the test short; the experiment exists first so the runs do not race
        train = [sys.executable, "-m", "entrypoints.train", "--config", config, "--epochs", "2"]
        MlflowClient(server.url).create_experiment("smoke")
        t0 = time.monotonic()
        _run_all([train + ["--seed", "0"], train + ["--seed", "1"]], env, tmp_path, 400)
        print(f"trained 2 runs: {time.monotonic() - t0:.0f} s")

        client = MlflowClient(server.url)
        exp = client.get_experiment_by_name("smoke")
        runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
        seen = [(r.info.run_name, r.info.status) for r in runs]
        assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs), seen
        ids = [r.info.run_id for r in runs]
        analyze = [sys.executable, "-m", "entrypoints.analyze", "--register", "false", "--run-id"]
        t0 = time.monotonic()
        _run_all([analyze + [i] for i in ids], env, tmp_path, 300)
        print(f"analysed: {time.monotonic() - t0:.0f} s")
        t0 = time.monotonic()
        # compare through `mlflow run`, with a quoted filter: only the 2 training runs match
        # (the analyze runs carry `tier` too and must be left out)
        analysed = "tags.tier LIKE '%' and attributes.status = 'FINISHED'"
        compare = [
            sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local",
            "--experiment-name", "smoke", "-e", "compare",
            "-P", "experiment=smoke", "-P", f"filter={analysed}",
        ]  # fmt: skip
        compare_out = _run_all([compare], env, tmp_path, 300)[0]
        print(f"compared: {time.monotonic() - t0:.0f} s")

        training = {i: client.get_run(i) for i in ids}
        tiers = {i: training[i].data.tags["tier"] for i in ids}
        names = {i: training[i].info.run_name for i in ids}
        plots = sorted(
            Path(f.path).name
            for f in client.list_artifacts(ids[0], "analysis")
            if f.path.endswith(".png")
        )
        assert plots, "analyze logged no analysis/*.png plots"
        compare_id = next(
            line.split()[3].rstrip(":")
            for line in compare_out.splitlines()
            if line.startswith("Logged to run ")
        )
        assert set(client.get_run(compare_id).data.tags["compare.runs"].split(",")) == set(ids)
        with pytest.raises(CompareError, match="unknown run id"):  # 404 over REST, not a crash
            select_runs(client, [ids[0], "0" * 32])
        eid = exp.experiment_id

        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
            )
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            try:
                # Runs table: add the `tier` tag column through the Columns menu, as a user would.
                runs_url = f"{server.url}/#/experiments/{eid}/runs?workflowType=machine_learning"
                _open(page, runs_url, names[ids[0]])
                page.get_by_role("button", name="Columns", exact=True).click()
                page.get_by_placeholder("Search columns").fill("tier")
                page.locator('span[title="tier"]').first.click()
                page.keyboard.press("Escape")
                page.get_by_role("columnheader", name="tier").first.wait_for()
                for run_id in ids:
                    cell = page.locator(f'[row-id="{run_id}"] [col-id="tags.`tier`"]')
                    cell.wait_for(timeout=UI_TIMEOUT_MS)
                    assert cell.inner_text().strip() == tiers[run_id]
                page.screenshot(path=str(SHOTS / "runs_table_tier.png"))

                # Chart view: the contract metrics of both runs, epoch (step) on the x-axis.
                _open(page, runs_url + "&compareRunsMode=CHART", names[ids[0]])
                search = page.get_by_placeholder("Search metric charts")
                for key in ("eval/coverage", "eval/hierarchy_B", "eval/Q", "train/loss"):
                    search.fill(key)
                    page.get_by_text(key, exact=True).first.wait_for(timeout=UI_TIMEOUT_MS)
                    page.wait_for_function(
                        f"([key, want]) => ({DRAWN_RUNS_JS})(key).join() === want.join()",
                        arg=[key, sorted(names.values())],
                        timeout=UI_TIMEOUT_MS,
                    )
                    assert page.get_by_text("Step", exact=True).count() >= 1
                search.fill("eval/")
                page.get_by_text("eval/Q", exact=True).first.wait_for(timeout=UI_TIMEOUT_MS)
                page.wait_for_timeout(1500)  # let the filtered grid settle for the screenshot
                page.screenshot(path=str(SHOTS / "chart_view_contract_metrics.png"))

                # Compare view of the two runs (what "Compare" opens): parallel coordinates with a
                # differing param preselected, and every contract metric in the metrics table.
                cmp_runs = f"runs={quote(json.dumps(ids))}&experiments={quote(json.dumps([eid]))}"
                _open(
                    page,
                    f"{server.url}/#/compare-runs?{cmp_runs}",
                    "Parallel Coordinates Plot",
                )
                page.locator("svg.main-svg").first.wait_for(timeout=UI_TIMEOUT_MS)
                for key in ("eval/coverage", "eval/hierarchy_B", "eval/Q", "train/loss"):
                    _scroll_to_text(page, key)
                page.screenshot(path=str(SHOTS / "compare_runs_view.png"), full_page=True)

                # Training run's artifact view: analysis/ lists every plot; one previews.
                art_url = f"{server.url}/#/experiments/{eid}/runs/{ids[0]}/artifacts"
                _open(page, art_url, "analysis")
                page.get_by_text("analysis", exact=True).first.click()
                for name in plots:
                    page.get_by_text(name, exact=True).first.wait_for(timeout=UI_TIMEOUT_MS)
                page.get_by_text(plots[0], exact=True).first.click()
                page.get_by_text(f"analysis/{plots[0]}", exact=True).wait_for()
                page.wait_for_function(  # the PNG was fetched through the server and decoded
                    "() => [...document.images].some(i => i.complete && i.naturalWidth > 200)",
                    timeout=UI_TIMEOUT_MS,
                )
                page.screenshot(path=str(SHOTS / "training_run_analysis_artifacts.png"))

                # Compare run: its HTML table renders in the artifact viewer's frame.
                cmp_url = f"{server.url}/#/experiments/{eid}/runs/{compare_id}/artifacts"
                _open(page, cmp_url, "compare")
                page.get_by_text("compare", exact=True).first.click()
                page.get_by_text("table.html", exact=True).first.click()
                frame = page.frame_locator("iframe").first
                for run_id in ids:
                    frame.get_by_text(names[run_id], exact=True).first.wait_for(
                        timeout=UI_TIMEOUT_MS
                    )
                page.screenshot(path=str(SHOTS / "compare_table_html.png"))
            except Exception:
                page.screenshot(path=str(SHOTS / "failure.png"))
                raise
            finally:
                browser.close()
