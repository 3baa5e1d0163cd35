"""`mlflow run . -e promote -P version=N` / `tvae-promote`: move `champion` to a version by hand.

A version whose `tier` tag is below `--min-tier` is refused unless forced; the move is recorded
as version tags (`alias.champion` on the new holder, `alias.champion.lost` on the old).
Promoting the current champion changes nothing and says so. Errors: `error: ...`, exit 2.
"""

from __future__ import annotations

import click

from entrypoints._cli import (
    BOOL,
    Blank,
    CommandFailed,
    MarksRunFailed,
    name_launcher_run,
    option_hint,
)
from tvae.analysis.tiers import TIER_ORDER


@click.command(cls=MarksRunFailed, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", "version", required=True, type=Blank(), help="model version")
@click.option("--model-name", default="", type=Blank(), help="registered model name")
@click.option("--min-tier", default="", type=Blank(click.Choice(TIER_ORDER)), help="lowest tier")
@click.option("--force", default="", type=BOOL, help="promote even below min-tier")
def main(
    version: str | None, model_name: str | None, min_tier: str | None, force: bool | None
) -> None:
    """Make VERSION of the registered model the `champion`."""
    if not version or not version.isdigit() or int(version) < 1:
        raise click.ClickException(f"--version must be a positive integer, got '{version or ''}'")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from mlflow_plugins.registry import DEFAULT_MODEL_NAME, BelowMinTier, PromoteError, promote

    name = model_name or DEFAULT_MODEL_NAME
    client = MlflowClient()
    try:
        done = promote(client, name, version, min_tier or "Good", bool(force))
    except BelowMinTier as err:
        hint = option_hint("force", "true")
        raise click.ClickException(f"{err}; pass {hint} to promote it anyway") from None
    except PromoteError as err:
        raise click.ClickException(str(err)) from None
    except MlflowException as err:
        first = (str(err.message).strip().splitlines() or [""])[0]
        raise CommandFailed(f"model registry: {first}") from err
    name_launcher_run(client, f"promote-{name}-v{version}")
    if done.moved:
        click.echo(f"{name} version {version} is now champion: {done.reason}")
    else:
        click.echo(f"{name} {done.reason}")


if __name__ == "__main__":
    main()
