"""Model Registry rules (DESIGN.md): register once per run, `candidate` and `champion` aliases.

`candidate` always points at the newest registered version. `champion` moves only to a version
that is strictly better: higher Q, then (on a tie) lower hierarchy_B, then higher coverage.
Every alias move is written as version tags with its reason, so the registry itself tells why a
version holds (or lost) an alias. Stages are deprecated and never used.

"Register once per run" holds under concurrent analyses too: see `keep_first_version`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_plugins.store_writes import is_not_found
from tvae import contract as C
from tvae.analysis.tiers import TIER_ORDER

DEFAULT_MODEL_NAME = "TernaryVAE"
CANDIDATE = "candidate"
CHAMPION = "champion"
VALUE_KEYS = ("coverage", "hierarchy_B", "Q", "richness")
# issue 18's latent yardstick: version tags too, from the re-evaluation when it has them, else
# as logged at the model's step (the pyfunc evaluator computes the radius metrics only)
LATENT_VALUE_KEYS = tuple(k.removeprefix("eval/") for k in C.LATENT_EVAL_KEYS)
AWAIT_CREATION_SECONDS = 60


@dataclass
class RegistryOutcome:
    """What the registry step did, for the report and the printed summary."""

    action: str  # registered | already_registered | skipped | blocked
    reason: str
    model_name: str = DEFAULT_MODEL_NAME
    version: str | None = None
    model_uri: str | None = None
    evaluated: dict[str, float] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> why it moved

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tier_at_least(tier: str, minimum: str) -> bool:
    """Tier comparison by TIER_ORDER; unknown names rank below None."""
    rank = {name: i for i, name in enumerate(TIER_ORDER)}
    return rank.get(tier, -1) >= rank[minimum]


def rank_key(values: Mapping[str, Any]) -> tuple[float, float, float]:
    """Sort key where larger is better: (Q, -hierarchy_B, coverage); missing/NaN ranks last."""

    def num(key: str, sign: float) -> float:
        try:
            x = float(values[key])
        except (KeyError, TypeError, ValueError):
            return -math.inf
        return -math.inf if math.isnan(x) else sign * x

    return num("Q", 1.0), num("hierarchy_B", -1.0), num("coverage", 1.0)


def strictly_better(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    return rank_key(new) > rank_key(old)


def find_model_uri(client: MlflowClient, run_id: str) -> str | None:
    """The run's logged model: tag `model.uri`, else the newest model among its outputs.

    MLflow 3 links every model logged in a run as a run output, so `get_run` already says
    whether there is one (a logged-model search would parse a filter: ~0.2 s the first time).
    """
    run = client.get_run(run_id)
    uri = run.data.tags.get(C.MODEL_URI)
    if uri:
        return uri
    outputs = getattr(getattr(run, "outputs", None), "model_outputs", None) or []
    models = []
    for output in outputs:
        try:
            models.append(client.get_logged_model(output.model_id))
        except MlflowException:
            continue
    if not models:
        return None
    newest = max(models, key=lambda m: m.creation_timestamp or 0)
    return newest.model_uri


def versions_of_run(client: MlflowClient, model_name: str, run_id: str) -> list[ModelVersion]:
    """Versions of `model_name` registered from `run_id` (empty when the model does not exist)."""
    try:
        found = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    except MlflowException:
        return []
    return sorted(found, key=lambda v: int(v.version))


def model_name_problem(client: MlflowClient, model_name: str) -> str | None:
    """Why the registry would refuse `model_name` (None when it is fine), asked of the store
    itself with a read, so the rule is MLflow's and nothing is written."""
    if not model_name.strip():
        return "must not be blank"
    try:
        client.get_registered_model(model_name)
    except MlflowException as err:
        if err.error_code == "INVALID_PARAMETER_VALUE":
            return " ".join(str(err.message).split())
    return None


def _ensure_model(client: MlflowClient, model_name: str) -> None:
    try:
        client.get_registered_model(model_name)
    except MlflowException:
        try:
            client.create_registered_model(
                model_name, description="TernaryVAE models registered by tvae-analyze"
            )
        except MlflowException as err:  # created concurrently by another analyze
            if "already exists" not in str(err).lower():
                raise


def register_version(
    client: MlflowClient,
    model_name: str,
    run_id: str,
    model_uri: str,
    tags: Mapping[str, Any],
) -> ModelVersion:
    """Create one model version from `model_uri` with string tags.

    The caller checked the run has none, then settles any race with `keep_first_version`.
    """
    _ensure_model(client, model_name)
    model_id = model_uri.split("/", 1)[1] if model_uri.startswith("models:/m-") else None
    return client.create_model_version(
        model_name,
        source=model_uri,
        run_id=run_id,
        tags={k: str(v) for k, v in tags.items()},
        model_id=model_id,
        await_creation_for=AWAIT_CREATION_SECONDS,  # MLflow waits for READY (or raises)
    )


def keep_first_version(
    client: MlflowClient, model_name: str, run_id: str, mine: ModelVersion
) -> ModelVersion:
    """Settle a registration race: the run's lowest-numbered version wins; a loser deletes `mine`.

    MLflow has no transactions, but it numbers versions atomically: a version's number is the
    model's highest number + 1 under a unique (name, version) key, so two creations never share
    a number, and a version numbered above another was created after that other was committed
    (deleted versions keep their numbers, so none is reused). Hence every analysis that created
    a version of this run and then lists the run's versions sees the lowest one, and they all
    agree on it. Its own creator sees nothing lower and keeps it; every other deletes its own
    version, so exactly one remains. The lowest is never deleted: its creator never loses. The
    winner alone moves aliases (after this returns), and a deleted version takes its aliases
    with it, so `candidate` and `champion` never point at a loser. A token tag on the run would
    not do: run tags are last-writer-wins, so two claimants can each read back their own token.
    """
    found = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    first = min([*found, mine], key=lambda v: int(v.version))
    if first.version != mine.version:
        client.delete_model_version(model_name, mine.version)
    return first


def _version_values(version: ModelVersion) -> dict[str, str]:
    return {k: version.tags[k] for k in VALUE_KEYS if k in version.tags}


def _alias_version(client: MlflowClient, model_name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def move_alias(
    client: MlflowClient, model_name: str, alias: str, version: str, reason: str
) -> None:
    """Point `alias` at `version`, tagging the new holder and the previous one with why."""
    previous = _alias_version(client, model_name, alias)
    client.set_registered_model_alias(model_name, alias, version)
    client.set_model_version_tag(model_name, version, f"alias.{alias}", f"{_stamp()} {reason}")
    if previous is not None and previous.version != version:
        client.set_model_version_tag(
            model_name,
            previous.version,
            f"alias.{alias}.lost",
            f"{_stamp()} to version {version}: {reason}",
        )


def update_aliases(client: MlflowClient, model_name: str, version: ModelVersion) -> dict[str, str]:
    """After registering `version`: candidate moves to it; champion only if strictly better."""
    moved = {CANDIDATE: "newest registered version"}
    move_alias(client, model_name, CANDIDATE, version.version, moved[CANDIDATE])
    champion = _alias_version(client, model_name, CHAMPION)
    new_values = _version_values(version)
    if champion is None:
        reason = "first registered version"
    elif strictly_better(new_values, _version_values(champion)):
        old = _version_values(champion)
        reason = (
            f"better than version {champion.version} "
            f"(Q {new_values.get('Q')} vs {old.get('Q')}, "
            f"hierarchy_B {new_values.get('hierarchy_B')} vs {old.get('hierarchy_B')}, "
            f"coverage {new_values.get('coverage')} vs {old.get('coverage')})"
        )
    else:
        client.set_model_version_tag(
            model_name,
            version.version,
            f"alias.{CHAMPION}.refused",
            f"{_stamp()} not strictly better than champion version {champion.version}",
        )
        return moved
    move_alias(client, model_name, CHAMPION, version.version, reason)
    moved[CHAMPION] = reason
    return moved


class PromoteError(ValueError):
    """A manual promotion was refused; the message is one line saying why."""


class BelowMinTier(PromoteError):
    """Refused because of the version's tier: forcing would promote it anyway."""


@dataclass(frozen=True)
class Promotion:
    """What `promote` did: `moved` is False when the version already was champion."""

    moved: bool
    reason: str


def promote(
    client: MlflowClient, model_name: str, version: str, min_tier: str, force: bool
) -> Promotion:
    """Move `champion` to `version` by hand; refuse versions below `min_tier` unless forced.

    Promoting the current champion changes nothing (no alias move, no tags) and says so.
    """
    problem = model_name_problem(client, model_name)
    if problem:
        raise PromoteError(f"model name: {problem}")
    try:
        mv = client.get_model_version(model_name, version)
    except MlflowException as err:
        if not is_not_found(err):
            raise  # the store failed (away, refused): not the user's name or version
        try:
            client.get_registered_model(model_name)
        except MlflowException as missing:
            if not is_not_found(missing):
                raise
            raise PromoteError(f"no registered model '{model_name}'") from None
        raise PromoteError(f"model '{model_name}' has no version '{version}'") from None
    champion = _alias_version(client, model_name, CHAMPION)
    if champion is not None and champion.version == mv.version:
        return Promotion(False, f"version {version} already is {CHAMPION}; nothing changed")
    tier = mv.tags.get(C.TIER, "None")
    if not tier_at_least(tier, min_tier) and not force:
        raise BelowMinTier(f"version {version} has tier {tier}, below min_tier {min_tier}")
    reason = f"promoted by hand (tier {tier}{', forced' if force else ''})"
    move_alias(client, model_name, CHAMPION, version, reason)
    return Promotion(True, reason)


# Tolerances for "the re-evaluated model reproduces its logged metrics" (CPU vs training device).
MATCH_TOLERANCE = {"coverage": 1e-3, "hierarchy_B": 5e-3, "Q": 1e-2, "richness": 1e-3}


def logged_values(client: MlflowClient, run_id: str, history: Any) -> dict[str, float] | None:
    """eval/* values at the logged model's step (tag model.step, else the last epoch): the
    VALUE_KEYS, and the LATENT_VALUE_KEYS the run logged."""
    columns = [f"eval/{k}" for k in VALUE_KEYS]
    if history is None or any(c not in history.columns for c in columns):
        return None
    latent = [f"eval/{k}" for k in LATENT_VALUE_KEYS if f"eval/{k}" in history.columns]
    frame = history[columns + latent].dropna(how="all", subset=columns)
    if frame.empty:
        return None
    step_tag = client.get_run(run_id).data.tags.get(C.MODEL_STEP, "")
    step = int(step_tag) if step_tag.isdigit() and int(step_tag) in frame.index else None
    row = frame.loc[step] if step is not None else frame.iloc[-1]
    values = {k: float(row[f"eval/{k}"]) for k in VALUE_KEYS}
    values.update({c.removeprefix("eval/"): float(row[c]) for c in latent if _is_number(row[c])})
    return values


def _is_number(x: Any) -> bool:
    """True for a number that is not NaN (history cells are floats or NaN)."""
    try:
        return not math.isnan(float(x))
    except (TypeError, ValueError):
        return False


def mismatches(evaluated: Mapping[str, float], logged: Mapping[str, float]) -> list[str]:
    """Human-readable differences beyond MATCH_TOLERANCE between evaluated and logged values."""
    out = []
    for key, tol in MATCH_TOLERANCE.items():
        a, b = float(evaluated.get(key, math.nan)), float(logged.get(key, math.nan))
        if not math.isclose(a, b, rel_tol=0.02, abs_tol=tol):
            out.append(f"{key} evaluated {a:.5g} vs logged {b:.5g}")
    return out


def _evaluate_twice(evaluate: Any, model_uri: str) -> dict[str, float]:
    """evaluate(model_uri), tried once more after a failure: concurrent analyses of one run
    evaluate at once, and their writes to the store (the evaluation's dataset and metrics)
    can collide; a model that cannot be evaluated fails both times."""
    try:
        return evaluate(model_uri)
    except Exception:  # noqa: BLE001
        time.sleep(1.0)
        return evaluate(model_uri)


def register_if_earned(
    client: MlflowClient,
    run_id: str,
    *,
    tier: str,
    min_tier: str,
    model_name: str,
    history: Any,
    events: int,
    judge: Any,
    evaluate: Any,
) -> RegistryOutcome:
    """Register the run's model when its tier meets `min_tier`, confirmed by re-evaluation.

    `judge(coverage, hierarchy, quality)` returns the tier name of values; `evaluate(model_uri)`
    returns the model's freshly computed metrics (coverage, hierarchy_B, Q, richness, ...).
    """
    out = RegistryOutcome(action="skipped", reason="", model_name=model_name)
    if not tier_at_least(tier, min_tier):
        out.reason = f"tier {tier} is below min_tier {min_tier}"
        return out
    # the model first: a tag lookup, where the version search parses a filter (~0.2 s once)
    out.model_uri = find_model_uri(client, run_id)
    if out.model_uri is None:
        out.reason = "run has no logged model"
        return out
    existing = versions_of_run(client, model_name, run_id)
    if existing:
        out.action, out.version = "already_registered", existing[0].version
        out.reason = f"run already registered as {model_name} version {existing[0].version}"
        return out
    logged = logged_values(client, run_id, history)
    if logged is None:
        out.reason = "run has no eval/coverage, eval/hierarchy_B, eval/Q, eval/richness history"
        return out
    try:
        out.evaluated = _evaluate_twice(evaluate, out.model_uri)
    except Exception as err:  # noqa: BLE001 - an unloadable model blocks, the analysis stands
        out.action = "blocked"
        out.reason = f"re-evaluation of {out.model_uri} failed: {type(err).__name__}: {err}"
        return out
    confirmed = judge(out.evaluated["coverage"], out.evaluated["hierarchy_B"], out.evaluated["Q"])
    diffs = mismatches(out.evaluated, logged)
    if diffs or not tier_at_least(confirmed, min_tier):
        out.action = "blocked"
        detail = "; ".join(diffs) if diffs else f"re-evaluated tier {confirmed} < {min_tier}"
        out.reason = f"re-evaluation does not confirm the logged metrics: {detail}"
        return out
    tags = {k: f"{out.evaluated[k]:.6g}" for k in VALUE_KEYS}
    for k in LATENT_VALUE_KEYS:
        if (value := out.evaluated.get(k, logged.get(k))) is not None:
            tags[k] = f"{value:.6g}"
    tags.update({C.TIER: confirmed, "source_run": run_id, C.GROKKING_EVENTS: str(events)})
    mine = register_version(client, model_name, run_id, out.model_uri, tags)
    version = keep_first_version(client, model_name, run_id, mine)
    if version.version != mine.version:  # a concurrent analysis registered the run first
        out.action, out.version = "already_registered", version.version
        out.reason = (
            f"run registered concurrently as {model_name} version {version.version}; "
            f"this analysis deleted its own version {mine.version}"
        )
        return out
    out.action, out.version = "registered", version.version
    out.reason = f"tier {confirmed} confirmed by re-evaluating {out.model_uri}"
    out.aliases = update_aliases(client, model_name, version)
    return out
