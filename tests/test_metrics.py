"""The process's metrics as Prometheus reads them: counts by label, and latency
histograms with cumulative buckets."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from calltags.metrics import LATENCY_BUCKETS, Metrics


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_requests_and_outcomes_are_counted_by_label() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.request("routing", "/calls", "POST", 201)
    metrics.request("routing", "/calls", "POST", 401)
    metrics.outcome("no_tags")
    samples = _samples(metrics)
    labels = (("api", "routing"), ("method", "POST"), ("route", "/calls"))
    assert samples[("calltags_http_requests_total", (*labels, ("status", "201")))] == 3
    assert samples[("calltags_http_requests_total", (*labels, ("status", "401")))] == 1
    assert samples[("calltags_postback_outcomes_total", (("outcome", "no_tags"),))] == 1


def test_latency_buckets_are_cumulative_and_inclusive() -> None:
    metrics = Metrics()
    for seconds in (0.0004, 0.0005, 0.003, 0.003, 7.0):
        metrics.postback_latency.observe(seconds)
    samples = _samples(metrics)

    def bucket(le: str) -> float:
        key = (("le", le), ("operation", "postback"))
        return samples[("calltags_request_duration_seconds_bucket", key)]

    assert bucket("0.0005") == 2  # a value on a bound counts in that bound's bucket
    assert bucket("0.001") == 2
    assert bucket("0.005") == 4
    assert bucket(repr(LATENCY_BUCKETS[-1])) == 4
    assert bucket("+Inf") == 5
    count = samples[("calltags_request_duration_seconds_count", (("operation", "postback"),))]
    total = samples[("calltags_request_duration_seconds_sum", (("operation", "postback"),))]
    assert count == 5
    assert abs(total - 7.0069) < 1e-9
    connects = (("operation", "connect"),)
    assert samples[("calltags_request_duration_seconds_count", connects)] == 0
