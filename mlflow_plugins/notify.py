"""Tell the outside world about a live state change: a webhook POST and/or a shell command."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

WEBHOOK_ATTEMPTS = 3
WEBHOOK_TIMEOUT = 5.0  # seconds per attempt
COMMAND_TIMEOUT = 60.0


class Notifier:
    """Tells the outside world about a state change: POST JSON to a webhook (bounded retries
    and timeout) and/or run a shell command with the same fields in ``TVAE_*`` variables.
    Failures are one line each; the watcher goes on."""

    def __init__(
        self,
        webhook: str | None = None,
        command: str | None = None,
        echo: Callable[[str], None] = print,
        *,
        attempts: int = WEBHOOK_ATTEMPTS,
        timeout: float = WEBHOOK_TIMEOUT,
    ) -> None:
        self.webhook, self.command, self.echo = webhook, command, echo
        self.attempts, self.timeout = attempts, timeout

    def send(self, payload: dict[str, Any]) -> None:
        if self.webhook:
            self._post(payload)
        if self.command:
            self._run(payload)

    def _post(self, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        error = ""
        for attempt in range(self.attempts):
            request = urllib.request.Request(
                self.webhook, data=body, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    if 200 <= response.status < 300:
                        return
                    error = f"HTTP {response.status}"
            except urllib.error.HTTPError as err:
                error = f"HTTP {err.code}"
                if 400 <= err.code < 500 and err.code != 429:
                    break  # the receiver refuses it: retrying will not help
            except (OSError, ValueError) as err:
                error = str(getattr(err, "reason", err))
            if attempt + 1 < self.attempts:
                time.sleep(0.5 * 2**attempt)
        self.echo(f"watch: webhook {self.webhook} failed after {attempt + 1} attempt(s): {error}")

    def _run(self, payload: dict[str, Any]) -> None:
        env = {**os.environ, **command_env(payload)}
        try:
            done = subprocess.run(
                self.command, shell=True, env=env, timeout=COMMAND_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            self.echo(f"watch: command timed out after {COMMAND_TIMEOUT:g} s: {self.command}")
            return
        if done.returncode:
            self.echo(f"watch: command exited {done.returncode}: {self.command}")


def command_env(payload: dict[str, Any]) -> dict[str, str]:
    """The notification's fields as ``TVAE_<FIELD>`` environment variables."""
    return {
        f"TVAE_{key.upper()}": "" if value is None else str(value) for key, value in payload.items()
    }
