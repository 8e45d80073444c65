"""Operator metrics on the worker's `/metrics`: Faust's own Prometheus sensor + stixbus metrics.

- `faust.sensors.prometheus.setup_prometheus_sensors` installs Faust's monitor (metrics named
  `faust_*`, a fixed prefix so dashboards do not depend on the app id) and serves `/metrics` on
  Faust's web server from `prometheus_client.REGISTRY`, where `stixbus/metrics.py` registers the
  bus's own `stixbus_*` metrics: one endpoint, one scrape.
- A timer samples each subscriber's consumer lag on `stixbus.deliver.<org>` from the broker
  (stixbus/kafka/lag.py;
  group convention `<prefix>.<org>`), every `STIXBUS_OBSERVE_LAG_INTERVAL_SECONDS`.
  Every worker samples (the values agree; aggregate with `max by (subscriber)`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust
from aiohttp.web import Response as AioResponse
from faust.sensors.prometheus import PrometheusMonitor, setup_prometheus_sensors
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from stixbus import metrics
from stixbus.context import BusContext
from stixbus.kafka.config import client_kwargs
from stixbus.kafka.lag import LagSampler, ObserveSettings

log = logging.getLogger(__name__)

FAUST_METRICS_PREFIX = "faust"

# Faust's metric objects, created once per process (a second app in the same process, as in
# tests, must reuse them: the default registry refuses duplicate names).
_faust_metrics: Any = None


def _setup_sensors(app: faust.App) -> None:
    global _faust_metrics
    if _faust_metrics is None:
        setup_prometheus_sensors(app, registry=REGISTRY, name_prefix=FAUST_METRICS_PREFIX)
        _faust_metrics = app.monitor._metrics  # type: ignore[attr-defined]
        return
    app.monitor = PrometheusMonitor(metrics=_faust_metrics)

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            body = generate_latest(REGISTRY)
            return AioResponse(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})  # type: ignore[return-value]


def register(app: faust.App, ctx: BusContext) -> None:
    _setup_sensors(app)
    subscribers = [o.id for o in ctx.registry.subscribers]
    metrics.init_orgs((o.id for o in ctx.registry.publishers), subscribers)
    observe = ObserveSettings()
    sampler = LagSampler(
        client_kwargs(ctx.settings), ctx.names, subscribers, observe.subscriber_group
    )
    failing = False

    @app.timer(observe.lag_interval_seconds, name="stixbus.observe.lag")
    async def sample_lag() -> None:
        nonlocal failing
        try:
            lags = await sampler.sample()
        except Exception as exc:  # a broker hiccup must not kill the timer
            metrics.LAG_SAMPLE_ERRORS.inc()
            if not failing:
                log.warning("subscriber lag sample failed: %r (will retry)", exc)
            failing = True
            await sampler.close()
            return
        failing = False
        for org, lag in lags.items():
            if lag is not None:
                metrics.set_subscriber_lag(org, lag)
        metrics.LAG_SAMPLE_TIME.set(time.time())

    @app.on_before_shutdown.connect
    async def close_sampler(_sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        await sampler.close()
