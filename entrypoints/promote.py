"""`mlflow run . -e promote -P version=N` / `tvae-promote`: move `champion` to a version by hand.

A version whose `tier` tag is below `--min-tier` is refused unless `--force true`; the move is
recorded as version tags (`alias.champion` on the new holder, `alias.champion.lost` on the old).
"""

from __future__ import annotations

import click

from entrypoints._cli import BOOL, Blank
from tvae.analysis.tiers import TIER_ORDER


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", "version", required=True, type=Blank(), help="model version")
@click.option("--model-name", default="", type=Blank(), help="registered model name")
@click.option("--min-tier", default="", type=Blank(click.Choice(TIER_ORDER)), help="lowest tier")
@click.option("--force", default="", type=BOOL, help="promote even below min-tier")
def main(version: str | None, model_name: str | None, min_tier: str | None, force: bool | None):
    """Make VERSION of the registered model the `champion`."""
    from mlflow.tracking import MlflowClient

    from mlflow_plugins.registry import DEFAULT_MODEL_NAME, PromoteError, promote

    if not version or not version.isdigit():
        raise click.ClickException(f"--version must be a positive integer, got '{version or ''}'")
    name = model_name or DEFAULT_MODEL_NAME
    try:
        reason = promote(MlflowClient(), name, version, min_tier or "Good", bool(force))
    except PromoteError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"{name} version {version} is now champion: {reason}")


if __name__ == "__main__":
    main()
