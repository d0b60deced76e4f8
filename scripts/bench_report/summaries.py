"""Values derived from the runs that both the tables and the plots need."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from .numbers import median
from .results import CeilingRun, CriterionBenchmark, LoadRun, Results, is_number


@dataclass(frozen=True)
class Options:
    """What the command line adds to the results."""

    events_per_purchase: float | None = None


@dataclass
class LoadSummary:
    """The medians over the runs of one series (failed runs included)."""

    runs: list[LoadRun]
    rate_per_second: float
    latency_ms: dict[str, float | None]

    @property
    def failed_runs(self) -> list[LoadRun]:
        return [run for run in self.runs if run.failed]


LATENCY_PERCENTILES = ("p50", "p90", "p99", "p99_9", "max", "mean")


def summarize(runs: list[LoadRun]) -> LoadSummary | None:
    if not runs:
        return None
    return LoadSummary(
        runs=runs,
        rate_per_second=statistics.median(run.rate_per_second for run in runs),
        latency_ms={
            percentile: median(run.latency_ms.get(percentile) for run in runs)
            for percentile in LATENCY_PERCENTILES
        },
    )


def median_ceiling(runs: list[CeilingRun]) -> float | None:
    return median(run.rate_per_second for run in runs)


def median_fact(runs: list[LoadRun], name: str) -> float | None:
    """The median of a numeric fact over the runs that report it."""
    return median(float(run.facts[name]) for run in runs if is_number(run.facts.get(name)))


def median_parameter(runs: list[LoadRun], name: str) -> float | None:
    return median(float(run.parameters[name]) for run in runs if is_number(run.parameters.get(name)))


def median_request_count(runs: list[LoadRun], name: str) -> float | None:
    return median(float(run.requests[name]) for run in runs if is_number(run.requests.get(name)))


def representative_run(runs: list[LoadRun]) -> LoadRun | None:
    """The run whose rate is the (lower) median: the one to plot for a series."""
    if not runs:
        return None
    median_rate = statistics.median_low(run.rate_per_second for run in runs)
    return next(run for run in runs if run.rate_per_second == median_rate)


# --- conversions between purchases and rows or records

@dataclass(frozen=True)
class PerPurchase:
    """How many rows or events one purchase costs, and where that number came from."""

    amount: float
    source: str


def embedded_rows_per_purchase(results: Results, shards: int) -> PerPurchase | None:
    """SQLite rows one embedded purchase writes: ``facts.rows_per_purchase`` of the runs,
    else what sqlite-ceiling counted at the same shard count."""
    runs = results.embedded_purchases.get(shards, [])
    rows = median_fact(runs, "rows_per_purchase")
    if rows is not None:
        return PerPurchase(rows, "reported by the runs")
    return sqlite_ceiling_rows_per_purchase(results.sqlite_ceiling, shards)


def distributed_events_per_purchase(results: Results, engines: int, options: Options) -> PerPurchase | None:
    """Kafka records (events and shard messages) one distributed purchase writes:
    ``facts.events_per_purchase`` of the runs, else ``parameters.events_per_purchase``, else
    ``--events-per-purchase``, else the rows sqlite-ceiling counted at the Kafka ceiling's
    shard count (the same engine writes the same events and messages)."""
    runs = results.distributed_purchases.get(engines, [])
    events = median_fact(runs, "events_per_purchase")
    if events is not None:
        return PerPurchase(events, "reported by the runs")
    events = median_parameter(runs, "events_per_purchase")
    if events is not None:
        return PerPurchase(events, "the runs' parameters")
    if options.events_per_purchase is not None:
        return PerPurchase(options.events_per_purchase, "--events-per-purchase")
    kafka_shards = median(float(run.details["shards"]) for run in results.kafka_ceiling.get(engines, [])
                          if is_number(run.details.get("shards")))
    counted = sqlite_ceiling_rows_per_purchase(results.sqlite_ceiling, kafka_shards)
    if counted is None:
        return None
    return PerPurchase(counted.amount, "events + messages " + counted.source)


def sqlite_ceiling_rows_per_purchase(ceiling_runs: list[CeilingRun], shards: float | None) -> PerPurchase | None:
    """``rows_per_purchase`` of the sqlite-ceiling runs made at ``shards`` shards (any
    shard count when None; a run that does not say its shard count always counts)."""
    matching = [run for run in ceiling_runs
                if shards is None or not is_number(run.details.get("shards")) or run.details["shards"] == shards]
    rows = median(float(run.details["rows_per_purchase"]) for run in matching
                  if is_number(run.details.get("rows_per_purchase")))
    if rows is None:
        return None
    counted_at = sorted({run.details["shards"] for run in matching if is_number(run.details.get("shards"))})
    noun = "shard" if counted_at == [1] else "shards"
    at = f" at {', '.join(f'{count:g}' for count in counted_at)} {noun}" if counted_at else ""
    return PerPurchase(rows, f"counted by sqlite-ceiling{at}")


def ledger_to_ceiling_ratio(purchases_per_second: float, ceiling_per_second: float,
                            per_purchase: PerPurchase | None) -> float:
    """Ledger rows (or events) per second ÷ ceiling rows (or records) per second; with
    the cost of a purchase unknown, purchases/s ÷ ceiling per second."""
    amount = per_purchase.amount if per_purchase else 1.0
    return purchases_per_second * amount / ceiling_per_second


# --- the limited drop

def time_to_sell_out_ms(run: LoadRun) -> float:
    """The run's time to sell out; infinity when it did not sell out (or did not say),
    so that a median over runs stays honest."""
    value = run.facts.get("time_to_sell_out_ms")
    return float(value) if is_number(value) else math.inf


def median_time_to_sell_out_ms(runs: list[LoadRun]) -> float | None:
    return median(time_to_sell_out_ms(run) for run in runs)


def oversold(run: LoadRun) -> float | None:
    """``facts.oversold`` when reported, else sold beyond ``parameters.supply``."""
    reported = run.facts.get("oversold")
    if is_number(reported):
        return float(reported)
    sold, supply = run.facts.get("sold"), run.parameters.get("supply")
    if is_number(sold) and is_number(supply):
        return float(max(0, sold - supply))
    return None


# --- criterion

@dataclass(frozen=True)
class CriterionRate:
    per_second: float
    unit: str
    measured_as_throughput: bool


def criterion_rate(benchmark: CriterionBenchmark) -> CriterionRate:
    """Elements (or bytes) per second at the median time when the bench declares its
    throughput; otherwise iterations per second."""
    if benchmark.throughput is None:
        return CriterionRate(1e9 / benchmark.median_ns, "iterations/s", False)
    kind, amount = benchmark.throughput
    unit = {"Elements": "elements/s", "Bytes": "bytes/s", "BytesDecimal": "bytes/s"}.get(kind, f"{kind.lower()}/s")
    return CriterionRate(amount * 1e9 / benchmark.median_ns, unit, True)


def expected_then_found_keys(expected: tuple, *found: dict[Any, Any]) -> list:
    """The expected keys in their order, then any other key found, sorted."""
    others = {key for dictionary in found for key in dictionary if key not in expected}
    return list(expected) + sorted(others)
