"""Reading a results directory (its layout is in the package docstring) into plain data.

Nothing here raises for missing or malformed results: every problem becomes a warning in
``Results.warnings`` and the piece is left out, so that the tables can say "not measured
in this run".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHARD_COUNTS = (1, 2, 4, 8)
ENGINE_COUNTS = (1, 2)
HTTP_WORKLOADS = ("purchases", "drop", "catalogue", "resale", "open-loop")
OPEN_LOOP_RATES = (1000, 2000, 3000, 4000, 5000, 6000)
STAGE_DIRECTORIES = ("embedded", "http", "distributed", "peer")


class MalformedResult(Exception):
    """A result file that is not what the layout says it should be."""


@dataclass
class LoadRun:
    """One load generator result (``ledger bench --json``)."""

    run: int
    path: str
    rate_per_second: float
    latency_ms: dict[str, float]
    requests: dict[str, Any]
    parameters: dict[str, Any]
    facts: dict[str, Any]
    invariants_checked: str
    violations: list[str]
    histogram: list[tuple[float, int]]

    @property
    def failed(self) -> bool:
        return bool(self.violations)


@dataclass
class CeilingRun:
    """One raw-store ceiling result: the rate, and the file's other fields."""

    run: int
    path: str
    rate_per_second: float
    details: dict[str, Any]


@dataclass
class CriterionBenchmark:
    identifier: str
    median_ns: float
    mean_ns: float | None
    throughput: tuple[str, float] | None


@dataclass
class Command:
    stage: str
    result_file: str
    command: str


@dataclass(frozen=True)
class Series:
    """A family of result files: which attribute of Results holds them, the file name
    pattern (a ``run`` group, and a ``key`` group when the family is keyed, e.g. by
    shard count), the rate field of a ceiling file (None for load generator files), and
    the keys that a complete run of scripts/benchmarks produces."""

    attribute: str
    pattern: str
    description: str
    ceiling_rate_field: str | None = None
    expected_keys: tuple = ()

    @property
    def keyed(self) -> bool:
        return "(?P<key>" in self.pattern


SERIES = (
    # One ceiling per shard count (`-shards{N}`; its rows per purchase depend on
    # it); the shard count is also inside the file. Unkeyed files are accepted.
    Series("sqlite_ceiling", r"embedded/ceiling-sqlite(?:-shards\d+)?-run(?P<run>\d+)\.json",
           "embedded/ceiling-sqlite-shards{N}-run{k}.json", ceiling_rate_field="rows_per_second"),
    Series("embedded_purchases", r"embedded/purchases-shards(?P<key>\d+)-run(?P<run>\d+)\.json",
           "embedded/purchases-shards{key}-run{k}.json", expected_keys=SHARD_COUNTS),
    Series("embedded_drop", r"embedded/drop-run(?P<run>\d+)\.json", "embedded/drop-run{k}.json"),
    Series("http", r"http/(?P<key>purchases|drop|catalogue|resale|open-loop)-run(?P<run>\d+)\.json",
           "http/{key}-run{k}.json", expected_keys=HTTP_WORKLOADS),
    Series("open_loop_sweep", r"http/open-loop-rate(?P<key>\d+)-run(?P<run>\d+)\.json",
           "http/open-loop-rate{key}-run{k}.json", expected_keys=OPEN_LOOP_RATES),
    Series("kafka_ceiling", r"distributed/ceiling-kafka-engines(?P<key>\d+)-run(?P<run>\d+)\.json",
           "distributed/ceiling-kafka-engines{key}-run{k}.json",
           ceiling_rate_field="records_per_second", expected_keys=ENGINE_COUNTS),
    Series("cql_ceiling", r"distributed/ceiling-cql-engines(?P<key>\d+)-run(?P<run>\d+)\.json",
           "distributed/ceiling-cql-engines{key}-run{k}.json",
           ceiling_rate_field="rows_per_second", expected_keys=ENGINE_COUNTS),
    Series("distributed_purchases", r"distributed/purchases-engines(?P<key>\d+)-run(?P<run>\d+)\.json",
           "distributed/purchases-engines{key}-run{k}.json", expected_keys=ENGINE_COUNTS),
    Series("peer_ledger", r"peer/ledger-run(?P<run>\d+)\.json", "peer/ledger-run{k}.json"),
    Series("peer_peer", r"peer/peer-run(?P<run>\d+)\.json", "peer/peer-run{k}.json"),
)


@dataclass
class Results:
    """Everything read from one results directory. Keyed series are dicts from key
    (shard count, engine count, HTTP workload name) to runs; runs are ordered by run
    number."""

    directory: Path
    machine: dict[str, Any] | None = None
    commands: list[Command] = field(default_factory=list)
    criterion: list[CriterionBenchmark] = field(default_factory=list)
    sqlite_ceiling: list[CeilingRun] = field(default_factory=list)
    embedded_purchases: dict[int, list[LoadRun]] = field(default_factory=dict)
    embedded_drop: list[LoadRun] = field(default_factory=list)
    http: dict[str, list[LoadRun]] = field(default_factory=dict)
    open_loop_sweep: dict[int, list[LoadRun]] = field(default_factory=dict)
    kafka_ceiling: dict[int, list[CeilingRun]] = field(default_factory=dict)
    cql_ceiling: dict[int, list[CeilingRun]] = field(default_factory=dict)
    distributed_purchases: dict[int, list[LoadRun]] = field(default_factory=dict)
    peer_ledger: list[LoadRun] = field(default_factory=list)
    peer_peer: list[LoadRun] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def load_results(directory: Path) -> Results:
    results = Results(directory=directory)
    results.machine = read_machine(directory, results.warnings)
    results.commands = read_commands(directory, results.warnings)
    results.criterion = read_criterion(directory, results.warnings)
    read_series(directory, results)
    return results


# --- machine.json and commands.tsv

def read_machine(directory: Path, warnings: list[str]) -> dict[str, Any] | None:
    path = directory / "machine.json"
    if not path.is_file():
        warnings.append("missing machine.json: the machine table is not measured in this run")
        return None
    try:
        machine = read_json(path)
    except MalformedResult as problem:
        warnings.append(f"machine.json left out: {problem}")
        return None
    if not isinstance(machine, dict):
        warnings.append("machine.json left out: not a JSON object")
        return None
    return machine


def read_commands(directory: Path, warnings: list[str]) -> list[Command]:
    path = directory / "commands.tsv"
    if not path.is_file():
        warnings.append("missing commands.tsv: the commands table is not measured in this run")
        return []
    commands = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        result_file, separator, command = line.partition("\t")
        if not separator or not result_file.strip() or not command.strip():
            warnings.append(f"commands.tsv line {line_number} left out: not '<result file>\\t<command>'")
            continue
        result_file = result_file.strip()
        stage = result_file.split("/", 1)[0]
        commands.append(Command(stage=stage, result_file=result_file, command=command.strip()))
    return commands


# --- criterion

def read_criterion(directory: Path, warnings: list[str]) -> list[CriterionBenchmark]:
    root = directory / "criterion"
    if not root.is_dir():
        warnings.append("missing criterion/: the criterion table is not measured in this run")
        return []
    benchmarks = []
    for description_path in sorted(root.rglob("new/benchmark.json")):
        relative = description_path.relative_to(directory).as_posix()
        try:
            benchmarks.append(read_criterion_benchmark(description_path))
        except MalformedResult as problem:
            warnings.append(f"{relative} left out: {problem}")
    if not benchmarks:
        warnings.append("criterion/ holds no <...>/new/benchmark.json: the criterion table is not measured in this run")
    return sorted(benchmarks, key=lambda benchmark: benchmark.identifier)


def read_criterion_benchmark(description_path: Path) -> CriterionBenchmark:
    description = read_json_object(description_path)
    estimates = read_json_object(description_path.with_name("estimates.json"))
    return CriterionBenchmark(
        identifier=criterion_identifier(description),
        median_ns=require_number(estimates, ("median", "point_estimate")),
        mean_ns=optional_number(estimates, ("mean", "point_estimate")),
        throughput=criterion_throughput(description.get("throughput")),
    )


def criterion_identifier(description: dict[str, Any]) -> str:
    full_identifier = description.get("full_id")
    if isinstance(full_identifier, str) and full_identifier:
        return full_identifier
    parts = [description.get(key) for key in ("group_id", "function_id", "value_str")]
    parts = [str(part) for part in parts if part not in (None, "")]
    if not parts:
        raise MalformedResult("no full_id nor group_id")
    return "/".join(parts)


def criterion_throughput(throughput: Any) -> tuple[str, float] | None:
    """``{"Elements": n}`` → ``("Elements", n)``; null → None."""
    if throughput is None:
        return None
    if not isinstance(throughput, dict) or len(throughput) != 1:
        raise MalformedResult(f"throughput {throughput!r} is neither null nor {{kind: amount}}")
    (kind, amount), = throughput.items()
    if not is_number(amount) or amount <= 0:
        raise MalformedResult(f"throughput {throughput!r} has no positive amount")
    return kind, float(amount)


# --- the stage directories

def read_series(directory: Path, results: Results) -> None:
    found: dict[str, dict[Any, list]] = {series.attribute: {} for series in SERIES}
    for path in stage_json_files(directory):
        relative = path.relative_to(directory).as_posix()
        series, match = matching_series(relative)
        if series is None:
            results.warnings.append(f"{relative} ignored: its name matches no result file of the layout")
            continue
        try:
            run = read_run(path, relative, int(match["run"]), series)
        except MalformedResult as problem:
            results.warnings.append(f"{relative} left out: {problem}")
            continue
        key = series_key(match) if series.keyed else None
        found[series.attribute].setdefault(key, []).append(run)
    for series in SERIES:
        runs_by_key = {key: sorted(runs, key=lambda run: run.run)
                       for key, runs in found[series.attribute].items()}
        if series.keyed:
            setattr(results, series.attribute, dict(sorted(runs_by_key.items(), key=sort_key)))
        else:
            setattr(results, series.attribute, runs_by_key.get(None, []))
        results.warnings.extend(missing_series_warnings(series, runs_by_key))


def stage_json_files(directory: Path) -> list[Path]:
    files = []
    for stage in STAGE_DIRECTORIES:
        stage_directory = directory / stage
        if stage_directory.is_dir():
            files.extend(path for path in stage_directory.rglob("*.json") if path.is_file())
    return sorted(files)


def matching_series(relative_path: str) -> tuple[Series | None, re.Match | None]:
    for series in SERIES:
        match = re.fullmatch(series.pattern, relative_path)
        if match:
            return series, match
    return None, None


def series_key(match: re.Match) -> int | str:
    key = match["key"]
    return int(key) if key.isdigit() else key


def sort_key(item: tuple[Any, Any]) -> tuple[int, Any]:
    """Numeric keys in order, then names in the order of HTTP_WORKLOADS."""
    key = item[0]
    if isinstance(key, int):
        return (0, key)
    return (1, HTTP_WORKLOADS.index(key) if key in HTTP_WORKLOADS else len(HTTP_WORKLOADS))


def missing_series_warnings(series: Series, runs_by_key: dict[Any, list]) -> list[str]:
    if not series.keyed:
        if runs_by_key:
            return []
        return [f"missing {series.description.replace('{k}', '*')}: not measured in this run"]
    return [
        f"missing {series.description.format(key=key, k='{k}').replace('{k}', '*')}: not measured in this run"
        for key in series.expected_keys
        if key not in runs_by_key
    ]


def read_run(path: Path, relative: str, run: int, series: Series) -> LoadRun | CeilingRun:
    data = read_json_object(path)
    if series.ceiling_rate_field is not None:
        return CeilingRun(run=run, path=relative,
                          rate_per_second=require_number(data, (series.ceiling_rate_field,)),
                          details=data)
    return parse_load_run(data, run, relative)


def parse_load_run(data: dict[str, Any], run: int, relative: str) -> LoadRun:
    latency = data.get("latency_ms")
    if not isinstance(latency, dict):
        raise MalformedResult("no latency_ms object")
    require_number(latency, ("p50",))
    require_number(latency, ("p99",))
    violations = data.get("violations") or []
    if not isinstance(violations, list):
        raise MalformedResult("violations is not a list")
    return LoadRun(
        run=run,
        path=relative,
        rate_per_second=require_number(data, ("rate_per_second",)),
        latency_ms={name: float(value) for name, value in latency.items() if is_number(value)},
        requests=object_field(data, "requests"),
        parameters=object_field(data, "parameters"),
        facts=object_field(data, "facts"),
        invariants_checked=str(data.get("invariants_checked") or ""),
        violations=[str(violation) for violation in violations],
        histogram=parse_histogram(data.get("histogram")),
    )


def parse_histogram(histogram: Any) -> list[tuple[float, int]]:
    if histogram is None:
        return []
    if not isinstance(histogram, list):
        raise MalformedResult("histogram is not a list")
    buckets = []
    for bucket in histogram:
        if not (isinstance(bucket, dict) and is_number(bucket.get("value_us")) and is_number(bucket.get("count"))):
            raise MalformedResult(f"histogram bucket {bucket!r} is not {{value_us, count}}")
        buckets.append((float(bucket["value_us"]), int(bucket["count"])))
    return sorted(buckets)


# --- JSON helpers

def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MalformedResult(f"{path.name} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as problem:
        raise MalformedResult(f"{path.name} is not readable JSON ({problem})") from None


def read_json_object(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise MalformedResult(f"{path.name} is not a JSON object")
    return data


def object_field(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name)
    return value if isinstance(value, dict) else {}


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def optional_number(data: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    value: Any = data
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return float(value) if is_number(value) else None


def require_number(data: dict[str, Any], keys: tuple[str, ...]) -> float:
    value = optional_number(data, keys)
    if value is None:
        raise MalformedResult(f"no number at {'.'.join(keys)}")
    return value
