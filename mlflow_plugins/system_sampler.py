"""System metrics that keep sampling while the tracking server is away.

MLflow's own sampler (`start_run(log_system_metrics=True)`) stops at its first failed call to
the server, so a run loses its `system/*` metrics from the first outage on. This sampler takes
the samples with MLflow's monitors (`SystemMetricsMonitor.collect_metrics` and
`aggregate_metrics`: CPU, memory, disk, network, and GPUs where nvidia-ml-py finds them; the same
keys, the same sampling settings `MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL` and
`MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING`) on a thread of its own, and hands each aggregate
to the train logger, whose journal keeps it through an outage like any metric batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from mlflow import MlflowClient

from tvae.contract import SYSTEM_PREFIX

CPU_KEY = f"{SYSTEM_PREFIX}cpu_utilization_percentage"  # always sampled: its last step is the run's


class SystemSampler:
    """Samples every interval; `log(metrics, step)` receives each aggregate (step = its
    number, continuing a resumed run's)."""

    def __init__(
        self, client: MlflowClient, run_id: str, log: Callable[[dict[str, float], int], None]
    ) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self.monitor = SystemMetricsMonitor(run_id, tracking_uri=client.tracking_uri)
        self.log = log
        steps = [m.step for m in client.get_metric_history(run_id, CPU_KEY)]
        self.step = max(steps) + 1 if steps else 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tvae-system-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling (the current wait is cut short) after publishing what was taken."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        """Sample now, then every interval; publish every `samples_before_logging` samples and
        what was taken when stopped, so even a run shorter than one interval has a sample."""
        monitor, taken = self.monitor, 0
        while True:
            monitor.collect_metrics()
            taken += 1
            stopping = self._stop.wait(monitor.sampling_interval)
            if taken >= monitor.samples_before_logging or stopping:
                self._publish()
                taken = 0
            if stopping:
                return

    def _publish(self) -> None:
        metrics = self.monitor.aggregate_metrics()
        for each in self.monitor.monitors:
            each.clear_metrics()
        self.log({SYSTEM_PREFIX + k: float(v) for k, v in metrics.items()}, self.step)
        self.step += 1
