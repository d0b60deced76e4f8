"""The markdown tables, one function per ``{{table:NAME}}`` placeholder (see TABLES).

Each function takes the Results and the Options and returns markdown without a trailing
newline: a table, sometimes followed by note lines, or a "not measured in this run" line
naming the missing files.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Callable

from . import numbers
from .numbers import MISSING, median, significant
from .results import (ENGINE_COUNTS, HTTP_WORKLOADS, OPEN_LOOP_RATES, SHARD_COUNTS, CeilingRun, CriterionBenchmark,
                      LoadRun, Results, is_number)
from .summaries import (LoadSummary, Options, PerPurchase, criterion_rate,
                        distributed_events_per_purchase, embedded_rows_per_purchase,
                        expected_then_found_keys, ledger_to_ceiling_ratio, median_ceiling,
                        median_fact, median_parameter, median_request_count,
                        median_time_to_sell_out_ms, oversold, summarize, time_to_sell_out_ms)

NOT_MEASURED = "not measured in this run"
FAILED = "**FAILED**"
VIOLATION_SHOWN_CHARACTERS = 160

EMBEDDED_TARGET_PURCHASES_PER_SECOND = 100_000
HTTP_TARGET_PURCHASES_PER_SECOND = 20_000
HTTP_TARGET_P99_MS = 20.0
DROP_TARGET_SELL_OUT_MS = 1_000.0


@dataclass(frozen=True)
class CriterionTarget:
    pattern: str
    per_second: float
    unit: str
    scope: str

    @property
    def description(self) -> str:
        return f"≥ {numbers.count(self.per_second)} {self.unit}{self.scope}"


# Matched in order against a benchmark's full id (fnmatch: '*' also matches '/').
CRITERION_TARGETS = (
    CriterionTarget("per_command/*", 1_000_000, "commands/s", " per core"),
    CriterionTarget("*purchase*", 1_000_000, "purchases/s", " per core"),
    CriterionTarget("replay/*", 2_000_000, "events/s", ""),
)


# --- markdown helpers

def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = [table_line(headers), table_line(["---"] * len(headers))]
    lines.extend(table_line(row) for row in rows)
    return "\n".join(lines)


def table_line(cells: list[str]) -> str:
    return "| " + " | ".join(table_cell(cell) for cell in cells) + " |"


def table_cell(text: str) -> str:
    """A cell's text with its pipes escaped and its line breaks flattened."""
    return re.sub(r"\s*\n\s*", " ", str(text)).replace("|", "\\|")


def not_measured_block(*missing_files: str) -> str:
    listed = ", ".join(f"`{name}`" for name in missing_files)
    return f"_{NOT_MEASURED}_ (no {listed})"


def code(text: str) -> str:
    return f"`{text}`" if "`" not in text else text


# --- cells shared by several tables

def checks_cell(runs: list[LoadRun]) -> str:
    """``passed (3 runs)``, ``not checked``, or FAILED with the first violation; then
    request errors, if any run had some."""
    if not runs:
        return MISSING
    failed = [run for run in runs if run.failed]
    if failed:
        first = failed[0]
        violation_count = sum(len(run.violations) for run in failed)
        more = f"; {violation_count - 1} more" if violation_count > 1 else ""
        cell = (f"{FAILED} in {len(failed)} of {len(runs)} runs "
                f"(run {first.run}: {shorten(first.violations[0])}{more})")
    elif any(run.invariants_checked for run in runs):
        cell = f"passed ({len(runs)} run{'s' if len(runs) != 1 else ''})"
    else:
        cell = "not checked"
    errors = [(run.run, run.requests.get("errors")) for run in runs if (run.requests.get("errors") or 0) > 0]
    if errors:
        cell += "; request errors: " + ", ".join(f"{numbers.count(errors_in_run)} in run {run}"
                                                  for run, errors_in_run in errors)
    return cell


def shorten(text: str) -> str:
    if len(text) <= VIOLATION_SHOWN_CHARACTERS:
        return text
    return text[: VIOLATION_SHOWN_CHARACTERS - 1] + "…"


def runs_cell(runs: list[LoadRun], value_of: Callable[[LoadRun], float | None] = lambda run: run.rate_per_second,
              format_value: Callable[[float | None], str] = significant) -> str:
    """``10,200 / 10,500 FAILED / 10,700``, in run order."""
    return " / ".join(format_value(value_of(run)) + (f" {FAILED}" if run.failed else "") for run in runs)


def latency_cell(summary: LoadSummary | None, percentile: str) -> str:
    return MISSING if summary is None else significant(summary.latency_ms.get(percentile))


def ratio_cell(purchases_per_second: float | None, ceiling_per_second: float | None,
               per_purchase: PerPurchase | None, unit: str) -> tuple[str, bool]:
    """The ledger ÷ ceiling cell, and whether it is per row/record (cost of a purchase
    unknown), which the table's footnote then explains."""
    if purchases_per_second is None or ceiling_per_second is None:
        return MISSING, False
    ratio = ledger_to_ceiling_ratio(purchases_per_second, ceiling_per_second, per_purchase)
    if per_purchase is None:
        return f"{significant(ratio)} per {unit}†", True
    return f"{significant(ratio)} ({numbers.count(per_purchase.amount)} {unit}s/purchase, {per_purchase.source})", False


# --- summary

def summary_table(results: Results, options: Options) -> str:
    """One row per target: the best figure of this run against it."""
    rows = [criterion_summary_row(results, target) for target in CRITERION_TARGETS]
    rows += [embedded_summary_row(results), http_summary_row(results), drop_summary_row(results)]
    return markdown_table(["what", "result (median)", "target", "gap"], rows)


def criterion_summary_row(results: Results, target: CriterionTarget) -> list[str]:
    what = f"in-process, criterion `{target.pattern}`"
    matching = [(criterion_rate(benchmark).per_second, benchmark.identifier)
                for benchmark in results.criterion if criterion_target(benchmark.identifier) is target]
    if not matching:
        return [what, NOT_MEASURED, target.description, MISSING]
    best, slowest = max(matching), min(matching)
    result = f"{significant(best[0])} {target.unit} (`{best[1]}`)"
    gap = numbers.gap_to_minimum(best[0], target.per_second)
    if len(matching) > 1:
        result = f"best {result}; slowest {significant(slowest[0])} (`{slowest[1]}`)"
        gap = f"best {gap}; slowest {numbers.gap_to_minimum(slowest[0], target.per_second)}"
    return [what, result, target.description, gap]


def embedded_summary_row(results: Results) -> list[str]:
    what = "durable embedded (engine + SQLite), best shard count"
    target = f"≥ {numbers.count(EMBEDDED_TARGET_PURCHASES_PER_SECOND)} purchases/s"
    summaries = {shards: summarize(runs) for shards, runs in results.embedded_purchases.items() if runs}
    if not summaries:
        return [what, NOT_MEASURED, target, MISSING]
    shards, best = max(summaries.items(), key=lambda item: item[1].rate_per_second)
    result = (f"{significant(best.rate_per_second)} purchases/s ({shards} shard{'' if shards == 1 else 's'}; p50 "
              f"{latency_cell(best, 'p50')} ms, p99 {latency_cell(best, 'p99')} ms){failed_mark(best.runs)}")
    return [what, result, target, numbers.gap_to_minimum(best.rate_per_second, EMBEDDED_TARGET_PURCHASES_PER_SECOND)]


def http_summary_row(results: Results) -> list[str]:
    what = "HTTP end to end, purchases"
    summary = summarize(results.http.get("purchases", []))
    target, gap = http_target("purchases", summary)
    if summary is None:
        return [what, NOT_MEASURED, target, gap]
    result = (f"{significant(summary.rate_per_second)} purchases/s, p99 {latency_cell(summary, 'p99')} ms"
              f"{failed_mark(summary.runs)}")
    return [what, result, target, gap]


def drop_summary_row(results: Results) -> list[str]:
    what = "limited drop, embedded: time to sell out"
    target = f"< {numbers.count(DROP_TARGET_SELL_OUT_MS / 1000)} s"
    if not results.embedded_drop:
        return [what, NOT_MEASURED, target, MISSING]
    sell_out = median_time_to_sell_out_ms(results.embedded_drop)
    return [what, sell_out_text(sell_out) + failed_mark(results.embedded_drop), target, drop_gap(sell_out)]


def failed_mark(runs: list[LoadRun]) -> str:
    failed = sum(run.failed for run in runs)
    return f" ({FAILED} its check in {failed} of {len(runs)} runs)" if failed else ""


# --- machine

MACHINE_FIELDS = (
    ("date", "date"),
    ("commit", "commit"),
    ("cpu_model", "CPU"),
    ("cores", "cores"),
    ("memory_gib", "memory (GiB)"),
    ("os", "OS"),
    ("rustc", "Rust"),
    ("load_average_before", "load average before (1, 5, 15 min)"),
)


def machine_table(results: Results, options: Options) -> str:
    machine = results.machine
    if machine is None:
        return not_measured_block("machine.json")
    known = dict(MACHINE_FIELDS)
    rows = [[label, machine_value(key, machine[key])] for key, label in MACHINE_FIELDS if key in machine]
    rows += [[key, machine_value(key, value)] for key, value in machine.items() if key not in known]
    return markdown_table(["what", "value"], rows)


def machine_value(key: str, value) -> str:
    if key == "commit":
        return code(str(value))
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    if isinstance(value, (dict, bool)) or value is None:
        return json.dumps(value)
    return str(value)


# --- criterion

def criterion_table(results: Results, options: Options) -> str:
    if not results.criterion:
        return not_measured_block("criterion/**/new/benchmark.json")
    headers = ["benchmark", "median / iteration", "mean / iteration", "throughput (median)", "target", "gap"]
    return markdown_table(headers, [criterion_row(benchmark) for benchmark in results.criterion])


def criterion_row(benchmark: CriterionBenchmark) -> list[str]:
    rate = criterion_rate(benchmark)
    target = criterion_target(benchmark.identifier)
    mean = MISSING if benchmark.mean_ns is None else numbers.duration_from_nanoseconds(benchmark.mean_ns)
    throughput = f"{significant(rate.per_second)} {rate.unit}" if rate.measured_as_throughput else MISSING
    if target is None:
        target_text, gap = MISSING, MISSING
    else:
        target_text = target.description
        if not rate.measured_as_throughput:
            target_text += f" (1 per iteration: {significant(rate.per_second)}/s)"
        gap = numbers.gap_to_minimum(rate.per_second, target.per_second)
    return [code(benchmark.identifier), numbers.duration_from_nanoseconds(benchmark.median_ns), mean,
            throughput, target_text, gap]


def criterion_target(identifier: str) -> CriterionTarget | None:
    return next((target for target in CRITERION_TARGETS if fnmatchcase(identifier, target.pattern)), None)


# --- embedded

def ceiling_runs_at(runs: list[CeilingRun], shards: float) -> list[CeilingRun]:
    """The ceiling runs made at ``shards`` shards; every run when none says so."""
    matching = [run for run in runs if detail_number(run, "shards") == shards]
    return matching or [run for run in runs if detail_number(run, "shards") is None]


def embedded_table(results: Results, options: Options) -> str:
    if not results.embedded_purchases and not results.sqlite_ceiling:
        return not_measured_block("embedded/purchases-shards*-run*.json", "embedded/ceiling-sqlite-run*.json")
    headers = ["shards", "purchases/s (median)", "runs (purchases/s)", "p50 ms", "p99 ms", "checks",
               "ledger rows/s ÷ SQLite ceiling",
               f"gap to target ≥ {numbers.count(EMBEDDED_TARGET_PURCHASES_PER_SECOND)} purchases/s"]
    rows, any_per_row = [], False
    for shards in expected_then_found_keys(SHARD_COUNTS, results.embedded_purchases):
        summary = summarize(results.embedded_purchases.get(shards, []))
        if summary is None:
            rows.append([str(shards), NOT_MEASURED] + [MISSING] * (len(headers) - 2))
            continue
        ceiling = median_ceiling(ceiling_runs_at(results.sqlite_ceiling, shards))
        ratio, per_row = ratio_cell(summary.rate_per_second, ceiling, embedded_rows_per_purchase(results, shards),
                                    "row")
        any_per_row |= per_row
        rows.append([
            str(shards), significant(summary.rate_per_second), runs_cell(summary.runs),
            latency_cell(summary, "p50"), latency_cell(summary, "p99"), checks_cell(summary.runs),
            ratio, numbers.gap_to_minimum(summary.rate_per_second, EMBEDDED_TARGET_PURCHASES_PER_SECOND),
        ])
    lines = [markdown_table(headers, rows), "", sqlite_ceiling_line(results)]
    if any_per_row:
        lines += ["", "† rows per purchase unknown (the runs do not report `rows_per_purchase`, and no "
                      "sqlite-ceiling run at that shard count counted them): this is purchases/s ÷ ceiling "
                      "rows/s, the share of the ceiling used if a purchase were one row; its inverse is how "
                      "many rows a purchase could cost at this rate before the ceiling is reached."]
    return "\n".join(lines)


def sqlite_ceiling_line(results: Results) -> str:
    runs = results.sqlite_ceiling
    if not runs:
        return f"SQLite ceiling: _{NOT_MEASURED}_ (no `embedded/ceiling-sqlite-*run*.json`)."
    first = runs[0]
    batch_rows = detail_number(first, "batch_rows")
    setting = ", ".join(part for part in (
        f"journal_mode={first.details['journal_mode']}" if "journal_mode" in first.details else "",
        f"synchronous={first.details['synchronous']}" if "synchronous" in first.details else "",
        f"batches of {numbers.count(batch_rows)} rows" if batch_rows is not None else "",
    ) if part)
    setting = f" ({setting})" if setting else ""
    shard_counts = sorted({shards for run in runs if (shards := detail_number(run, "shards")) is not None})
    lines = [f"SQLite ceiling{setting}, median of the runs at each shard count:", ""]
    for shards in shard_counts or [None]:
        at = ceiling_runs_at(runs, shards) if shards is not None else runs
        rates = " / ".join(significant(run.rate_per_second) for run in at)
        label = (f"{shards:g} shard{'' if shards == 1 else 's'}" if shards is not None
                 else "shard count not recorded")
        line = f"* {label}: **{significant(median_ceiling(at))} rows/s** ({rates})"
        purchases = median(detail_number(run, "purchases_per_second") for run in at)
        rows = median(detail_number(run, "rows_per_purchase") for run in at)
        if purchases is not None and rows is not None:
            line += f" = {significant(purchases)} purchases/s at {significant(rows)} rows per purchase"
        row_bytes, row_count = detail_number(at[0], "row_bytes"), detail_number(at[0], "rows")
        if row_bytes is not None and row_count:
            line += f", {numbers.count(row_bytes / row_count)} bytes per row on average"
        lines.append(line)
    return "\n".join(lines)


def detail_number(run: CeilingRun, name: str) -> float | None:
    value = run.details.get(name)
    return float(value) if is_number(value) else None


# --- http

def http_table(results: Results, options: Options) -> str:
    if not results.http:
        return not_measured_block("http/*-run*.json")
    headers = ["workload", "rate/s (median)", "runs (rate/s)", "p50 ms", "p99 ms", "p99.9 ms", "checks",
               "notes", "target", "gap"]
    rows = []
    for workload in expected_then_found_keys(HTTP_WORKLOADS, results.http):
        summary = summarize(results.http.get(workload, []))
        target, gap = http_target(workload, summary)
        if summary is None:
            rows.append([workload, NOT_MEASURED] + [MISSING] * 6 + [target, MISSING])
            continue
        rows.append([
            workload, significant(summary.rate_per_second), runs_cell(summary.runs),
            latency_cell(summary, "p50"), latency_cell(summary, "p99"), latency_cell(summary, "p99_9"),
            checks_cell(summary.runs), http_notes(workload, summary.runs), target, gap,
        ])
    return markdown_table(headers, rows)


def open_loop_table(results: Results, options: Options) -> str:
    """Purchases at fixed offered rates: where the p99 leaves the latency target."""
    if not results.open_loop_sweep:
        return not_measured_block("http/open-loop-rate*-run*.json")
    headers = ["offered/s", "answered/s (median)", "p50 ms", "p99 ms", "p99.9 ms",
               "dropped by the generator (median)", "checks", f"p99 ≤ {numbers.count(HTTP_TARGET_P99_MS)} ms"]
    rows, within = [], []
    for rate in expected_then_found_keys(OPEN_LOOP_RATES, results.open_loop_sweep):
        summary = summarize(results.open_loop_sweep.get(rate, []))
        if summary is None:
            rows.append([numbers.count(rate), NOT_MEASURED] + [MISSING] * 6)
            continue
        p99 = summary.latency_ms.get("p99")
        dropped = median_request_count(summary.runs, "dropped_by_generator") or 0
        meets = p99 is not None and p99 <= HTTP_TARGET_P99_MS and dropped == 0 and not summary.failed_runs
        if meets:
            within.append(rate)
        rows.append([
            numbers.count(rate), significant(summary.rate_per_second), latency_cell(summary, "p50"),
            latency_cell(summary, "p99"), latency_cell(summary, "p99_9"), numbers.count(dropped),
            checks_cell(summary.runs), "yes" if meets else "no",
        ])
    best = (f"Highest offered rate answered with p99 ≤ {numbers.count(HTTP_TARGET_P99_MS)} ms and nothing "
            f"dropped: **{numbers.count(max(within))} purchases/s**."
            if within else f"No offered rate was answered with p99 ≤ {numbers.count(HTTP_TARGET_P99_MS)} ms.")
    return "\n".join([markdown_table(headers, rows), "", best])


def http_target(workload: str, summary: LoadSummary | None) -> tuple[str, str]:
    if workload != "purchases":
        return MISSING, MISSING
    target = f"≥ {numbers.count(HTTP_TARGET_PURCHASES_PER_SECOND)}/s, p99 ≤ {numbers.count(HTTP_TARGET_P99_MS)} ms"
    if summary is None:
        return target, MISSING
    rate_gap = numbers.gap_to_minimum(summary.rate_per_second, HTTP_TARGET_PURCHASES_PER_SECOND)
    latency_gap = numbers.gap_to_maximum(summary.latency_ms.get("p99"), HTTP_TARGET_P99_MS)
    if rate_gap == latency_gap == "met":
        return target, "met"
    return target, f"rate {rate_gap}, p99 {latency_gap}"


def http_notes(workload: str, runs: list[LoadRun]) -> str:
    if workload == "drop":
        return f"time to sell out (median): {sell_out_text(median_time_to_sell_out_ms(runs))}"
    if workload == "open-loop":
        offered = significant(median_parameter(runs, "rate_per_second"))
        dropped = median_request_count(runs, "dropped_by_generator")
        return (f"offered {offered}/s; dropped by the generator (median): {numbers.count(dropped)} "
                f"(runs: {runs_cell(runs, lambda run: run.requests.get('dropped_by_generator'), numbers.count)})")
    return MISSING


def sell_out_text(milliseconds: float | None) -> str:
    if milliseconds is None:
        return MISSING
    if milliseconds == float("inf"):
        return "not sold out"
    return f"{significant(milliseconds)} ms"


# --- drop

def drop_table(results: Results, options: Options) -> str:
    series = (("embedded", results.embedded_drop, "embedded/drop-run*.json"),
              ("HTTP", results.http.get("drop", []), "http/drop-run*.json"))
    if not any(runs for _, runs, _ in series):
        return not_measured_block(*(files for _, _, files in series))
    headers = ["mode", "time to sell out (median)", "runs (ms)", "sold (median)", "oversold (max)", "checks",
               f"gap to target < {numbers.count(DROP_TARGET_SELL_OUT_MS / 1000)} s"]
    rows = [drop_row(mode, runs, len(headers)) for mode, runs, _ in series]
    return "\n".join([markdown_table(headers, rows), "",
                      "A run that did not sell out counts as infinitely slow in the median."])


def drop_row(mode: str, runs: list[LoadRun], width: int) -> list[str]:
    if not runs:
        return [mode, NOT_MEASURED] + [MISSING] * (width - 2)
    sell_out = median_time_to_sell_out_ms(runs)
    return [mode, sell_out_text(sell_out),
            runs_cell(runs, time_to_sell_out_ms, lambda value: sell_out_text(value).removesuffix(" ms")),
            numbers.count(median_fact(runs, "sold")), oversold_cell(runs), checks_cell(runs),
            drop_gap(sell_out)]


def oversold_cell(runs: list[LoadRun]) -> str:
    values = [value for value in (oversold(run) for run in runs) if value is not None]
    if not values:
        return MISSING
    worst = max(values)
    return numbers.count(worst) if worst == 0 else f"{numbers.count(worst)} {FAILED}"


def drop_gap(sell_out_ms: float) -> str:
    if sell_out_ms == float("inf"):
        return "not met (not sold out)"
    if sell_out_ms < DROP_TARGET_SELL_OUT_MS:
        return "met"
    return numbers.factor(sell_out_ms / DROP_TARGET_SELL_OUT_MS)


# --- distributed

def distributed_table(results: Results, options: Options) -> str:
    purchases, kafka, cql = results.distributed_purchases, results.kafka_ceiling, results.cql_ceiling
    if not (purchases or kafka or cql):
        return not_measured_block("distributed/purchases-engines*-run*.json",
                                  "distributed/ceiling-kafka-engines*-run*.json",
                                  "distributed/ceiling-cql-engines*-run*.json")
    headers = ["engines", "purchases/s (median)", "runs (purchases/s)", "p50 ms", "p99 ms", "checks",
               "Kafka ceiling records/s (median)", "CQL ceiling rows/s (median)",
               "ledger events/s ÷ Kafka ceiling", "scaling vs 1 engine"]
    baseline = summarize(purchases.get(1, []))
    rows, any_per_record = [], False
    for engines in expected_then_found_keys(ENGINE_COUNTS, purchases, kafka, cql):
        summary = summarize(purchases.get(engines, []))
        kafka_ceiling = median_ceiling(kafka.get(engines, []))
        cql_ceiling = median_ceiling(cql.get(engines, []))
        ceilings = [NOT_MEASURED if ceiling is None else significant(ceiling)
                    for ceiling in (kafka_ceiling, cql_ceiling)]
        if summary is None:
            rows.append([str(engines), NOT_MEASURED] + [MISSING] * 4 + ceilings + [MISSING, MISSING])
            continue
        ratio, per_record = ratio_cell(summary.rate_per_second, kafka_ceiling,
                                       distributed_events_per_purchase(results, engines, options), "event")
        any_per_record |= per_record
        rows.append([
            str(engines), significant(summary.rate_per_second), runs_cell(summary.runs),
            latency_cell(summary, "p50"), latency_cell(summary, "p99"), checks_cell(summary.runs),
            *ceilings, ratio, scaling_cell(engines, summary, baseline),
        ])
    lines = [markdown_table(headers, rows)]
    if any_per_record:
        lines += ["", "† events per purchase unknown (not in the runs' facts or parameters, no "
                      "`--events-per-purchase`, no sqlite-ceiling count at the Kafka ceiling's shard "
                      "count): this is purchases/s ÷ ceiling records/s, the share of the "
                      "ceiling used if a purchase were one record; its inverse is how many records a "
                      "purchase could cost at this rate before the ceiling is reached."]
    return "\n".join(lines)


def scaling_cell(engines: int, summary: LoadSummary, baseline: LoadSummary | None) -> str:
    if engines == 1:
        return "1× (baseline)"
    if baseline is None:
        return MISSING
    return f"{numbers.factor(summary.rate_per_second / baseline.rate_per_second)} (ideal {engines}×)"


# --- peer

def peer_table(results: Results, options: Options) -> str:
    ledger_runs = {run.run: run for run in results.peer_ledger}
    peer_runs = {run.run: run for run in results.peer_peer}
    if not ledger_runs and not peer_runs:
        return not_measured_block("peer/ledger-run*.json", "peer/peer-run*.json")
    headers = ["run", "ledger purchases/s", "peer purchases/s", "ledger p50 ms", "peer p50 ms",
               "ledger p99 ms", "peer p99 ms", "checks"]
    rows = [peer_run_row(number, ledger_runs.get(number), peer_runs.get(number))
            for number in sorted(set(ledger_runs) | set(peer_runs))]
    ledger, peer = summarize(results.peer_ledger), summarize(results.peer_peer)
    rows.append(["**median**", rate_text(ledger), rate_text(peer),
                 latency_cell(ledger, "p50"), latency_cell(peer, "p50"),
                 latency_cell(ledger, "p99"), latency_cell(peer, "p99"), MISSING])
    rows.append(["**ledger ÷ peer**", peer_ratio(ledger, peer, "rate"), MISSING,
                 peer_ratio(ledger, peer, "p50"), MISSING, peer_ratio(ledger, peer, "p99"), MISSING, MISSING])
    return markdown_table(headers, rows)


def peer_run_row(number: int, ledger: LoadRun | None, peer: LoadRun | None) -> list[str]:
    def rate(run):
        return NOT_MEASURED if run is None else significant(run.rate_per_second) + (f" {FAILED}" if run.failed else "")

    def latency(run, percentile):
        return MISSING if run is None else significant(run.latency_ms.get(percentile))

    checks = "; ".join(f"{name}: {checks_cell([run])}" for name, run in (("ledger", ledger), ("peer", peer)) if run)
    return [str(number), rate(ledger), rate(peer), latency(ledger, "p50"), latency(peer, "p50"),
            latency(ledger, "p99"), latency(peer, "p99"), checks]


def rate_text(summary: LoadSummary | None) -> str:
    return NOT_MEASURED if summary is None else significant(summary.rate_per_second)


def peer_ratio(ledger: LoadSummary | None, peer: LoadSummary | None, measure: str) -> str:
    if ledger is None or peer is None:
        return MISSING
    if measure == "rate":
        numerator, denominator = ledger.rate_per_second, peer.rate_per_second
    else:
        numerator, denominator = ledger.latency_ms.get(measure), peer.latency_ms.get(measure)
    if numerator is None or not denominator:
        return MISSING
    return numbers.factor(numerator / denominator)


# --- commands

def commands_table(results: Results, options: Options) -> str:
    if not results.commands:
        return not_measured_block("commands.tsv")
    stages: dict[str, list] = {}
    for command in results.commands:
        stages.setdefault(command.stage, []).append(command)
    blocks = []
    for stage, commands in stages.items():
        lines = []
        for command in commands:
            lines += [f"# {command.result_file}", command.command]
        blocks.append(f"**{stage}**\n\n" + fenced("\n".join(lines), "sh"))
    return "\n\n".join(blocks)


def fenced(text: str, language: str) -> str:
    """A fenced code block whose fence is longer than any run of backticks inside."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"


TABLES: dict[str, Callable[[Results, Options], str]] = {
    "summary": summary_table,
    "machine": machine_table,
    "criterion": criterion_table,
    "embedded": embedded_table,
    "http": http_table,
    "open-loop": open_loop_table,
    "drop": drop_table,
    "distributed": distributed_table,
    "peer": peer_table,
    "commands": commands_table,
}
