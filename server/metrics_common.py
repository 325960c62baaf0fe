"""Builders shared by the Prometheus layers (`server.metrics`, `server.vllm_metrics`): a
histogram registered in an app's own registry, and the one-sample gauge and counter
families their collectors build from the engine's stats at scrape time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


def histogram(
    registry: CollectorRegistry,
    name: str,
    doc: str,
    buckets: Sequence[float],
    labels: Sequence[str] = (),
) -> Histogram:
    """A histogram `name` (full name, with its `tierkv:`/`vllm:` prefix) in `registry`."""
    return Histogram(name, doc, labels, buckets=buckets, registry=registry)


def gauge(
    name: str, doc: str, value: float, labels: Mapping[str, str] | None = None
) -> GaugeMetricFamily:
    """A gauge family `name` holding one sample, `value`, labelled `labels` (if any)."""
    if not labels:
        return GaugeMetricFamily(name, doc, value=value)
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def counter(
    name: str, doc: str, value: float, labels: Mapping[str, str] | None = None
) -> CounterMetricFamily:
    """A counter family `name` holding one sample, `value`, labelled `labels` (if any)."""
    if not labels:
        return CounterMetricFamily(name, doc, value=value)
    family = CounterMetricFamily(name, doc, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family
