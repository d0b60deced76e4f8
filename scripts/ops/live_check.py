#!/usr/bin/env python3
"""The dashboards and alert rules against a running ledger and a real Prometheus.

    live_check.py --ledger BIN --prometheus BIN --rules RULES.yaml --dashboard DASHBOARD.json...

Starts an embedded `ledger serve` (temporary data directory, free loopback
ports) and a Prometheus scraping its /metrics every second with the rules
loaded, then:
  1. drives traffic: `ledger-bench --mode http` (an open-loop purchase load at
     --rate for --seconds), a request without a token (a rejection), and a
     read with ?after= (the wait for a position);
  2. reads /metrics and checks that every metric a dashboard panel or a rule
     uses is there, with the labels its selectors name; a metric that only the
     distributed services export (Kafka transactions, CQL appends, takeovers,
     the command bus) cannot appear on the embedded server, so it must instead
     be declared in crates/distributed/src/metrics.rs; every recording rule a
     panel uses must be recorded by the rules file;
  3. asks Prometheus, through its HTTP API, for the purchase rate during the
     load (`sum(rate(ledger_command_api_requests_total{route="/v1/purchases"}[15s]))`
     at the end of the load) and compares it with the rate the load generator
     reported: within 20%; and checks that Prometheus evaluated the recording
     rules on the scraped series (the purchase rate by outcome, the projector
     lag of every shard).
Stops both processes and exits 1 on any problem. Loopback only, bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTED_METRICS = ROOT / "crates" / "distributed" / "src" / "metrics.rs"
# labels the scrape adds (Kubernetes service discovery, Prometheus itself)
TARGET_LABELS = {"namespace", "pod", "instance", "job"}
SUFFIXES = ("_bucket", "_count", "_sum")
PROMETHEUS_OWN = {"up"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def wait_for(url: str, seconds: float, what: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"live check: {what} exited with {process.returncode} before answering {url}")
        try:
            get(url, timeout=2)
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise SystemExit(f"live check: {what} did not answer {url} within {seconds:.0f} s")


def base_name(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def exported(text: str) -> dict[str, set[str]]:
    """metric (histograms by their base name) -> the label keys of its series"""
    metrics: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        # label values may hold braces (route="/v1/users/{id}/balance")
        m = re.match(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\})?\s', line)
        if not m:
            continue
        keys = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or "")) - {"le", "quantile"}
        metrics.setdefault(base_name(m.group(1)), set()).update(keys)
    return metrics


def expressions(rules: Path, dashboards: list[Path]) -> tuple[list[tuple[str, str]], set[str]]:
    """(where, PromQL) of every rule and panel target; the recording rules' names"""
    found, recorded = [], set()
    for group in yaml.safe_load(rules.read_text())["groups"]:
        for rule in group["rules"]:
            name = rule.get("record") or rule.get("alert")
            found.append((f"{rules.name}: {name}", rule["expr"]))
            if "record" in rule:
                recorded.add(rule["record"])

    def walk(panel, path):
        for target in panel.get("targets") or []:
            if target.get("expr"):
                found.append((f"{path.name}: panel {panel.get('title')!r}", target["expr"]))
        for inner in panel.get("panels") or []:
            walk(inner, path)

    for path in dashboards:
        dashboard = json.loads(path.read_text())
        for panel in dashboard.get("panels") or []:
            walk(panel, path)
        for variable in (dashboard.get("templating") or {}).get("list") or []:
            query = variable.get("query")
            if isinstance(query, dict):
                query = query.get("query")
            if variable.get("type") == "query" and query:
                found.append((f"{path.name}: variable {variable.get('name')}", query))
    return found, recorded


def check_metrics(metrics_text: str, used: list[tuple[str, str]], recorded: set[str]) -> list[str]:
    problems = []
    scraped = exported(metrics_text)
    declared = set(re.findall(r'"(ledger_[a-z0-9_]+)"', DISTRIBUTED_METRICS.read_text()))
    verdicts: dict[str, str] = {}
    for where, expr in used:
        # a name followed by an optional selector; label values and strings are not names
        stripped = re.sub(r'"[^"]*"', '""', expr)
        for m in re.finditer(r"(?<![a-zA-Z0-9_:$])(ledger[a-z0-9_:]*|up)\b(\{([^}]*)\})?", stripped):
            name = m.group(1)
            if name in PROMETHEUS_OWN:
                continue
            if ":" in name:
                if name not in recorded:
                    problems.append(f"{where}: uses {name}, which no rule records")
                continue
            if not name.startswith("ledger_"):
                continue
            base = base_name(name)
            keys = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(3) or "")) - TARGET_LABELS
            if base in scraped:
                verdicts.setdefault(base, "on /metrics")
                missing = keys - scraped[base]
                if missing:
                    problems.append(f"{where}: {base} has no label {', '.join(sorted(missing))} "
                                    f"(its labels: {', '.join(sorted(scraped[base])) or 'none'})")
            elif base in declared:
                verdicts.setdefault(base, f"distributed only: declared in {DISTRIBUTED_METRICS.relative_to(ROOT)}")
            else:
                verdicts[base] = "MISSING"
                problems.append(f"{where}: {base} is neither on a running ledger's /metrics nor declared "
                                f"in {DISTRIBUTED_METRICS.relative_to(ROOT)}")
    for name in sorted(verdicts):
        print(f"  {name:<52} {verdicts[name]}")
    return problems


class Prometheus:
    def __init__(self, url: str):
        self.url = url

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        answer = json.loads(get(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"))
        if answer.get("status") != "success":
            raise SystemExit(f"live check: prometheus refused {expr!r}: {answer}")
        return answer["data"]["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": str(step)}
        answer = json.loads(get(f"{self.url}/api/v1/query_range?{urllib.parse.urlencode(params)}"))
        if answer.get("status") != "success":
            raise SystemExit(f"live check: prometheus refused {expr!r}: {answer}")
        return answer["data"]["result"]


def stop(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--bench", required=True, help="the ledger-bench binary (load generator)")
    parser.add_argument("--prometheus", required=True)
    parser.add_argument("--rules", required=True, type=Path)
    parser.add_argument("--dashboard", required=True, type=Path, action="append")
    parser.add_argument("--rate", type=float, default=150.0, help="purchases per second of the load")
    parser.add_argument("--seconds", type=int, default=20, help="length of the load")
    args = parser.parse_args()

    problems: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="ledger-live-check-"))
    secret = "live-check-secret-0123456789"
    # The load buys faster than a person: no purchase rate limits.
    env = {**os.environ, "LEDGER_JWT_SECRET": secret, "RUST_LOG": "warn",
           "LEDGER_PURCHASE_LIMIT": "0", "LEDGER_ITEM_REQUEST_INTERVAL": "0s"}
    command_port, query_port, prom_port = free_port(), free_port(), free_port()
    ledger = prometheus = None
    try:
        ledger = subprocess.Popen(
            [args.ledger, "serve", "--data-dir", str(work / "data"), "--command-addr", f"127.0.0.1:{command_port}",
             "--query-addr", f"127.0.0.1:{query_port}"],
            env=env, stdout=open(work / "ledger.log", "w"), stderr=subprocess.STDOUT)
        command_url, query_url = f"http://127.0.0.1:{command_port}", f"http://127.0.0.1:{query_port}"
        wait_for(f"{command_url}/readyz", 60, "ledger serve", ledger)
        # Both ports serve the process's one registry: scraping one is the whole ledger.
        (work / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(args.rules.resolve())],
            "scrape_configs": [{"job_name": "ledger", "static_configs": [{"targets": [f"127.0.0.1:{command_port}"]}]}],
        }))
        prometheus = subprocess.Popen(
            [args.prometheus, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--storage.tsdb.retention.time=1h"],
            stdout=open(work / "prometheus.log", "w"), stderr=subprocess.STDOUT)
        prom = Prometheus(f"http://127.0.0.1:{prom_port}")
        wait_for(f"{prom.url}/-/ready", 60, "prometheus", prometheus)
        deadline = time.monotonic() + 30
        while not prom.query('up{job="ledger"} == 1') and time.monotonic() < deadline:
            time.sleep(0.5)

        # 1. traffic
        started = time.time()
        report_path = work / "bench.json"
        bench = subprocess.run(
            [args.bench, "--mode", "http", "--command-url", command_url, "--query-url", query_url,
             "--rate", str(args.rate), "--requests", str(int(args.rate * args.seconds)),
             "--duration", f"{args.seconds + 10}s", "--quiet", "--json", str(report_path)],
            env=env, capture_output=True, text=True, timeout=args.seconds + 180)
        if bench.returncode != 0:
            raise SystemExit(f"live check: ledger-bench failed: {bench.stdout}{bench.stderr}")
        report = json.loads(report_path.read_text())
        print(f"  load generator: {report['label']}: {report['requests']['answered']} purchases answered in {report['elapsed_s']:.2f} s "
              f"= {report['rate_per_second']:.1f}/s")
        token = subprocess.run([args.ledger, "token", "--role", "admin", "--sub", "live-check"], env=env,
                               capture_output=True, text=True, check=True).stdout.strip()
        request = urllib.request.Request(f"{command_url}/v1/purchases", method="POST", data=b"{}",
                                         headers={"content-type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=5)
            problems.append("an empty purchase without a token was accepted")
        except urllib.error.HTTPError as refused:
            if not 400 <= refused.code < 500:
                problems.append(f"an empty purchase without a token answered {refused.code}, not a 4xx problem")
        grant = urllib.request.Request(
            f"{command_url}/v1/grants", method="POST",
            data=json.dumps({"grant_id": "live-check-grant", "user_id": "live-check-user", "amount": 100}).encode(),
            headers={"content-type": "application/json", "authorization": f"Bearer {token}"})
        position = json.loads(urllib.request.urlopen(grant, timeout=10).read())["position"]
        read = urllib.request.Request(
            f"{query_url}/v1/users/live-check-user/balance?after={urllib.parse.quote(position)}",
            headers={"authorization": f"Bearer {token}"})
        urllib.request.urlopen(read, timeout=10).read()
        # a read without a token (a query rejection) and one for a position
        # beyond the log's head (refused at once: 400 validation_failed)
        for path, headers, status in (("/v1/users/live-check-user/balance", {}, 401),
                                      ("/v1/users/live-check-user/balance?after=p0.999999999",
                                       {"authorization": f"Bearer {token}"}, 400)):
            try:
                urllib.request.urlopen(urllib.request.Request(f"{query_url}{path}", headers=headers), timeout=15)
                problems.append(f"GET {path} was answered, not refused with {status}")
            except urllib.error.HTTPError as refused:
                if refused.code != status:
                    problems.append(f"GET {path} answered {refused.code}, not {status}")

        # 2. every metric of the dashboards and rules
        print("metrics used by the dashboards and rules:")
        used, recorded = expressions(args.rules, args.dashboard)
        problems += check_metrics(get(f"{command_url}/metrics"), used, recorded)

        # 3. the purchase rate through Prometheus
        time.sleep(3)  # the last scrape of the load, and one rule evaluation after it
        now = time.time()
        series = prom.query_range('sum(ledger_command_api_requests_total{route="/v1/purchases"})', started, now, 1)
        if not series:
            problems.append("prometheus has no purchase counter: was the ledger scraped?")
        else:
            values = [(float(t), float(v)) for t, v in series[0]["values"]]
            final = values[-1][1]
            first = next(t for t, v in values if v > values[0][1])
            last = next(t for t, v in values if v >= final)
            window = 15
            at = last - 1
            rate = prom.query(f'sum(rate(ledger_command_api_requests_total{{route="/v1/purchases"}}[{window}s]))', at)
            measured = float(rate[0]["value"][1]) if rate else 0.0
            average = (final - values[0][1]) / max(last - first, 1)
            reported = report["rate_per_second"]
            ratio = measured / reported if reported else 0.0
            print(f"  prometheus: sum(rate(ledger_command_api_requests_total{{route=\"/v1/purchases\"}}[{window}s])) "
                  f"at the end of the load = {measured:.1f}/s; counter {final:.0f} over {last - first:.0f} s "
                  f"= {average:.1f}/s; load generator {reported:.1f}/s; ratio {ratio:.3f}")
            if not 0.8 <= ratio <= 1.2:
                problems.append(f"prometheus measured {measured:.1f} purchases/s, the load generator reported "
                                f"{reported:.1f}/s (not within 20%)")
        by_outcome = prom.query('ledger:purchases:rate1m{route="/v1/purchases",outcome="ok"}')
        if not by_outcome:
            problems.append("the recording rule ledger:purchases:rate1m gave no series for successful purchases")
        lag = prom.query("ledger:projector_lag:entries")
        shards = {s["metric"].get("shard") for s in lag}
        print(f"  recording rules: ledger:purchases:rate1m ok = {float(by_outcome[0]['value'][1]) if by_outcome else 0:.1f}/s; "
              f"ledger:projector_lag:entries for shards {sorted(shards)}: "
              f"{[s['value'][1] for s in sorted(lag, key=lambda s: s['metric'].get('shard', ''))]}")
        if len(shards) != 4:
            problems.append(f"ledger:projector_lag:entries has shards {sorted(shards)}, expected the 4 of ledger serve")
        alerts = json.loads(get(f"{prom.url}/api/v1/alerts"))["data"]["alerts"]
        states = sorted(f"{a['labels']['alertname']} ({a['state']})" for a in alerts)
        print(f"  alerts after the load (the refused reads above count as errors): {', '.join(states) or 'none'}")
        firing = [a["labels"]["alertname"] for a in alerts if a["state"] == "firing"]
        if firing:
            problems.append(f"alerts firing on a healthy ledger: {firing}")
    finally:
        stop(prometheus)
        stop(ledger)
    for problem in problems:
        print(f"  - {problem}")
    if problems:
        print(f"live check: {len(problems)} problems (logs in {work})")
        return 1
    subprocess.run(["rm", "-rf", str(work)], check=False)
    print("live check: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
