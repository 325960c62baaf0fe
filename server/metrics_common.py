"""Builders shared by the Prometheus layers (`server.metrics`, `server.vllm_metrics`): a
histogram registered in an app's own registry, and the one-sample gauge and counter
families their collectors build from the engine's stats at scrape time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

F = TypeVar("F", GaugeMetricFamily, CounterMetricFamily)


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
    return _one_sample(GaugeMetricFamily, name, doc, value, labels)


def counter(
    name: str, doc: str, value: float, labels: Mapping[str, str] | None = None
) -> CounterMetricFamily:
    """A counter family `name` holding one sample, `value`, labelled `labels` (if any)."""
    return _one_sample(CounterMetricFamily, name, doc, value, labels)


def _one_sample(
    family_type: type[F], name: str, doc: str, value: float, labels: Mapping[str, str] | None
) -> F:
    if not labels:
        return family_type(name, doc, value=value)
    family = family_type(name, doc, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family
