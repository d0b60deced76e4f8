#!/usr/bin/env python3
"""The ledger's own rules for its Kubernetes manifests, which no generic tool knows.

    manifests.py LEDGER_BINARY MANIFEST.yaml...

Run by scripts/validate-ops on the Helm chart's output and the infrastructure
examples (k8s/infrastructure/), after kubeconform (schemas, with the operators'
CRDs) and kube-score (security, resources, probes, PDBs, selectors) have
passed. Checked here:
  * the ConfigMap's ledger.toml, with the services' own settings struct:
    `ledger config check --json` (unknown keys, types and ranges refused, no
    secret in the file); the checks below use the effective settings it prints;
  * one Deployment per service (`command-api`, `projector`, `query-api`),
    each on its own port everywhere: LEDGER_HTTP_ADDR, the container port,
    the probes, the Service's target port and the prometheus.io/port
    annotation; LEDGER_CONFIG names the mounted ledger.toml; the signing
    secret comes from a required secretKeyRef; no Service links (they would
    inject LEDGER_* variables); the Pod Security `restricted` fields the
    namespace declares (no privilege escalation, every capability dropped,
    non-root, RuntimeDefault seccomp);
  * scaling against the shard count: the command API's HPA at most `shards`
    replicas and one pod per minute, rollouts one pod at a time, a drain of at
    least 60 s after a preStop pause; the projector at most `shards` replicas
    and no HPA;
  * the infrastructure examples: kafka_bootstrap is the bootstrap Service of a
    plain Strimzi listener, the KafkaTopics are those of
    schemas/kafka/topics.md (names, partitions = shards, replies partitions =
    reply_partitions, replicas = topic_replication, retention, cleanup,
    min.insync.replicas), cql_contact is a ScyllaCluster's client Service, and
    the keyspace Job creates cql_keyspace with NetworkTopologyStrategy and a
    replication its datacenter can hold.

Prints each problem and exits 1 if there is any.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TOPICS_DOC = ROOT / "schemas" / "kafka" / "topics.md"
# subcommand -> the port its settings default to (Role::default_port in crates/ledger-cli/src/cluster.rs)
SERVICES = {"command-api": 8080, "query-api": 8081, "projector": 8082}
CONFIG_KEY = "ledger.toml"


class Checker:
    def __init__(self, ledger: str, docs: list[dict]):
        self.ledger = ledger
        self.docs = docs
        self.problems: list[str] = []
        self.checks = 0

    def check(self, ok: bool, where: str, message: str) -> bool:
        self.checks += 1
        if not ok:
            self.problems.append(f"{where}: {message}")
        return ok

    def of_kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d.get("kind") == kind]

    @staticmethod
    def ref(d: dict) -> str:
        return f"{d.get('kind')}/{d['metadata']['name']}"

    # ------------------------------------------------------------------ configuration

    def config(self) -> dict | None:
        maps = [d for d in self.of_kind("ConfigMap") if CONFIG_KEY in (d.get("data") or {})]
        if not self.check(len(maps) == 1, "manifests", f"exactly one ConfigMap must hold {CONFIG_KEY}, found {len(maps)}"):
            return None
        self.config_map = maps[0]
        with tempfile.NamedTemporaryFile("w", suffix=".toml") as file:
            file.write(maps[0]["data"][CONFIG_KEY])
            file.flush()
            done = subprocess.run([self.ledger, "config", "check", "--json", file.name],
                                  capture_output=True, text=True)
        if not self.check(done.returncode == 0, self.ref(maps[0]),
                          f"`ledger config check` refused {CONFIG_KEY}: {done.stderr.strip()}"):
            return None
        settings = json.loads(done.stdout)
        # the services create missing topics with these: the code's defaults are the test broker's
        for key in ("topic_replication", "reply_partitions"):
            self.check(re.search(rf"^\s*{key}\s*=", maps[0]["data"][CONFIG_KEY], re.M) is not None,
                       self.ref(maps[0]), f"{CONFIG_KEY} must set {key} (the default is the single-node test broker's)")
        return settings

    # ------------------------------------------------------------------ the services

    def services(self, config: dict) -> None:
        shards = config["shards"]
        found: dict[str, tuple[dict, dict]] = {}
        for d in self.of_kind("Deployment"):
            for c in d["spec"]["template"]["spec"].get("containers") or []:
                args = list(c.get("command") or []) + list(c.get("args") or [])
                if args and args[0] in SERVICES:
                    self.check(args[0] not in found, self.ref(d), f"a second Deployment runs `ledger {args[0]}`")
                    found[args[0]] = (d, c)
        for sub in SERVICES:
            self.check(sub in found, "manifests", f"no Deployment runs `ledger {sub}`")
        images = {c.get("image") for _, c in found.values()}
        self.check(len(images) <= 1, "manifests", f"the services run different images: {sorted(images)}")
        hpas = {(h["spec"].get("scaleTargetRef") or {}).get("name"): h for h in self.of_kind("HorizontalPodAutoscaler")}
        for sub, (d, c) in found.items():
            where = self.ref(d)
            pod = d["spec"]["template"]["spec"]
            env = {e.get("name"): e for e in c.get("env") or []}
            port = SERVICES[sub]
            self.check(pod.get("enableServiceLinks") is False, where,
                       "enableServiceLinks must be false: Service variables would land among the LEDGER_* settings")
            # configuration file mounted where LEDGER_CONFIG points
            volumes = {v.get("name"): v for v in pod.get("volumes") or []}
            mounted = set()
            for m in c.get("volumeMounts") or []:
                cm = (volumes.get(m.get("name")) or {}).get("configMap") or {}
                if cm.get("name") == self.config_map["metadata"]["name"]:
                    items = cm.get("items") or [{"key": CONFIG_KEY, "path": CONFIG_KEY}]
                    mounted |= {m["mountPath"].rstrip("/") + "/" + i["path"] for i in items if i.get("key") == CONFIG_KEY}
            config_path = (env.get("LEDGER_CONFIG") or {}).get("value")
            self.check(config_path in mounted, where,
                       f"LEDGER_CONFIG={config_path!r}, but {CONFIG_KEY} is mounted at {sorted(mounted)}")
            # one port everywhere
            addr = (env.get("LEDGER_HTTP_ADDR") or {}).get("value", f"0.0.0.0:{port}")
            self.check(addr.rsplit(":", 1)[-1] == str(port), where, f"LEDGER_HTTP_ADDR {addr!r} is not port {port}")
            ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
            self.check(port in ports.values(), where, f"container port {port} is not declared")
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                target = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                self.check(ports.get(target, target) == port, where, f"{probe} probes port {target!r}, not {port}")
            annotations = d["spec"]["template"]["metadata"].get("annotations") or {}
            if annotations.get("prometheus.io/scrape") == "true":
                self.check(annotations.get("prometheus.io/port") == str(port), where,
                           f"prometheus.io/port {annotations.get('prometheus.io/port')!r} is not {port}")
            labels = d["spec"]["template"]["metadata"].get("labels") or {}
            services = [s for s in self.of_kind("Service")
                        if s["spec"].get("selector") and all(labels.get(k) == v for k, v in s["spec"]["selector"].items())]
            if self.check(bool(services), where, "no Service selects its pods"):
                for s in services:
                    for p in s["spec"].get("ports") or []:
                        target = p.get("targetPort", p.get("port"))
                        self.check(ports.get(target, target) == port, self.ref(s), f"targets port {target!r}, not {port}")
            # the signing secret
            ref = ((env.get("LEDGER_JWT_SECRET") or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
            self.check(bool(ref) and ref.get("optional") is not True, where,
                       "LEDGER_JWT_SECRET must come from a required secretKeyRef (every service needs it)")
            # Pod Security `restricted` (declared by the Namespace)
            psc = pod.get("securityContext") or {}
            csc = c.get("securityContext") or {}
            self.check(csc.get("allowPrivilegeEscalation") is False, where, "allowPrivilegeEscalation must be false")
            self.check("ALL" in ((csc.get("capabilities") or {}).get("drop") or []), where, "capabilities must drop ALL")
            self.check(csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, where, "runAsNonRoot must be true")
            self.check(((csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")) == "RuntimeDefault",
                       where, "seccompProfile must be RuntimeDefault")
            # scaling against the shard count
            hpa = hpas.get(d["metadata"]["name"])
            if sub == "projector":
                self.check(hpa is None, where, "the projector is scaled by hand or on its lag, not by a CPU HPA")
                self.check(1 <= d["spec"].get("replicas", 1) <= shards, where,
                           f"replicas must be 1..shards ({shards}): more would own no partition")
            if sub == "command-api":
                self.check(pod.get("terminationGracePeriodSeconds", 30) >= 60, where,
                           "terminationGracePeriodSeconds must be >= 60 (the engine drains its shards)")
                self.check(((c.get("lifecycle") or {}).get("preStop")) is not None, where,
                           "needs a preStop pause so the Service stops routing before the drain")
                rolling = (d["spec"].get("strategy") or {}).get("rollingUpdate") or {}
                self.check(str(rolling.get("maxUnavailable")) == "0" and str(rolling.get("maxSurge")) == "1", where,
                           "must roll one pod at a time (maxSurge 1, maxUnavailable 0): each start moves shards")
                if hpa is not None:
                    self.check(hpa["spec"].get("maxReplicas", 0) <= shards, self.ref(hpa),
                               f"maxReplicas above shards ({shards}): the extra replicas would own no shard")
                    behavior = hpa["spec"].get("behavior") or {}
                    for direction in ("scaleUp", "scaleDown"):
                        policies = (behavior.get(direction) or {}).get("policies") or []
                        self.check(bool(policies) and all(p.get("type") == "Pods" and p.get("value") == 1
                                                          and p.get("periodSeconds", 0) >= 60 for p in policies),
                                   self.ref(hpa), f"{direction} must move at most one pod per minute")

    # ------------------------------------------------------------------ infrastructure examples

    @staticmethod
    def topics_doc() -> dict[str, dict]:
        """schemas/kafka/topics.md's table: topic -> partitions / retention.ms / replicas / min ISR / cleanup."""
        topics = {}
        durations = {"7 days": 7 * 24 * 3600 * 1000, "1 hour": 3600 * 1000}
        for line in TOPICS_DOC.read_text().splitlines():
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if len(cells) != 7 or not cells[0].startswith("`"):
                continue
            name = cells[0].strip("`")
            retention = -1 if cells[4].startswith("infinite") else durations.get(cells[4].split(" (")[0])
            replicas, min_isr = (int(x) for x in cells[6].split("/"))
            topics[name] = {"per_shard": cells[3].startswith("shard count"), "retention_ms": retention,
                            "cleanup": cells[5].split(" ")[0], "replicas": replicas, "min_isr": min_isr}
        return topics

    def infrastructure(self, config: dict) -> None:
        where = "ledger.toml"
        shards = config["shards"]
        # Kafka: bootstrap Service of a plain internal listener (Strimzi: <name>-kafka-bootstrap)
        bootstraps = {f"{k['metadata']['name']}-kafka-bootstrap.{k['metadata'].get('namespace')}.svc:{l.get('port')}"
                      for k in self.of_kind("Kafka") for l in k["spec"]["kafka"].get("listeners") or []
                      if l.get("type") == "internal" and l.get("tls") is False}
        self.check(all(hp.strip() in bootstraps for hp in config["kafka_bootstrap"].split(",")), where,
                   f"kafka_bootstrap {config['kafka_bootstrap']!r} is none of the plain listeners' bootstrap "
                   f"Services {sorted(bootstraps)}")
        documented = self.topics_doc()
        self.check(len(documented) == 5, str(TOPICS_DOC.relative_to(ROOT)), f"expected 5 topics in its table, read {sorted(documented)}")
        kafka_topics = {t["spec"].get("topicName", t["metadata"]["name"]): t for t in self.of_kind("KafkaTopic")}
        for name, rule in documented.items():
            name = config["topic_prefix"] + name[len("ledger"):]
            topic = kafka_topics.get(name)
            if not self.check(topic is not None, where, f"no KafkaTopic for {name}"):
                continue
            spec, tconf, ref = topic["spec"], topic["spec"].get("config") or {}, self.ref(topic)
            if rule["per_shard"]:
                self.check(spec.get("partitions") == shards, ref, f"{spec.get('partitions')} partitions, must be shards = {shards}")
            else:
                self.check(spec.get("partitions") == config["reply_partitions"], ref,
                           f"{spec.get('partitions')} partitions, but reply_partitions is {config['reply_partitions']} "
                           "(the services refuse to start on a mismatch)")
            self.check(spec.get("replicas") == rule["replicas"] == config["topic_replication"], ref,
                       f"replicas {spec.get('replicas')}: topics.md says {rule['replicas']}, "
                       f"topic_replication is {config['topic_replication']}")
            self.check(int(tconf.get("min.insync.replicas", 1)) == rule["min_isr"], ref,
                       f"min.insync.replicas must be {rule['min_isr']}")
            self.check(tconf.get("cleanup.policy") == rule["cleanup"], ref, f"cleanup.policy must be {rule['cleanup']}")
            self.check(int(tconf.get("retention.ms", 0)) == rule["retention_ms"], ref,
                       f"retention.ms must be {rule['retention_ms']} (topics.md)")
        # ScyllaDB: the client Service (<name>-client) and the keyspace Job
        clients = {f"{s['metadata']['name']}-client.{s['metadata'].get('namespace')}.svc:9042": s for s in self.of_kind("ScyllaCluster")}
        self.check(all(hp.strip() in clients for hp in config["cql_contact"].split(",")), where,
                   f"cql_contact {config['cql_contact']!r} is none of the ScyllaClusters' client Services {sorted(clients)}")
        members = {s["spec"]["datacenter"]["name"]: sum(r.get("members", 0) for r in s["spec"]["datacenter"].get("racks") or [])
                   for s in self.of_kind("ScyllaCluster")}
        for job in self.of_kind("Job"):
            text = " ".join(str(a) for c in job["spec"]["template"]["spec"]["containers"]
                            for a in (c.get("command") or []) + (c.get("args") or []))
            m = re.search(r"CREATE\s+KEYSPACE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)\s+WITH\s+replication\s*=\s*(\{[^}]*\})", text, re.I)
            if not m:
                continue
            ref = self.ref(job)
            self.check(m.group(1) == config["cql_keyspace"], ref,
                       f"creates keyspace {m.group(1)!r}, cql_keyspace is {config['cql_keyspace']!r}")
            replication = dict(re.findall(r"'([^']+)'\s*:\s*'?([^',}]+)'?", m.group(2)))
            self.check(replication.pop("class", None) == "NetworkTopologyStrategy", ref, "must use NetworkTopologyStrategy")
            for dc, factor in replication.items():
                self.check(dc in members and int(factor) <= members[dc], ref,
                           f"replication {factor} in {dc!r}, which has {members.get(dc, 0)} members")
            self.check(config["cql_contact"].split(",")[0].split(":")[0] in text, ref, "does not connect to cql_contact")

    def run(self) -> int:
        config = self.config()
        if config is not None:
            self.services(config)
            self.infrastructure(config)
        for problem in self.problems:
            print(f"  - {problem}")
        print(f"ledger rules: {len(self.docs)} resources, {self.checks} checks, {len(self.problems)} problems")
        return 1 if self.problems else 0


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    docs = []
    for path in argv[2:]:
        docs += [d for d in yaml.safe_load_all(Path(path).read_text()) if isinstance(d, dict) and d.get("kind")]
    return Checker(argv[1], docs).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
