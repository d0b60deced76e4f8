"""The SVG plots, one per ``{{plot:NAME}}`` placeholder (see PLOTS).

Each plot has a data function (pure: the Results in, the points out, or None when the
data is missing, and then the plot is skipped) and a draw function. matplotlib is imported
only by the draw functions, so that the rest of the package, and its tests, run without
it. The SVGs are byte-stable for identical inputs: Agg backend, a fixed ``svg.hashsalt``,
no date in the metadata, glyphs drawn as paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import numbers
from .numbers import median
from .results import HTTP_WORKLOADS, LoadRun, Results
from .summaries import (Options, distributed_events_per_purchase, expected_then_found_keys, median_ceiling,
                        representative_run)

SVG_HASH_SALT = "ledger-bench-report"
FIGURE_SIZE_INCHES = (7.0, 4.0)


# --- data

@dataclass
class LatencyCurve:
    label: str
    histogram: list[tuple[float, int]]


@dataclass
class RatesByCount:
    """Rates by a count (shards, engines): every run, for points and medians."""

    rates: dict[int, list[float]]


@dataclass
class EngineScaling:
    purchases: RatesByCount
    ceiling_by_engines: dict[int, float]
    ceiling_label: str


@dataclass
class PeerComparison:
    ledger_rates: list[float]
    peer_rates: list[float]
    ledger_p50_ms: list[float]
    peer_p50_ms: list[float]


def latency_curve(label: str, runs: list[LoadRun]) -> LatencyCurve | None:
    run = representative_run(runs)
    if run is None or not run.histogram:
        return None
    failed = ", FAILED" if run.failed else ""
    return LatencyCurve(f"{label} (run {run.run}{failed})", run.histogram)


def latency_http_data(results: Results, options: Options) -> list[LatencyCurve] | None:
    curves = [latency_curve(workload, results.http.get(workload, []))
              for workload in expected_then_found_keys(HTTP_WORKLOADS, results.http)]
    return [curve for curve in curves if curve] or None


def latency_drop_data(results: Results, options: Options) -> list[LatencyCurve] | None:
    curves = [latency_curve("embedded drop", results.embedded_drop),
              latency_curve("HTTP drop", results.http.get("drop", []))]
    return [curve for curve in curves if curve] or None


def scaling_shards_data(results: Results, options: Options) -> RatesByCount | None:
    rates = {shards: [run.rate_per_second for run in runs]
             for shards, runs in results.embedded_purchases.items() if runs}
    return RatesByCount(rates) if rates else None


def scaling_engines_data(results: Results, options: Options) -> EngineScaling | None:
    """The Kafka ceiling is converted to purchases/s as the distributed table does: ÷
    events per purchase; with that unknown, records/s as they are, and the label says so."""
    rates = {engines: [run.rate_per_second for run in runs]
             for engines, runs in results.distributed_purchases.items() if runs}
    if not rates:
        return None
    ceilings, amounts = {}, set()
    for engines, ceiling_runs in results.kafka_ceiling.items():
        ceiling = median_ceiling(ceiling_runs)
        if ceiling is None:
            continue
        per_purchase = distributed_events_per_purchase(results, engines, options)
        amounts.add(per_purchase.amount if per_purchase else None)
        ceilings[engines] = ceiling / (per_purchase.amount if per_purchase else 1.0)
    if None in amounts:
        label = "Kafka ceiling, records/s (events per purchase unknown: 1 assumed)"
    elif len(amounts) == 1:
        label = f"Kafka ceiling ÷ {numbers.count(amounts.pop())} events/purchase"
    else:
        label = "Kafka ceiling ÷ events/purchase"
    return EngineScaling(RatesByCount(rates), ceilings, label)


def peer_data(results: Results, options: Options) -> PeerComparison | None:
    if not (results.peer_ledger and results.peer_peer):
        return None
    return PeerComparison(
        ledger_rates=[run.rate_per_second for run in results.peer_ledger],
        peer_rates=[run.rate_per_second for run in results.peer_peer],
        ledger_p50_ms=[run.latency_ms["p50"] for run in results.peer_ledger],
        peer_p50_ms=[run.latency_ms["p50"] for run in results.peer_peer],
    )


# --- drawing

def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    matplotlib.rcParams.update({"svg.hashsalt": SVG_HASH_SALT, "svg.fonttype": "path", "font.size": 9})
    import matplotlib.pyplot
    return matplotlib.pyplot


def new_figure(columns: int = 1):
    figure, axes = pyplot().subplots(1, columns, figsize=FIGURE_SIZE_INCHES)
    return figure, axes


def save(figure, path: Path) -> None:
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="svg", metadata={"Date": None})
    pyplot().close(figure)


def cumulative_fractions(histogram: list[tuple[float, int]]) -> tuple[list[float], list[float]]:
    """Latency in ms (at least 1 µs, for the log axis) and the fraction of requests at or
    below it."""
    total = sum(count for _, count in histogram) or 1
    milliseconds, fractions, seen = [], [], 0
    for value_us, count in histogram:
        seen += count
        milliseconds.append(max(value_us, 1.0) / 1000)
        fractions.append(seen / total)
    return milliseconds, fractions


def draw_latency_curves(title: str) -> Callable[[list[LatencyCurve], Path], None]:
    def draw(curves: list[LatencyCurve], path: Path) -> None:
        figure, axes = new_figure()
        for curve in curves:
            milliseconds, fractions = cumulative_fractions(curve.histogram)
            axes.step(milliseconds, fractions, where="post", label=curve.label)
        axes.set_xscale("log")
        plain_numbers(axes.xaxis)
        axes.set_ylim(0, 1.02)
        axes.set_xlabel("latency (ms, log scale)")
        axes.set_ylabel("fraction of requests answered within")
        axes.set_title(title)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(loc="lower right")
        save(figure, path)
    return draw


def plot_runs_and_medians(axes, rates: RatesByCount, label: str) -> None:
    counts = sorted(rates.rates)
    for count in counts:
        axes.scatter([count] * len(rates.rates[count]), rates.rates[count], color="tab:blue", alpha=0.5, s=18)
    axes.plot(counts, [median(rates.rates[count]) for count in counts], marker="o", color="tab:blue",
              label=f"{label}: median (points: runs)")


def thousands_separators(axes) -> None:
    from matplotlib.ticker import FuncFormatter
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))


def plain_numbers(axis) -> None:
    """``0.1``, ``1``, ``10`` rather than powers of ten on a log axis."""
    from matplotlib.ticker import FuncFormatter
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,g}"))


def draw_scaling_shards(rates: RatesByCount, path: Path) -> None:
    figure, axes = new_figure()
    plot_runs_and_medians(axes, rates, "purchases/s")
    axes.set_xscale("log", base=2)
    axes.set_xticks(sorted(rates.rates), [str(count) for count in sorted(rates.rates)])
    axes.set_ylim(bottom=0)
    axes.set_xlabel("shards")
    axes.set_ylabel("purchases/s")
    thousands_separators(axes)
    axes.set_title("Durable embedded purchases/s by shard count")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right")
    save(figure, path)


def draw_scaling_engines(scaling: EngineScaling, path: Path) -> None:
    figure, axes = new_figure()
    plot_runs_and_medians(axes, scaling.purchases, "ledger purchases/s")
    if scaling.ceiling_by_engines:
        engines = sorted(scaling.ceiling_by_engines)
        axes.plot(engines, [scaling.ceiling_by_engines[count] for count in engines], linestyle="--",
                  marker="s", color="tab:red", label=scaling.ceiling_label)
    counts = sorted(set(scaling.purchases.rates) | set(scaling.ceiling_by_engines))
    axes.set_xticks(counts, [str(count) for count in counts])
    axes.set_xlim(min(counts) - 0.5, max(counts) + 0.5)
    axes.set_ylim(bottom=0)
    axes.set_xlabel("engine instances")
    axes.set_ylabel("purchases/s")
    thousands_separators(axes)
    axes.set_title("Distributed purchases/s by engine instances")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right")
    save(figure, path)


def draw_peer(comparison: PeerComparison, path: Path) -> None:
    figure, (rate_axes, latency_axes) = new_figure(columns=2)
    for axes, ledger, peer, label in (
        (rate_axes, comparison.ledger_rates, comparison.peer_rates, "purchases/s"),
        (latency_axes, comparison.ledger_p50_ms, comparison.peer_p50_ms, "p50 latency (ms)"),
    ):
        axes.bar([0, 1], [median(ledger), median(peer)], color=["tab:blue", "tab:orange"], alpha=0.7)
        axes.scatter([0] * len(ledger) + [1] * len(peer), ledger + peer, color="black", s=12, zorder=3)
        axes.set_xticks([0, 1], ["ledger", "peer"])
        axes.set_ylabel(label)
        if axes is rate_axes:
            thousands_separators(axes)
        axes.set_title(f"{label}: median (points: runs)")
        axes.grid(True, axis="y", alpha=0.3)
    save(figure, path)


@dataclass(frozen=True)
class Plot:
    name: str
    alt: str
    data: Callable[[Results, Options], Any]
    draw: Callable[[Any, Path], None]


PLOTS: dict[str, Plot] = {plot.name: plot for plot in (
    Plot("latency-http", "Latency distribution of each HTTP workload (median run)", latency_http_data,
         draw_latency_curves("HTTP workloads: latency distribution (median run of each)")),
    Plot("latency-drop", "Limited drop latency distribution, embedded and HTTP", latency_drop_data,
         draw_latency_curves("Limited drop: latency distribution (median run)")),
    Plot("scaling-shards", "Durable embedded purchases/s by shard count", scaling_shards_data,
         draw_scaling_shards),
    Plot("scaling-engines", "Distributed purchases/s with 1 and 2 engines, and the Kafka ceiling",
         scaling_engines_data, draw_scaling_engines),
    Plot("peer", "The ledger against the peer: median purchases/s and p50", peer_data, draw_peer),
)}
