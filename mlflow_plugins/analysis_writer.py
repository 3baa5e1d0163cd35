"""Put an analysis onto MLflow runs: tags + `analysis/report.json` + PNG plots.

Writing *replaces* the previous analysis of the training run instead of piling up: tags of the
contract that the new report does not set (e.g. `grokking.first_epoch` once no event is
confirmed) are deleted, artifacts of the same name are overwritten and stale files under
`analysis/` are removed where the artifact store can delete. Artifacts go first and tags last,
so the tags (what the UI shows and what `analysis.run_id` points at) only ever describe a
report that is already stored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tvae.contract import ANALYSIS_RUN_ID, ANALYSIS_TAGS

if TYPE_CHECKING:  # MLflow is imported only where it is used, so the plot half stays light
    from mlflow.tracking import MlflowClient

ARTIFACT_DIR = "analysis"
REPORT_FILE = "report.json"
SOURCE_RUN_TAG = "analysis.source_run_id"
COMPARE_RUN_TAG = "compare.runs"  # on compare runs: the runs compared
TOOL_ENTRY_POINTS = ("analyze", "compare", "promote", "watch")
ANALYZE_SOURCE = "tvae-analyze"  # the source name of the analyze runs `analyze_run` creates
TOOL_SOURCES = (ANALYZE_SOURCE, "tvae-compare", "tvae-promote", "tvae-watch")  # console scripts
RESULT_PREFIX = "result."  # the analyze run's copy of the contract tags


def tool_run(tags: Mapping[str, str]) -> str | None:
    """What a run is when it is one of this tool's own (analyze, compare, promote, watch),
    else None: never a training run."""
    from mlflow.utils.mlflow_tags import MLFLOW_PROJECT_ENTRY_POINT, MLFLOW_SOURCE_NAME

    if SOURCE_RUN_TAG in tags:
        return f"an analyze run (of training run {tags[SOURCE_RUN_TAG]})"
    if COMPARE_RUN_TAG in tags:
        return "a compare run"
    if tags.get(MLFLOW_PROJECT_ENTRY_POINT) in TOOL_ENTRY_POINTS:
        return f"a `mlflow run -e {tags[MLFLOW_PROJECT_ENTRY_POINT]}` run"
    source = Path(tags.get(MLFLOW_SOURCE_NAME, "")).name  # MLflow stores the path
    if source in TOOL_SOURCES:
        return f"a `{source}` run"
    return None


def _json_safe(value: Any) -> Any:
    """NaN/inf are not JSON; write them as strings so report.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalars
        return _json_safe(value.item())
    return value


def save_figures(figures: Mapping[str, Any], folder: Path) -> None:
    """One PNG per figure into `folder` (created), closing the figures. Needs no MLflow."""
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        fig.savefig(folder / (name if name.endswith(".png") else f"{name}.png"), dpi=100)
        plt.close(fig)


def write_report(report_dict: dict[str, Any], folder: Path) -> None:
    """report.json (strict JSON: NaN/inf as strings) into `folder` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_json_safe(report_dict), indent=2, allow_nan=False)
    (folder / REPORT_FILE).write_text(text + "\n")


def render_artifacts(report_dict: dict[str, Any], figures: Mapping[str, Any], folder: Path) -> None:
    """report.json plus one PNG per figure into `folder`: what `write_training_run` uploads."""
    save_figures(figures, folder)
    write_report(report_dict, folder)


def _delete_stale_artifacts(client: MlflowClient, run_id: str, keep: set[str]) -> list[str]:
    """Remove files under analysis/ that the new analysis did not write; best effort."""
    stale = [
        f.path
        for f in client.list_artifacts(run_id, ARTIFACT_DIR)
        if not f.is_dir and Path(f.path).name not in keep
    ]
    if not stale:
        return []
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(client.get_run(run_id).info.artifact_uri)
    removed = []
    for path in stale:
        try:
            repo.delete_artifacts(path)
            removed.append(path)
        except Exception:  # noqa: BLE001 - stores without delete support keep the old file
            pass
    return removed


def replace_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    """Set `tags` on the run and delete contract tags that the new analysis does not set."""
    from mlflow.entities import RunTag

    current = client.get_run(run_id).data.tags
    for key in ANALYSIS_TAGS:
        if key in current and key not in tags:
            client.delete_tag(run_id, key)
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def write_training_run(
    client: MlflowClient,
    run_id: str,
    folder: Path,
    tags: Mapping[str, Any],
) -> None:
    """Replace the analysis stored on the training run with the rendered `folder` and `tags`."""
    client.log_artifacts(run_id, str(folder), ARTIFACT_DIR)
    _delete_stale_artifacts(client, run_id, {p.name for p in folder.iterdir()})
    replace_tags(client, run_id, tags)


def write_analysis(
    client: MlflowClient,
    training_run_id: str,
    analyze_run_id: str,
    folder: Path,
    tags: Mapping[str, Any],
) -> None:
    """Store one rendered analysis `folder` on the training run (replacing) and the analyze run."""
    from mlflow.entities import RunTag

    write_training_run(client, training_run_id, folder, {**tags, ANALYSIS_RUN_ID: analyze_run_id})
    client.log_artifacts(analyze_run_id, str(folder), ARTIFACT_DIR)
    # prefixed, so a UI filter such as tags.tier = 'Good' lists training runs only
    client.log_batch(
        analyze_run_id,
        tags=[RunTag(SOURCE_RUN_TAG, training_run_id)]
        + [RunTag(f"{RESULT_PREFIX}{k}", str(v)) for k, v in tags.items()],
    )
