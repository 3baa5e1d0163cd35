"""Concurrent analyses of one run register it once (issue 14.5), in real separate processes.

Four processes import everything, wait at a start line, then each runs `analyze_run` on the same
trained run against one store: all four pass the "already registered?" check before any of them
has created a version, which is the race that used to leave one version per analysis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from test_analyze_registry import NAME, train_smoke_run

ANALYSES = 4

# One analysis per process; "ready" once imported, then all go together on the start file.
DRIVER = """
import json, sys, time
from pathlib import Path
from mlflow.tracking import MlflowClient
from mlflow_plugins.analyze_run import analyze_run
import mlflow_plugins.evaluator, torch  # the re-evaluation's imports, before the start line

run_id, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.005)
outcome = analyze_run(MlflowClient(), run_id, min_tier="None")
print(json.dumps(outcome.registry.to_dict()))
"""


def _analyze_concurrently(run_id: str, folder: Path) -> list[dict]:
    folder.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DRIVER, run_id, str(folder / f"ready{i}"), str(folder / "go")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(ANALYSES)
    ]
    deadline = time.monotonic() + 120
    while len(list(folder.glob("ready*"))) < ANALYSES and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    (folder / "go").touch()
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        outcomes.append(json.loads(out.strip().splitlines()[-1]))
    return outcomes


@pytest.mark.slow
def test_four_concurrent_analyses_register_a_run_exactly_once(tracking_uri, tmp_path):
    client = MlflowClient()
    run_id = train_smoke_run(client, tmp_path / "work")

    outcomes = _analyze_concurrently(run_id, tmp_path / "race")

    versions = client.search_model_versions(f"name = '{NAME}'")
    assert [v.run_id for v in versions] == [run_id], outcomes
    (kept,) = versions
    actions = sorted(o["action"] for o in outcomes)
    said = [(o["action"], o["reason"]) for o in outcomes]
    assert actions == ["already_registered"] * (ANALYSES - 1) + ["registered"], said
    assert {o["version"] for o in outcomes} == {kept.version}
    # the race really happened: some analysis created a version and then gave it up
    assert any("deleted" in o["reason"] for o in outcomes), outcomes
    for alias in ("candidate", "champion"):
        assert client.get_model_version_by_alias(NAME, alias).version == kept.version
    (winner,) = [o for o in outcomes if o["action"] == "registered"]
    assert set(winner["aliases"]) == {"candidate", "champion"}
    assert all(not o["aliases"] for o in outcomes if o is not winner)
