#!/usr/bin/env python3
"""Tests of scripts/bench_report (tables, template, loading; not the drawing, which needs
matplotlib): python3 scripts/bench_report_test.py

Each test builds a results directory of synthetic runs in a temporary directory."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
import unittest
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import cli, numbers, plots, tables  # noqa: E402
from bench_report.results import load_results  # noqa: E402
from bench_report.summaries import Options  # noqa: E402
from bench_report.template import TemplateError, find_placeholders  # noqa: E402

KNOWN_NAMES = {"table": set(tables.TABLES), "plot": set(plots.PLOTS)}


# --- fixtures

def load_run(rate: float, p50: float = 20.0, p99: float = 90.0, p99_9: float = 120.0,
             workload: str = "purchases", mode: str = "embedded", facts: dict | None = None,
             parameters: dict | None = None, violations: list[str] | None = None,
             errors: int = 0, dropped: int = 0) -> dict:
    return {
        "workload": workload, "mode": mode, "label": f"{mode} (256 concurrent)",
        "parameters": parameters or {"concurrency": 256}, "elapsed_s": 2.0,
        "requests": {"planned": 20000, "sent": 20000, "answered": 20000, "succeeded": 20000 - errors,
                     "rejected": 0, "errors": errors, "dropped_by_generator": dropped},
        "rate_per_second": rate,
        "latency_ms": {"p50": p50, "p90": p50 * 2, "p99": p99, "p99_9": p99_9, "max": p99_9 * 2, "mean": p50},
        "counts_by_code": {"201": 20000 - errors},
        "facts": facts or {},
        "invariants_checked": "every purchase granted once",
        "violations": violations or [],
        "histogram": [{"value_us": 500, "count": 10}, {"value_us": 20000, "count": 80},
                      {"value_us": 90000, "count": 10}],
    }


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def write_criterion(root: Path, directory: str, full_id: str, median_ns: float, mean_ns: float,
                    elements: int | None) -> None:
    new = root / "criterion" / directory / "new"
    write_json(new / "benchmark.json", {
        "group_id": full_id.split("/")[0], "function_id": full_id.split("/", 1)[1], "value_str": None,
        "throughput": {"Elements": elements} if elements else None, "full_id": full_id,
        "directory_name": directory})
    write_json(new / "estimates.json", {"mean": {"point_estimate": mean_ns},
                                        "median": {"point_estimate": median_ns}})


def write_results(root: Path) -> None:
    """A run of scripts/benchmarks with some stages missing: embedded shards 8, HTTP resale,
    the Kafka ceiling for 2 engines, the CQL ceilings; with one run failing its invariants
    (embedded, 4 shards), one drop that did not sell out, a malformed file and a file of an
    unknown name."""
    write_json(root / "machine.json", {
        "date": "2026-11-28T04:10:00Z", "commit": "abc1234", "cpu_model": "Test CPU", "cores": 2,
        "memory_gib": 24, "os": "Debian GNU/Linux 12", "rustc": "rustc 1.95.0",
        "load_average_before": [0.1, 0.2, 0.3], "kernel": "6.1"})
    (root / "commands.tsv").write_text(
        "embedded/ceiling-sqlite-run1.json\ttarget/release/sqlite-ceiling --rows 100000\n"
        "# a comment\n"
        "http/purchases-run1.json\tledger bench --mode http | tee ```x```\n"
        "embedded/purchases-shards1-run1.json\tledger bench --mode embedded --shards 1\n"
        "no tab on this line\n"
        "criterion\tcargo bench -p ledger-engine --bench engine\n", encoding="utf-8")
    write_criterion(root, "per_command/grant", "per_command/grant", 2_000.0, 2_100.0, None)
    write_criterion(root, "engine_primary_purchase/1_shards", "engine_primary_purchase/1_shards",
                    267_300_000.0, 268_000_000.0, 20_000)
    write_criterion(root, "codec/seal_and_encode", "codec/seal_and_encode", 370.9, 371.0, 1)
    write_criterion(root, "per_command/primary_purchase", "per_command/primary_purchase", 5_000.0, 5_000.0, None)
    for run, rate in enumerate((120_000.0, 100_000.0, 130_000.0), start=1):
        write_json(root / f"embedded/ceiling-sqlite-run{run}.json", {
            "rows_per_second": rate, "rows": 100000, "seconds": 1.0, "batch_rows": 1000,
            "row_bytes": 200, "journal_mode": "WAL", "synchronous": "FULL",
            "shards": 4, "rows_per_purchase": 14, "purchases_per_second": rate / 14})
    shard_runs = {
        1: [(10_200.0, 20.0, 100.0), (12_000.0, 22.0, 110.0), (10_500.0, 21.0, 90.0)],
        2: [(11_000.0, 20.0, 100.0), (11_200.0, 20.0, 100.0), (11_100.0, 20.0, 100.0)],
        4: [(9_700.0, 25.0, 110.0), (9_800.0, 25.0, 110.0), (9_900.0, 25.0, 110.0)],
    }
    for shards, runs in shard_runs.items():
        for run, (rate, p50, p99) in enumerate(runs, start=1):
            facts = {"rows_per_purchase": 12} if shards == 1 else {}
            violations = ["buyer b7 | balance 10 != 20"] if (shards, run) == (4, 2) else []
            write_json(root / f"embedded/purchases-shards{shards}-run{run}.json",
                       load_run(rate, p50, p99, facts=facts, violations=violations, parameters={"shards": shards}))
    for run, sell_out in enumerate((500.0, 700.0, None), start=1):
        write_json(root / f"embedded/drop-run{run}.json", load_run(
            50_000.0, workload="drop", facts={"sold": 1000 if sell_out else 900, "time_to_sell_out_ms": sell_out},
            parameters={"supply": 1000}))
    for run, rate in enumerate((5_280.0, 5_250.0, 4_750.0), start=1):
        write_json(root / f"http/purchases-run{run}.json",
                   load_run(rate, 46.5, 124.7, 200.0, mode="http", errors=3 if run == 3 else 0))
        write_json(root / f"http/drop-run{run}.json", load_run(
            20_000.0, mode="http", workload="drop",
            facts={"sold": 1000, "time_to_sell_out_ms": 1500.0 + run * 100}, parameters={"supply": 1000}))
        write_json(root / f"http/catalogue-run{run}.json", load_run(6_000.0, mode="http", workload="catalogue"))
        write_json(root / f"http/open-loop-run{run}.json", load_run(
            4_000.0, mode="http", dropped=run * 100, parameters={"rate_per_second": 5000.0}))
        # The sweep: 1,000/s and 2,000/s within p99 ≤ 20 ms (2,000/s only in
        # the median), 3,000/s over it, 4,000/s dropping requests.
        write_json(root / f"http/open-loop-rate1000-run{run}.json", load_run(1_000.0, 2.0, 8.0, mode="http"))
        write_json(root / f"http/open-loop-rate2000-run{run}.json",
                   load_run(2_000.0, 3.0, 30.0 if run == 1 else 15.0, mode="http"))
        write_json(root / f"http/open-loop-rate3000-run{run}.json", load_run(2_990.0, 9.0, 45.0, mode="http"))
        write_json(root / f"http/open-loop-rate4000-run{run}.json",
                   load_run(3_500.0, 9.0, 12.0, mode="http", dropped=500))
    write_json(root / "distributed/ceiling-kafka-engines1-run1.json", {"records_per_second": 200_000.0, "shards": 4})
    write_json(root / "distributed/ceiling-kafka-engines1-run2.json", {"records_per_second": 220_000.0, "shards": 4})
    for run, (one, two) in enumerate(((8_000.0, 14_000.0), (7_000.0, 13_000.0), (9_000.0, 15_000.0)), start=1):
        write_json(root / f"distributed/purchases-engines1-run{run}.json",
                   load_run(one, 30.0, 80.0, mode="http", facts={"events_per_purchase": 17}))
        write_json(root / f"distributed/purchases-engines2-run{run}.json", load_run(two, 35.0, 90.0, mode="http"))
    for run, (ledger, peer) in enumerate(((10_000.0, 4_000.0), (12_000.0, 5_000.0)), start=1):
        write_json(root / f"peer/ledger-run{run}.json", load_run(ledger, p50=10.0 + run, mode="http"))
        write_json(root / f"peer/peer-run{run}.json", load_run(peer, p50=40.0 + run, mode="http"))
    (root / "http/resale-run1.json").write_text("{not json", encoding="utf-8")
    write_json(root / "http/purchase-run4.json", load_run(1.0))


class ResultsTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.temporary = tempfile.TemporaryDirectory()
        self.addCleanup(self.temporary.cleanup)
        self.root = Path(self.temporary.name)
        self.results_directory = self.root / "results"
        write_results(self.results_directory)
        self.results = load_results(self.results_directory)

    def table(self, name: str, options: Options = Options()) -> str:
        return tables.TABLES[name](self.results, options)

    def row(self, table: str, first_cell: str) -> list[str]:
        """The cells of the table row whose first cell is first_cell."""
        for line in table.splitlines():
            cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
            if line.startswith("|") and cells[0] == first_cell:
                return cells
        self.fail(f"no row {first_cell!r} in:\n{table}")


# --- tests

class NumberFormattingTest(unittest.TestCase):
    def test_three_significant_figures_with_thousands_separators(self):
        self.assertEqual(numbers.significant(10_512), "10,500")
        self.assertEqual(numbers.significant(1_234_567), "1,230,000")
        self.assertEqual(numbers.significant(23.34), "23.3")
        self.assertEqual(numbers.significant(0.51234), "0.512")
        self.assertEqual(numbers.significant(9.996), "10.0")

    def test_durations_and_gaps(self):
        self.assertEqual(numbers.duration_from_nanoseconds(370.9), "371 ns")
        self.assertEqual(numbers.duration_from_nanoseconds(2_000), "2.00 µs")
        self.assertEqual(numbers.duration_from_nanoseconds(267_300_000), "267 ms")
        self.assertEqual(numbers.gap_to_minimum(10_500, 100_000), "9.52×")
        self.assertEqual(numbers.gap_to_minimum(200_000, 100_000), "met")
        self.assertEqual(numbers.gap_to_maximum(124.7, 20), "6.24×")


class LoadingTest(ResultsTestCase):
    def test_runs_are_grouped_by_key_and_ordered_by_run(self):
        self.assertEqual(sorted(self.results.embedded_purchases), [1, 2, 4])
        self.assertEqual([run.run for run in self.results.embedded_purchases[1]], [1, 2, 3])
        self.assertEqual(list(self.results.http), ["purchases", "drop", "catalogue", "open-loop"])

    def test_each_missing_or_bad_piece_is_a_warning(self):
        warnings = "\n".join(self.results.warnings)
        for expected in ("missing embedded/purchases-shards8-run*.json",
                         "missing http/resale-run*.json",
                         "missing distributed/ceiling-kafka-engines2-run*.json",
                         "missing distributed/ceiling-cql-engines1-run*.json",
                         "http/resale-run1.json left out: resale-run1.json is not readable JSON",
                         "http/purchase-run4.json ignored",
                         "commands.tsv line 5 left out"):
            self.assertIn(expected, warnings)
        self.assertNotIn("embedded/purchases-shards1", warnings)

    def test_an_empty_directory_gives_not_measured_everywhere(self):
        empty = self.root / "empty"
        empty.mkdir()
        results = load_results(empty)
        for name, table in tables.TABLES.items():
            with self.subTest(table=name):
                self.assertIn("not measured in this run", table(results, Options()))
        self.assertTrue(all(plot.data(results, Options()) is None for plot in plots.PLOTS.values()))
        self.assertIn("missing machine.json: the machine table is not measured in this run", results.warnings)


class MachineAndCriterionTest(ResultsTestCase):
    def test_machine(self):
        table = self.table("machine")
        self.assertEqual(self.row(table, "commit")[1], "`abc1234`")
        self.assertEqual(self.row(table, "load average before (1, 5, 15 min)")[1], "0.1, 0.2, 0.3")
        self.assertEqual(self.row(table, "kernel")[1], "6.1")

    def test_criterion_medians_throughput_and_targets(self):
        table = self.table("criterion")
        purchase = self.row(table, "`engine_primary_purchase/1_shards`")
        self.assertEqual(purchase[1:4], ["267 ms", "268 ms", "74,800 elements/s"])
        self.assertEqual(purchase[4:], ["≥ 1,000,000 purchases/s per core", "13.4×"])
        command = self.row(table, "`per_command/grant`")
        self.assertEqual(command[3], "—")
        self.assertIn("500,000/s", command[4])
        self.assertEqual(command[5], "2.00×")
        self.assertEqual(self.row(table, "`codec/seal_and_encode`")[4:], ["—", "—"])


class SummaryTest(ResultsTestCase):
    def test_best_figures_against_the_targets(self):
        table = self.table("summary")
        self.assertEqual(self.row(table, "in-process, criterion `*purchase*`")[1:],
                         ["74,800 purchases/s (`engine_primary_purchase/1_shards`)",
                          "≥ 1,000,000 purchases/s per core", "13.4×"])
        self.assertEqual(self.row(table, "in-process, criterion `replay/*`")[1], "not measured in this run")
        # per_command/primary_purchase is counted under per_command/*, its first matching target
        self.assertEqual(self.row(table, "in-process, criterion `per_command/*`")[1:],
                         ["best 500,000 commands/s (`per_command/grant`); slowest 200,000 "
                          "(`per_command/primary_purchase`)", "≥ 1,000,000 commands/s per core",
                          "best 2.00×; slowest 5.00×"])
        self.assertEqual(self.row(table, "durable embedded (engine + SQLite), best shard count")[1:],
                         ["11,100 purchases/s (2 shards; p50 20.0 ms, p99 100 ms)", "≥ 100,000 purchases/s",
                          "9.01×"])
        self.assertEqual(self.row(table, "HTTP end to end, purchases")[3], "rate 3.81×, p99 6.24×")
        self.assertEqual(self.row(table, "limited drop, embedded: time to sell out")[1:], ["700 ms", "< 1 s", "met"])

    def test_a_failed_check_behind_a_figure_is_marked(self):
        for path in self.results_directory.glob("embedded/purchases-shards2-run1.json"):
            write_json(path, dict(json.loads(path.read_text()), violations=["money not conserved"]))
        self.results = load_results(self.results_directory)
        self.assertIn("(**FAILED** its check in 1 of 3 runs)",
                      self.row(self.table("summary"), "durable embedded (engine + SQLite), best shard count")[1])


class OpenLoopSweepTest(ResultsTestCase):
    def test_each_rate_and_the_highest_within_the_latency_target(self):
        table = self.table("open-loop")
        self.assertEqual(self.row(table, "1,000")[3], "8.00")
        self.assertEqual(self.row(table, "1,000")[7], "yes")
        self.assertEqual(self.row(table, "2,000")[3], "15.0", "median of 30 / 15 / 15")
        self.assertEqual(self.row(table, "3,000")[7], "no")
        self.assertEqual(self.row(table, "4,000")[5], "500")
        self.assertEqual(self.row(table, "4,000")[7], "no", "a run that drops requests does not count")
        self.assertEqual(self.row(table, "5,000")[1], "not measured in this run")
        self.assertIn("**2,000 purchases/s**", table)


class EmbeddedTest(ResultsTestCase):
    def test_median_rate_latencies_and_runs(self):
        row = self.row(self.table("embedded"), "1")
        self.assertEqual(row[1:5], ["10,500", "10,200 / 12,000 / 10,500", "21.0", "100"])
        self.assertEqual(row[5], "passed (3 runs)")

    def test_ratio_to_the_sqlite_ceiling(self):
        table = self.table("embedded")
        # The fixture's ceiling ran at 4 shards only: median 120,000 rows/s.
        self.assertIn("* 4 shards: **120,000 rows/s** (120,000 / 100,000 / 130,000) = "
                      "8,570 purchases/s at 14.0 rows per purchase", table)
        # shards 4: no rows_per_purchase in the runs, but sqlite-ceiling counted 14 at 4 shards
        self.assertEqual(self.row(table, "4")[6], "1.14 (14 rows/purchase, counted by sqlite-ceiling at 4 shards)")
        # shards 1 and 2: no ceiling at that shard count, so no ratio (a 4-shard
        # ceiling does not bound a 1-shard ledger: its rows per purchase differ)
        self.assertEqual(self.row(table, "1")[6], "—")
        self.assertEqual(self.row(table, "2")[6], "—")

    def test_gap_to_the_target(self):
        self.assertEqual(self.row(self.table("embedded"), "1")[7], "9.52×")

    def test_a_failed_invariant_check_is_marked(self):
        row = self.row(self.table("embedded"), "4")
        self.assertTrue(row[5].startswith("**FAILED** in 1 of 3 runs (run 2: buyer b7"), row[5])
        self.assertIn("buyer b7 \\| balance", row[5])
        self.assertEqual(row[2], "9,700 / 9,800 **FAILED** / 9,900")
        self.assertNotIn("FAILED", "".join(self.row(self.table("embedded"), "2")))

    def test_a_missing_shard_count_is_not_measured(self):
        self.assertEqual(self.row(self.table("embedded"), "8")[1], "not measured in this run")


class HttpAndDropTest(ResultsTestCase):
    def test_http_purchases_against_the_target(self):
        row = self.row(self.table("http"), "purchases")
        self.assertEqual(row[1:6], ["5,250", "5,280 / 5,250 / 4,750", "46.5", "125", "200"])
        self.assertIn("request errors: 3 in run 3", row[6])
        self.assertEqual(row[8:], ["≥ 20,000/s, p99 ≤ 20 ms", "rate 3.81×, p99 6.24×"])

    def test_http_notes_and_missing_workload(self):
        table = self.table("http")
        self.assertEqual(self.row(table, "drop")[7], "time to sell out (median): 1,700 ms")
        self.assertIn("dropped by the generator (median): 200", self.row(table, "open-loop")[7])
        self.assertIn("offered 5,000/s", self.row(table, "open-loop")[7])
        self.assertEqual(self.row(table, "resale")[1], "not measured in this run")

    def test_drop_median_counts_a_run_not_sold_out_as_slowest(self):
        table = self.table("drop")
        embedded = self.row(table, "embedded")
        # runs 500 ms, 700 ms, not sold out → median 700 ms
        self.assertEqual(embedded[1:3], ["700 ms", "500 / 700 / not sold out"])
        self.assertEqual(embedded[3:5], ["1,000", "0"])
        self.assertEqual(embedded[6], "met")
        self.assertEqual(self.row(table, "HTTP")[6], "1.70×")

    def test_oversold_is_marked_failed(self):
        write_json(self.results_directory / "embedded/drop-run4.json",
                   load_run(1.0, workload="drop", facts={"sold": 1003, "time_to_sell_out_ms": 10.0},
                            parameters={"supply": 1000}))
        self.results = load_results(self.results_directory)
        self.assertEqual(self.row(self.table("drop"), "embedded")[4], "3 **FAILED**")


class DistributedAndPeerTest(ResultsTestCase):
    def test_distributed_ratio_to_the_kafka_ceiling_and_scaling(self):
        table = self.table("distributed")
        one, two = self.row(table, "1"), self.row(table, "2")
        self.assertEqual(one[1], "8,000")
        self.assertEqual(one[6:8], ["210,000", "not measured in this run"])
        # 8,000 purchases/s × 17 events/purchase ÷ 210,000 records/s
        self.assertEqual(one[8], "0.648 (17 events/purchase, reported by the runs)")
        self.assertEqual(two[6], "not measured in this run")
        self.assertEqual(two[8], "—")
        self.assertEqual(two[9], "1.75× (ideal 2×)")

    def test_distributed_ratio_with_events_counted_by_sqlite_ceiling(self):
        for path in self.results_directory.glob("distributed/purchases-engines1-run*.json"):
            write_json(path, load_run(8_000.0, mode="http"))
        self.results = load_results(self.results_directory)
        self.assertEqual(self.row(self.table("distributed"), "1")[8],
                         "0.533 (14 events/purchase, events + messages counted by sqlite-ceiling at 4 shards)")

    def test_distributed_ratio_without_events_per_purchase(self):
        for path in self.results_directory.glob("distributed/purchases-engines1-run*.json"):
            write_json(path, load_run(8_000.0, mode="http"))
        for path in self.results_directory.glob("distributed/ceiling-kafka-engines1-run*.json"):
            write_json(path, dict(json.loads(path.read_text()), shards=8))
        self.results = load_results(self.results_directory)
        self.assertEqual(self.row(self.table("distributed"), "1")[8], "0.0381 per event†")
        self.assertIn("† events per purchase unknown", self.table("distributed"))
        with_option = self.row(self.table("distributed", Options(events_per_purchase=10)), "1")[8]
        self.assertEqual(with_option, "0.381 (10 events/purchase, --events-per-purchase)")

    def test_peer_medians_and_ratio(self):
        table = self.table("peer")
        self.assertEqual(self.row(table, "1")[1:3], ["10,000", "4,000"])
        self.assertEqual(self.row(table, "**median**")[1:5], ["11,000", "4,500", "11.5", "41.5"])
        ratio = self.row(table, "**ledger ÷ peer**")
        self.assertEqual((ratio[1], ratio[3]), ("2.44×", "0.277×"))


class PlotDataTest(ResultsTestCase):
    """The data behind the plots (pure; the drawing itself needs matplotlib)."""

    def test_latency_curves_are_of_the_median_run_and_cumulative(self):
        write_json(self.results_directory / "http/catalogue-run2.json", dict(
            load_run(7_000.0, mode="http", workload="catalogue"),
            histogram=[{"value_us": 3000, "count": 1}, {"value_us": 1000, "count": 3}, {"value_us": 2000, "count": 4}]))
        self.results = load_results(self.results_directory)
        curves = {curve.label: curve for curve in plots.latency_http_data(self.results, Options())}
        self.assertEqual(sorted(curves), ["catalogue (run 1)", "drop (run 1)", "open-loop (run 1)",
                                          "purchases (run 2)"])
        run = next(run for run in self.results.http["catalogue"] if run.run == 2)
        self.assertEqual(plots.cumulative_fractions(run.histogram), ([1.0, 2.0, 3.0], [0.375, 0.875, 1.0]))

    def test_the_kafka_ceiling_is_converted_to_purchases(self):
        scaling = plots.scaling_engines_data(self.results, Options())
        self.assertEqual(scaling.purchases.rates, {1: [8_000.0, 7_000.0, 9_000.0], 2: [14_000.0, 13_000.0, 15_000.0]})
        self.assertEqual(scaling.ceiling_by_engines, {1: 210_000.0 / 17})
        self.assertEqual(scaling.ceiling_label, "Kafka ceiling ÷ 17 events/purchase")

    def test_plots_without_data_are_skipped(self):
        for path in self.results_directory.glob("peer/peer-run*.json"):
            path.unlink()
        self.results = load_results(self.results_directory)
        self.assertIsNone(plots.peer_data(self.results, Options()))
        self.assertIsNotNone(plots.scaling_shards_data(self.results, Options()))


class CommandsTest(ResultsTestCase):
    def test_commands_grouped_by_stage_in_order(self):
        table = self.table("commands")
        self.assertLess(table.index("**embedded**"), table.index("**http**"))
        self.assertEqual(table.count("**embedded**"), 1)
        self.assertIn("# embedded/purchases-shards1-run1.json\nledger bench --mode embedded --shards 1", table)
        self.assertIn("**criterion**\n\n```sh\n# criterion\ncargo bench", table)
        # the fence is longer than the longest run of backticks in the commands
        self.assertIn("````sh\n# http/purchases-run1.json\nledger bench --mode http | tee ```x```\n````", table)
        self.assertIn("```sh\n# embedded/ceiling-sqlite-run1.json\n", table)


class TemplateTest(ResultsTestCase):
    def run_report(self, template_text: str) -> tuple[int, str, str, list[str]]:
        """Runs the command line with a stand-in plot writer; returns the exit code, the
        report (or ""), stderr and the plots written."""
        template = self.root / "template.md"
        template.write_text(template_text, encoding="utf-8")
        output = self.root / "out" / "BENCHMARKS.md"
        drawn = []

        def plot_writer(plot, data, path):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(plot.name)
            drawn.append(plot.name)

        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main([str(self.results_directory), "--template", str(template), "--output", str(output),
                             "--plots", str(self.root / "out" / "docs" / "benchmarks")], plot_writer=plot_writer)
        report = output.read_bytes().decode("utf-8") if output.exists() else ""
        return code, report, stderr.getvalue(), drawn

    def test_text_outside_placeholders_is_copied_verbatim(self):
        template = "# Benchmarks\r\n\r\nSome {prose} with } braces.\n\n{{ table:machine }}\n\nend\n"
        code, report, _, _ = self.run_report(template)
        self.assertEqual(code, 0)
        self.assertTrue(report.startswith("# Benchmarks\r\n\r\nSome {prose} with } braces.\n\n| what | value |"))
        self.assertTrue(report.endswith("| kernel | 6.1 |\n\nend\n"))

    def test_plots_are_linked_relative_to_the_output_or_not_measured(self):
        (self.root / "out" / "docs" / "benchmarks").mkdir(parents=True)
        (self.root / "out" / "docs" / "benchmarks" / "latency-http.svg").write_text("stale")
        for path in self.results_directory.glob("http/*.json"):
            path.unlink()
        code, report, stderr, drawn = self.run_report("{{plot:scaling-shards}}\n{{plot:latency-http}}\n")
        self.assertEqual(code, 0)
        self.assertEqual(report, "![Durable embedded purchases/s by shard count](docs/benchmarks/scaling-shards.svg)\n"
                                 "_not measured in this run_\n")
        self.assertNotIn("latency-http", drawn)
        self.assertIn("scaling-shards", drawn)
        self.assertFalse((self.root / "out" / "docs" / "benchmarks" / "latency-http.svg").exists())
        self.assertIn("plot latency-http skipped", stderr)

    def test_unknown_placeholder_is_an_error_and_writes_nothing(self):
        code, report, stderr, drawn = self.run_report("{{table:machine}}\n\n{{table:embeded}}\n{{plot:nope}}\n")
        self.assertEqual(code, 1)
        self.assertEqual(report, "")
        self.assertEqual(drawn, [])
        self.assertIn("line 3: '{{table:embeded}}': unknown table 'embeded'", stderr)
        self.assertIn("line 4: '{{plot:nope}}': unknown plot 'nope'", stderr)

    def test_malformed_placeholders_are_errors(self):
        for template, message in (("{{tables:http}}", "unknown kind 'tables'"),
                                  ("{{table http}}", "is not {{KIND:NAME}}"),
                                  ("x\n{{table:http}", "line 2: stray '{{'"),
                                  ("{{table:http}} }}", "stray '}}'")):
            with self.subTest(template=template):
                with self.assertRaises(TemplateError) as raised:
                    find_placeholders(template, KNOWN_NAMES)
                self.assertIn(message, str(raised.exception))

    def test_every_documented_name_is_known(self):
        documented = Path(cli.__file__).with_name("__init__.py").read_text(encoding="utf-8")
        for kind, names in KNOWN_NAMES.items():
            for name in names:
                self.assertRegex(documented, rf"\n    {name} ", f"{kind}:{name} is not documented")


if __name__ == "__main__":
    unittest.main(verbosity=2)
