"""bench_report — turns a directory of raw benchmark results into BENCHMARKS.md and plots.

Run it through the wrapper, which sets up the plotting venv first:

    scripts/bench-report RESULTS_DIR [--template benchmarks/BENCHMARKS.template.md]
                         [--output BENCHMARKS.md] [--plots docs/benchmarks]
                         [--events-per-purchase N]

The report is a hand-written template whose placeholders are filled in; everything
outside the placeholders is copied verbatim. Missing data never stops the report: each
missing piece is a warning on stderr, and the tables say "not measured in this run".

Placeholders (the template's syntax)
------------------------------------
``{{table:NAME}}``
    A markdown table (sometimes followed by note lines). Put it alone on its line, with
    blank lines around it. NAME is one of:

    summary       one row per target: the best figure of this run against it (criterion,
                  durable embedded, HTTP purchases, embedded drop) and the gap
    machine       machine.json: CPU, cores, memory, OS, rustc, date, commit, load average
    criterion     one row per criterion benchmark: median and mean time per iteration,
                  throughput, and the target where one is known (per_command/* and the
                  purchase benches vs 1,000,000/s per core, replay/* vs 2,000,000 events/s)
    embedded      durable embedded purchases/s by shard count, next to the SQLite ceiling
    http          one row per HTTP workload (purchases, drop, catalogue, resale, open-loop)
    open-loop     HTTP purchases at fixed offered rates (the sweep): latency per rate, and
                  the highest rate answered with p99 within the target and nothing dropped
    drop          the limited drop, embedded and HTTP: time to sell out, sold, oversold
    distributed   purchases/s with 1 and 2 engines, next to the Kafka and CQL ceilings
    peer          the ledger against the peer implementation, run by run
    commands      the exact commands that produced the results, by stage

``{{plot:NAME}}``
    A markdown image, ``![ALT](PATH)``, PATH being the SVG written to the plots directory
    relative to the output file's directory (``docs/benchmarks/NAME.svg`` by default).
    When the plot's data is missing it becomes ``_not measured in this run_`` instead (and
    a stale ``NAME.svg`` left by an earlier run is removed). NAME is one of:

    latency-http     latency CDF of each HTTP workload's median run
    latency-drop     latency CDF of the limited drop, embedded against HTTP
    scaling-shards   embedded purchases/s against shard count: every run, line through medians
    scaling-engines  distributed purchases/s with 1 and 2 engines, and the Kafka ceiling
    peer             the ledger's and the peer's median purchases/s and p50, as bars

Spaces inside the braces are allowed (``{{ table:http }}``). Any other ``{{...}}``, an
unknown NAME, or a lone ``{{`` or ``}}`` is an error: nothing is written, the exit code
is 1, and the message names each bad placeholder by line, so typos are caught. A
placeholder cannot span lines, and the template cannot contain a literal ``{{`` or ``}}``.

Medians are Python's ``statistics.median`` over runs, failed runs included (and marked).
Rates and latencies are shown to 3 significant figures with thousands separators.

Results directory layout (the contract with scripts/benchmarks)
---------------------------------------------------------------
Any file may be missing; files are matched by these exact names (``{k}`` is the run
number, any positive integer). A ``.json`` file in a stage directory that matches no
name below is reported as unrecognised; other files (logs) are ignored.

::

    RESULTS_DIR/
      machine.json   {"date": "2026-11-28T04:10:00Z", "commit": "abc1234", "cpu_model": "...",
                      "cores": 2, "memory_gib": 24, "os": "Debian GNU/Linux 12",
                      "rustc": "rustc 1.95.0 ...", "load_average_before": [0.1, 0.2, 0.3]}
                     (further keys are listed after these)
      commands.tsv   lines "<result file, relative to RESULTS_DIR>\\t<the exact command>";
                     the stage is the result file's first path component (the result
                     may be a directory, e.g. "criterion"); blank lines and
                     lines starting with '#' are skipped
      criterion/     a copy of cargo's target/criterion: every <...>/new/benchmark.json
                     ({"group_id", "function_id", "value_str", "full_id", "throughput":
                     {"Elements": n} | {"Bytes": n} | null, ...}) with its sibling
                     new/estimates.json ({"mean": {"point_estimate": ns, ...},
                     "median": {"point_estimate": ns, ...}, ...}, criterion 0.5); found
                     by walking the tree, since criterion sanitises directory names
      embedded/ceiling-sqlite-shards{N}-run{k}.json  (or ceiling-sqlite-run{k}.json)
                     {"rows_per_second", "rows", "seconds",
                     "batch_rows", "row_bytes", "journal_mode", "synchronous"; optional:
                     "shards", "rows_per_purchase", "purchases_per_second"}
      embedded/purchases-shards{N}-run{k}.json     load generator JSON, N in 1, 2, 4, 8
      embedded/drop-run{k}.json                    load generator JSON
      http/{W}-run{k}.json                         load generator JSON, W in purchases,
                                                   drop, catalogue, resale, open-loop
      http/open-loop-rate{R}-run{k}.json           load generator JSON, purchases offered at
                                                   R/s (R in 1000, 2000, ... 6000)
      distributed/ceiling-kafka-engines{E}-run{k}.json  {"records_per_second", "records",
                     "transactions", "seconds", "record_bytes", "shards", "batch"}
      distributed/ceiling-cql-engines{E}-run{k}.json    {"rows_per_second", "rows",
                     "seconds", "batch", "shards"}
      distributed/purchases-engines{E}-run{k}.json      load generator JSON, E in 1, 2
      peer/ledger-run{k}.json, peer/peer-run{k}.json    load generator JSON

Load generator JSON (``ledger bench --json``)::

    {"workload": "purchases" | "drop" | "catalogue" | "resale", "mode": "embedded" | "http",
     "label": str, "parameters": {flag: value, ...}, "elapsed_s": float,
     "requests": {"planned", "sent", "answered", "succeeded", "rejected", "errors",
                  "dropped_by_generator"},
     "rate_per_second": float,
     "latency_ms": {"p50", "p90", "p99", "p99_9", "max", "mean"},
     "counts_by_code": {code: count},
     "facts": {...},            workload-specific, all optional: drop "time_to_sell_out_ms"
                                (null when not sold out), "sold", "oversold"; purchases
                                "rows_per_purchase", "events_per_purchase"
     "invariants_checked": str, what the check established ("" when nothing was checked)
     "violations": [str, ...],  non-empty: the run FAILED its invariant check
     "histogram": [{"value_us": int, "count": int}, ...] ascending}

Only ``rate_per_second`` and ``latency_ms.p50``/``p99`` are required; a file without them
is reported as malformed and left out.

Ratios to the ceilings: ledger rows/s ÷ SQLite ceiling rows/s, with rows/s = purchases/s ×
rows per purchase, from ``facts.rows_per_purchase``, else the ``rows_per_purchase`` that
sqlite-ceiling counted at the same shard count; ledger events/s ÷ Kafka ceiling records/s,
with events per purchase from ``facts.events_per_purchase``, else
``parameters.events_per_purchase``, else ``--events-per-purchase``, else sqlite-ceiling's
``rows_per_purchase`` (events + messages) at the Kafka ceiling's ``shards``. With none of
them a ratio is purchases/s ÷ rows (records)/s, marked † and explained under the table.

Modules: results (reading the directory), numbers (medians, formatting), summaries
(values shared by tables and plots), tables, template, plots (matplotlib, imported only
when drawing), cli.
"""
