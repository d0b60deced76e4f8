#!/usr/bin/env python3
"""Offline validation of the ledger's Kubernetes manifests (everything under k8s/).

Run it through scripts/validate-k8s, which installs the pinned dependencies into
a cached venv. No cluster, no Docker, no network.

What is checked:
  * every *.yaml parses (duplicate keys are errors) and is a list of objects
    with apiVersion, kind and metadata.name;
  * every manifest is listed by a kustomization.yaml (or lives in examples/,
    which is never applied), and every listed file exists;
  * core Kubernetes resources against the OpenAPI schemas bundled with
    kubernetes-validate, strict (unknown fields are errors), for each requested
    Kubernetes version;
  * the Strimzi and Scylla Operator custom resources against the hand-written
    subset schemas below (CRD_SCHEMAS): the fields this repository uses, with
    their types and enums, unknown fields rejected. They are NOT the operators'
    CRDs (those are not vendored here); a valid operator field that is missing
    from a subset schema must be added to it;
  * references: Deployment selectors match their pod labels, Services, PDBs and
    HPAs select or target an existing Deployment, Service target ports exist,
    volumes, ConfigMaps and Secrets referenced exist, probes use declared ports;
  * security and operations: non-root, read-only root filesystem, no privilege
    escalation, all capabilities dropped, seccomp RuntimeDefault, requests and
    limits (requests <= limits), liveness and readiness probes;
  * the ledger's contract: the ConfigMap's ledger.toml parses as TOML with the
    expected keys and no key the binary refuses, and agrees with the Deployments (config path, ports), the
    Strimzi Kafka (bootstrap Service, replication), the KafkaTopics (names,
    partitions = shards, retention of schemas/kafka/topics.md), the
    ScyllaCluster (client Service, datacenter, members) and the keyspace Job.

Prints one line per file (then the problems of that file, indented) and exits
1 if there is any problem.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import jsonschema
import yaml

try:
    import tomllib  # Python >= 3.11
except ModuleNotFoundError:  # pragma: no cover - older Pythons get tomli from the venv
    import tomli as tomllib

import kubernetes_validate.utils as kv
from kubernetes_validate.version import __version__ as KV_VERSION

NAMESPACE = "ledger"
PART_OF = "marketplace-ledger"
REQUIRED_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of")
LEDGER_IMAGE = "ghcr.io/marketplace/ledger"
CONFIGMAP = "ledger-config"
CONFIG_KEY = "ledger.toml"
# ledger.toml: required key -> its type (the services' configuration contract)
CONFIG_KEYS = {
    "shards": int,
    "topic_prefix": str,
    "kafka_bootstrap": str,
    "cql_contact": str,
    "cql_keyspace": str,
    "read_wait_ms": int,
}
# Every other key the binary accepts (ClusterSettings in crates/ledger-cli/src/cluster.rs, parsed
# with deny_unknown_fields: any other key stops the services at start). jwt_secret is left out on
# purpose: it belongs in the Secret, never in a ConfigMap.
CONFIG_OPTIONAL_KEYS = {
    "topic_replication": int,
    "reply_partitions": int,
    "escrow_hold_ms": int,
    "resale_hold_ms": int,
    "tick_interval_ms": int,
    "snapshot_every_events": int,
    "http_addr": str,
    "engine": bool,
    "projector_group": str,
}
# keys that must be set although optional: the services create missing topics with them (the
# code's defaults, replication 1, are the single-node test broker's)
CONFIG_MUST_SET = ("topic_replication", "reply_partitions")
# subcommand -> its HTTP port (LEDGER_HTTP_ADDR default 0.0.0.0:<port>)
SERVICES = {"command-api": 8080, "query-api": 8081, "projector": 8082}
# ClusterSettings::validate requires a >= 16-character secret of every service
NEEDS_JWT = {"command-api", "query-api", "projector"}
# schemas/kafka/topics.md: suffix -> (partitions = shards?, retention.ms, retention.bytes)
TOPICS = {
    "commands": (True, 7 * 24 * 3600 * 1000, -1),
    "events": (True, -1, -1),
    "shard-messages": (True, 7 * 24 * 3600 * 1000, -1),
    "replies": (False, 3600 * 1000, -1),
}
TOPIC_REPLICAS = 3
TOPIC_MIN_ISR = 2
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PriorityClass", "StorageClass", "PersistentVolume"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}

# ----------------------------------------------------------------------------------------
# Hand-written subset schemas of the operators' custom resources (see the module doc).
# "OPEN" marks a sub-object that is accepted without looking inside.

OPEN = {"type": "object"}
STR = {"type": "string"}
INT = {"type": "integer"}
BOOL = {"type": "boolean"}
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
QUANTITY = {"anyOf": [{"type": "integer", "minimum": 0},
                      {"type": "string",
                       "pattern": r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][0-9]+)?$"}]}


def obj(properties: dict, required: tuple = ()) -> dict:
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    return schema


def array(items: dict, min_items: int = 0) -> dict:
    return {"type": "array", "items": items, "minItems": min_items}


RESOURCES = obj({
    "requests": {"type": "object", "additionalProperties": QUANTITY},
    "limits": {"type": "object", "additionalProperties": QUANTITY},
    "claims": array(OPEN),
})
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": DNS1123_SUBDOMAIN, "maxLength": 253},
        "namespace": {"type": "string", "pattern": DNS1123_LABEL, "maxLength": 63},
        "labels": {"type": "object", "additionalProperties": STR},
        "annotations": {"type": "object", "additionalProperties": STR},
    },
}


def resource_schema(api_version: str, kind: str, spec: dict) -> dict:
    return obj({
        "apiVersion": {"const": api_version},
        "kind": {"const": kind},
        "metadata": METADATA,
        "spec": spec,
    }, required=("apiVersion", "kind", "metadata", "spec"))


KAFKA_CONFIG_VALUE = {"type": ["string", "integer", "number", "boolean"]}
STRIMZI_STORAGE_VOLUME = obj({
    "id": {"type": "integer", "minimum": 0},
    "type": {"enum": ["ephemeral", "persistent-claim"]},
    "size": STR,
    "sizeLimit": STR,
    "class": STR,
    "deleteClaim": BOOL,
    "kraftMetadata": {"enum": ["shared"]},
    "selector": {"type": "object", "additionalProperties": STR},
    "overrides": array(OPEN),
}, required=("type",))

CRD_SCHEMAS = {
    # Strimzi: https://strimzi.io/docs/operators/latest/configuring (API reference)
    ("kafka.strimzi.io/v1beta2", "Kafka"): resource_schema("kafka.strimzi.io/v1beta2", "Kafka", obj({
        "kafka": obj({
            "version": STR,
            "metadataVersion": STR,
            "listeners": array(obj({
                "name": {"type": "string", "pattern": r"^[a-z0-9]{1,11}$"},
                "port": {"type": "integer", "minimum": 9092, "maximum": 65535},
                "type": {"enum": ["internal", "route", "loadbalancer", "nodeport", "ingress", "cluster-ip"]},
                "tls": BOOL,
                "authentication": OPEN,
                "configuration": OPEN,
                "networkPolicyPeers": array(OPEN),
            }, required=("name", "port", "type", "tls")), min_items=1),
            "config": {"type": "object", "additionalProperties": KAFKA_CONFIG_VALUE},
            "authorization": OPEN,
            "rack": OPEN,
            "resources": RESOURCES,
            "jvmOptions": OPEN,
            "logging": OPEN,
            "metricsConfig": OPEN,
            "livenessProbe": OPEN,
            "readinessProbe": OPEN,
            "template": OPEN,
            "brokerRackInitImage": STR,
            "image": STR,
        }, required=("listeners",)),
        # KRaft only: no `zookeeper` (an error here on purpose)
        "entityOperator": obj({
            "topicOperator": OPEN,
            "userOperator": OPEN,
            "template": OPEN,
        }),
        "cruiseControl": OPEN,
        "kafkaExporter": OPEN,
        "clusterCa": OPEN,
        "clientsCa": OPEN,
        "maintenanceTimeWindows": array(STR),
    }, required=("kafka",))),
    ("kafka.strimzi.io/v1beta2", "KafkaNodePool"): resource_schema("kafka.strimzi.io/v1beta2", "KafkaNodePool", obj({
        "replicas": {"type": "integer", "minimum": 0},
        "roles": {"type": "array", "items": {"enum": ["controller", "broker"]}, "minItems": 1, "uniqueItems": True},
        "storage": obj({
            "type": {"enum": ["ephemeral", "persistent-claim", "jbod"]},
            "size": STR,
            "sizeLimit": STR,
            "class": STR,
            "deleteClaim": BOOL,
            "kraftMetadata": {"enum": ["shared"]},
            "volumes": array(STRIMZI_STORAGE_VOLUME, min_items=1),
        }, required=("type",)),
        "resources": RESOURCES,
        "jvmOptions": OPEN,
        "template": OPEN,
    }, required=("replicas", "roles", "storage"))),
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"): resource_schema("kafka.strimzi.io/v1beta2", "KafkaTopic", obj({
        "topicName": {"type": "string", "pattern": r"^[a-zA-Z0-9._-]{1,249}$"},
        "partitions": {"type": "integer", "minimum": 1},
        "replicas": {"type": "integer", "minimum": 1, "maximum": 32767},
        "config": {"type": "object", "additionalProperties": KAFKA_CONFIG_VALUE},
    })),
    # Scylla Operator: https://operator.docs.scylladb.com (API reference, ScyllaCluster v1)
    ("scylla.scylladb.com/v1", "ScyllaCluster"): resource_schema("scylla.scylladb.com/v1", "ScyllaCluster", obj({
        "version": STR,
        "agentVersion": STR,
        "repository": STR,
        "agentRepository": STR,
        "developerMode": BOOL,
        "cpuset": BOOL,
        "automaticOrphanedNodeCleanup": BOOL,
        "sysctls": array(STR),
        "scyllaArgs": STR,
        "alternator": OPEN,
        "network": OPEN,
        "exposeOptions": OPEN,
        "podMetadata": OPEN,
        "imagePullSecrets": array(OPEN),
        "repairs": array(OPEN),
        "backups": array(OPEN),
        "externalSeeds": array(STR),
        "minReadySeconds": INT,
        "minTerminationGracePeriodSeconds": INT,
        "forceRedeploymentReason": STR,
        "datacenter": obj({
            "name": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]+$"},
            "racks": array(obj({
                "name": {"type": "string", "pattern": DNS1123_LABEL},
                "members": {"type": "integer", "minimum": 0},
                "storage": obj({
                    "capacity": QUANTITY,
                    "storageClassName": STR,
                    "metadata": OPEN,
                }, required=("capacity",)),
                "resources": RESOURCES,
                "agentResources": RESOURCES,
                "placement": obj({
                    "nodeAffinity": OPEN,
                    "podAffinity": OPEN,
                    "podAntiAffinity": OPEN,
                    "tolerations": array(OPEN),
                }),
                "scyllaConfig": STR,
                "scyllaAgentConfig": STR,
                "volumes": array(OPEN),
                "volumeMounts": array(OPEN),
                "agentVolumeMounts": array(OPEN),
                "exposeOptions": OPEN,
            }, required=("name", "members", "storage", "resources")), min_items=1),
        }, required=("name", "racks")),
    }, required=("version", "datacenter"))),
}

# ----------------------------------------------------------------------------------------


class Doc:
    """One resource of one file."""

    def __init__(self, path: Path, rel: str, index: int, obj: dict):
        self.path, self.rel, self.index, self.obj = path, rel, index, obj

    @property
    def kind(self) -> str:
        return self.obj.get("kind", "?")

    @property
    def name(self) -> str:
        return (self.obj.get("metadata") or {}).get("name", "?")

    @property
    def namespace(self) -> str | None:
        return (self.obj.get("metadata") or {}).get("namespace")

    @property
    def labels(self) -> dict:
        return (self.obj.get("metadata") or {}).get("labels") or {}

    @property
    def spec(self) -> dict:
        return self.obj.get("spec") or {}

    def ref(self) -> str:
        return f"{self.kind}/{self.name}"


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last)."""


def _construct_mapping(loader, node, deep=False):
    loader.flatten_mapping(node)
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class Validator:
    def __init__(self, root: Path, versions: list[str]):
        self.root = root.resolve()
        self.base = self.root.parent
        self.versions = versions
        self.problems: dict[str, list[str]] = defaultdict(list)
        self.notes: dict[str, list[str]] = defaultdict(list)
        self.docs: list[Doc] = []
        self.files: list[Path] = []
        self.kustomizations: dict[Path, dict] = {}
        self.listed: dict[Path, Path] = {}  # manifest -> kustomization listing it
        self.config: dict | None = None
        self.config_doc: Doc | None = None
        self.checks = 0

    # -------------------------------------------------------------------- helpers

    def rel(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.base))
        except ValueError:
            return str(path)

    def problem(self, where, message: str) -> None:
        """where: a Doc, a Path or a relative file name."""
        if isinstance(where, Doc):
            self.problems[where.rel].append(f"{where.ref()}: {message}")
        elif isinstance(where, Path):
            self.problems[self.rel(where)].append(message)
        else:
            self.problems[where].append(message)

    def check(self, ok: bool, where, message: str) -> bool:
        self.checks += 1
        if not ok:
            self.problem(where, message)
        return ok

    def of_kind(self, *kinds: str) -> list[Doc]:
        return [d for d in self.docs if d.kind in kinds]

    def find(self, kind: str, name: str, namespace: str | None = NAMESPACE) -> Doc | None:
        for d in self.docs:
            if d.kind == kind and d.name == name and (namespace is None or d.namespace == namespace):
                return d
        return None

    # -------------------------------------------------------------------- loading

    def load(self) -> None:
        self.files = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml"))
        for path in self.files:
            rel = self.rel(path)
            try:
                objects = list(yaml.load_all(path.read_text(), Loader=UniqueKeyLoader))
            except (yaml.YAMLError, UnicodeDecodeError) as e:
                message = " ".join(str(e).split()).replace('in "<unicode string>", ', "at ")
                self.problem(rel, f"YAML does not parse: {message}")
                continue
            objects = [o for o in objects if o is not None]
            if not objects:
                self.problem(rel, "no YAML document in the file")
                continue
            if path.name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
                if len(objects) != 1 or not isinstance(objects[0], dict):
                    self.problem(rel, "a kustomization must be one YAML mapping")
                else:
                    self.kustomizations[path] = objects[0]
                continue
            for i, o in enumerate(objects):
                where = f"document {i + 1}"
                if not isinstance(o, dict):
                    self.problem(rel, f"{where} is not a mapping")
                    continue
                missing = [k for k in ("apiVersion", "kind") if not isinstance(o.get(k), str) or not o.get(k)]
                name = (o.get("metadata") or {}).get("name") if isinstance(o.get("metadata"), dict) else None
                if not isinstance(name, str) or not name:
                    missing.append("metadata.name")
                if missing:
                    self.problem(rel, f"{where} lacks {', '.join(missing)}")
                    continue
                self.docs.append(Doc(path, rel, i, o))

    # -------------------------------------------------------------------- kustomize

    def check_kustomizations(self) -> None:
        if not self.kustomizations:
            self.problem(self.rel(self.root), "no kustomization.yaml")
        for path, k in self.kustomizations.items():
            rel = self.rel(path)
            self.check(k.get("apiVersion") == "kustomize.config.k8s.io/v1beta1" and k.get("kind") == "Kustomization",
                       rel, "apiVersion/kind must be kustomize.config.k8s.io/v1beta1 Kustomization")
            if "namespace" in k:
                self.check(k["namespace"] == NAMESPACE, rel, f"namespace must be {NAMESPACE!r}")
            resources = k.get("resources")
            if not self.check(isinstance(resources, list) and resources, rel, "no `resources:` list"):
                continue
            seen = set()
            for entry in resources:
                if not isinstance(entry, str):
                    self.problem(rel, f"resource entry {entry!r} is not a path")
                    continue
                self.check(entry not in seen, rel, f"{entry} is listed twice")
                seen.add(entry)
                target = (path.parent / entry).resolve()
                if not self.check(target.exists(), rel, f"lists {entry}, which does not exist"):
                    continue
                if not self.check(self.root in target.parents or target == self.root, rel,
                                  f"lists {entry}, outside k8s/ (kustomize refuses files outside its root)"):
                    continue
                if target.is_dir():
                    self.check(any((target / n).exists() for n in ("kustomization.yaml", "kustomization.yml")),
                               rel, f"lists directory {entry}, which has no kustomization.yaml")
                    continue
                if target in self.listed:
                    self.problem(rel, f"{entry} is also listed by {self.rel(self.listed[target])}")
                self.listed[target] = path
            for image in k.get("images") or []:
                name, tag = image.get("name"), image.get("newTag")
                if not name or tag is None:
                    continue
                for d in self.docs:
                    if d.path.resolve() not in self.listed or self.listed[d.path.resolve()] != path:
                        continue
                    for c in self.containers(d):
                        img = c.get("image", "")
                        if img.rsplit(":", 1)[0] == name:
                            self.check(img == f"{name}:{tag}", d,
                                       f"container {c.get('name')} uses {img}, but {rel} sets newTag {tag}: "
                                       "the validated files and `kustomize build` would differ")
        for path in self.files:
            if path in self.kustomizations:
                continue
            resolved = path.resolve()
            in_examples = (self.root / "examples") in resolved.parents
            if in_examples:
                self.notes[self.rel(path)].append("example, in no kustomization (never applied)")
                self.check(resolved not in self.listed, path, "examples/ files must not be listed by a kustomization")
            else:
                self.check(resolved in self.listed, path,
                           "not listed in any kustomization.yaml (it would never be applied)")

    def check_kustomize_build(self) -> None:
        """If kustomize (or kubectl) is installed: `kustomize build` each kustomization and compare
        its output with the files validated here (they must be the same resources, field for field)."""
        if shutil.which("kustomize"):
            command = ["kustomize", "build"]
        elif shutil.which("kubectl"):
            command = ["kubectl", "kustomize"]
        else:
            for path in self.kustomizations:
                self.notes[self.rel(path)].append("`kustomize build` not run: neither kustomize nor kubectl installed")
            return
        by_path = defaultdict(list)
        for d in self.docs:
            by_path[d.path.resolve()].append(d)
        for path, k in self.kustomizations.items():
            rel = self.rel(path)
            try:
                done = subprocess.run(command + [str(path.parent)], capture_output=True, text=True, timeout=120)
            except (OSError, subprocess.TimeoutExpired) as e:
                self.problem(rel, f"`{' '.join(command)}` could not run: {e}")
                continue
            if not self.check(done.returncode == 0, rel,
                              f"`{' '.join(command)} {self.rel(path.parent)}` failed: {' '.join(done.stderr.split())[:500]}"):
                continue
            built = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
                     for o in yaml.safe_load_all(done.stdout) if o}
            raw = {(d.kind, d.namespace, d.name): d.obj
                   for target, owner in self.listed.items() if owner == path for d in by_path.get(target, [])}
            differ = sorted("/".join(str(x) for x in key) for key in set(built) | set(raw)
                            if built.get(key) != raw.get(key))
            shown = ", ".join(differ[:6]) + (f" and {len(differ) - 6} more" if len(differ) > 6 else "")
            if self.check(not differ, rel, f"`{' '.join(command)}` output differs from the files for: {shown}"):
                self.notes[rel].append(f"`{' '.join(command)}`: {len(built)} resources, identical to the files")

    # -------------------------------------------------------------------- schemas

    def check_schemas(self) -> None:
        for d in self.docs:
            key = (d.obj["apiVersion"], d.kind)
            if key in CRD_SCHEMAS:
                validator = jsonschema.Draft202012Validator(CRD_SCHEMAS[key])
                errors = sorted(validator.iter_errors(d.obj), key=lambda e: list(e.path))
                self.checks += 1
                for e in errors:
                    path = ".".join(str(p) for p in e.path) or "(root)"
                    self.problem(d, f"{path}: {e.message} [subset schema of {d.obj['apiVersion']} {d.kind}]")
                continue
            for version in self.versions:
                self.checks += 1
                try:
                    kv.validate(d.obj, version, strict=True)
                except kv.ValidationError as e:
                    path = ".".join(str(p) for p in e.path) or "(root)"
                    self.problem(d, f"{path}: {e.message} [Kubernetes {e.version}, strict]")
                except kv.SchemaNotFoundError:
                    self.problem(d, f"no schema for {d.obj['apiVersion']} {d.kind} in Kubernetes {version}: "
                                    "a removed or misspelt API, or a custom resource without a subset schema "
                                    "in k8s/validate.py (CRD_SCHEMAS)")

    def schema_note(self, d: Doc) -> str:
        if (d.obj["apiVersion"], d.kind) in CRD_SCHEMAS:
            return f"{d.ref()} (subset schema)"
        return d.ref()

    # -------------------------------------------------------------------- generic

    def check_metadata(self) -> None:
        seen = {}
        for d in self.docs:
            key = (d.kind, d.namespace, d.name)
            self.check(key not in seen, d, f"defined twice (also in {seen.get(key, d).rel})")
            seen.setdefault(key, d)
            if d.kind in CLUSTER_SCOPED:
                self.check(d.namespace is None, d, "cluster-scoped, must not have metadata.namespace")
            else:
                self.check(d.namespace == NAMESPACE, d, f"metadata.namespace must be {NAMESPACE!r}, is {d.namespace!r}")
            for label in REQUIRED_LABELS:
                self.check(label in d.labels, d, f"missing label {label}")
            if "app.kubernetes.io/part-of" in d.labels:
                self.check(d.labels["app.kubernetes.io/part-of"] == PART_OF, d,
                           f"label app.kubernetes.io/part-of must be {PART_OF!r}")
        self.check(self.find("Namespace", NAMESPACE, None) is not None, self.rel(self.root),
                   f"no Namespace {NAMESPACE!r} manifest")

    # -------------------------------------------------------------------- workloads

    @staticmethod
    def pod_template(d: Doc) -> dict:
        return d.spec.get("template") or {}

    def pod_spec(self, d: Doc) -> dict:
        return self.pod_template(d).get("spec") or {}

    def pod_labels(self, d: Doc) -> dict:
        return (self.pod_template(d).get("metadata") or {}).get("labels") or {}

    def containers(self, d: Doc) -> list[dict]:
        if d.kind not in WORKLOAD_KINDS:
            return []
        spec = self.pod_spec(d)
        return list(spec.get("containers") or []) + list(spec.get("initContainers") or [])

    @staticmethod
    def selector_matches(selector: dict, labels: dict) -> bool:
        """A LabelSelector (matchLabels + matchExpressions) against a label set."""
        if not selector:
            return False
        for k, v in (selector.get("matchLabels") or {}).items():
            if labels.get(k) != v:
                return False
        for e in selector.get("matchExpressions") or []:
            key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
            if op == "In" and labels.get(key) not in values:
                return False
            if op == "NotIn" and labels.get(key) in values:
                return False
            if op == "Exists" and key not in labels:
                return False
            if op == "DoesNotExist" and key in labels:
                return False
        return bool(selector.get("matchLabels") or selector.get("matchExpressions"))

    def deployments_selected(self, namespace: str, selector: dict) -> list[Doc]:
        return [d for d in self.of_kind("Deployment")
                if d.namespace == namespace and self.selector_matches(selector, self.pod_labels(d))]

    @staticmethod
    def parse_quantity(value) -> float | None:
        m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
        if not m:
            return None
        number, suffix = float(m.group(1)), m.group(2)
        factors = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
                   "Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40}
        return number * factors[suffix] if suffix in factors else None

    def check_workloads(self) -> None:
        hpa_targets = {(h.namespace, (h.spec.get("scaleTargetRef") or {}).get("name")) for h in self.of_kind("HorizontalPodAutoscaler")}
        secrets = {(s.name, k) for s in self.of_kind("Secret")
                   for k in list((s.obj.get("data") or {})) + list((s.obj.get("stringData") or {}))}
        for d in self.of_kind(*WORKLOAD_KINDS):
            spec, pod = d.spec, self.pod_spec(d)
            labels = self.pod_labels(d)
            if d.kind != "Job":
                selector = spec.get("selector") or {}
                self.check(self.selector_matches(selector, labels), d,
                           f"spec.selector {selector} does not match the pod template labels {labels}")
            for label in REQUIRED_LABELS:
                self.check(label in labels, d, f"pod template lacks label {label}")
            if d.kind == "Deployment" and (d.namespace, d.name) in hpa_targets:
                self.check("replicas" not in spec, d,
                           "has spec.replicas but an HPA scales it: every `kubectl apply` would reset the count")
            # pod security
            psc = pod.get("securityContext") or {}
            self.check(pod.get("automountServiceAccountToken") is False, d,
                       "automountServiceAccountToken must be false (the ledger calls no Kubernetes API)")
            volumes = {v.get("name"): v for v in pod.get("volumes") or []}
            for v in volumes.values():
                if "configMap" in v:
                    cm_name = v["configMap"].get("name")
                    cm = self.find("ConfigMap", cm_name, d.namespace)
                    if self.check(cm is not None, d, f"volume {v['name']}: no ConfigMap {cm_name!r}"):
                        for item in v["configMap"].get("items") or []:
                            self.check(item.get("key") in (cm.obj.get("data") or {}), d,
                                       f"volume {v['name']}: ConfigMap {cm_name} has no key {item.get('key')!r}")
            for (aff_kind, aff) in ((pod.get("affinity") or {}).items()):
                if aff_kind != "podAntiAffinity":
                    continue
                for term in aff.get("preferredDuringSchedulingIgnoredDuringExecution") or []:
                    sel = (term.get("podAffinityTerm") or {}).get("labelSelector") or {}
                    self.check(self.selector_matches(sel, labels), d,
                               "podAntiAffinity labelSelector does not select this workload's own pods")
            for tsc in pod.get("topologySpreadConstraints") or []:
                self.check(self.selector_matches(tsc.get("labelSelector") or {}, labels), d,
                           "topologySpreadConstraints labelSelector does not select this workload's own pods")
            for c in self.containers(d):
                cname = c.get("name")
                csc = c.get("securityContext") or {}
                self.check(csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, d,
                           f"container {cname}: runAsNonRoot must be true")
                self.check(csc.get("readOnlyRootFilesystem") is True, d,
                           f"container {cname}: readOnlyRootFilesystem must be true")
                self.check(csc.get("allowPrivilegeEscalation") is False, d,
                           f"container {cname}: allowPrivilegeEscalation must be false")
                self.check("ALL" in ((csc.get("capabilities") or {}).get("drop") or []), d,
                           f"container {cname}: capabilities must drop ALL")
                self.check(((csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")) == "RuntimeDefault",
                           d, f"container {cname}: seccompProfile must be RuntimeDefault")
                self.check(c.get("privileged") is None and not csc.get("privileged"), d, f"container {cname}: privileged")
                res = c.get("resources") or {}
                for part in ("requests", "limits"):
                    for r in ("cpu", "memory"):
                        self.check(r in (res.get(part) or {}), d, f"container {cname}: no resources.{part}.{r}")
                for r in ("cpu", "memory"):
                    req = self.parse_quantity((res.get("requests") or {}).get(r, "0"))
                    lim = self.parse_quantity((res.get("limits") or {}).get(r, "0"))
                    if req is not None and lim is not None and (res.get("limits") or {}).get(r) is not None:
                        self.check(req <= lim, d, f"container {cname}: {r} request above its limit")
                ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
                port_numbers = set(ports.values())
                self.check(len(ports) == len(c.get("ports") or []), d, f"container {cname}: duplicate port names")
                for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
                    probe = c.get(probe_name)
                    if probe is None:
                        if d.kind != "Job" and probe_name != "startupProbe":
                            self.problem(d, f"container {cname}: no {probe_name}")
                        continue
                    port = (probe.get("httpGet") or probe.get("tcpSocket") or probe.get("grpc") or {}).get("port")
                    if port is not None:
                        self.check(port in ports or port in port_numbers, d,
                                   f"container {cname}: {probe_name} uses port {port!r}, not a declared container port")
                for m in c.get("volumeMounts") or []:
                    self.check(m.get("name") in volumes, d, f"container {cname}: mounts unknown volume {m.get('name')!r}")
                for e in c.get("env") or []:
                    src = e.get("valueFrom") or {}
                    if "secretKeyRef" in src:
                        ref = src["secretKeyRef"]
                        self.check((ref.get("name"), ref.get("key")) in secrets, d,
                                   f"container {cname}: env {e.get('name')} references Secret {ref.get('name')} key "
                                   f"{ref.get('key')}, which no manifest (nor examples/) defines")
                    if "configMapKeyRef" in src:
                        ref = src["configMapKeyRef"]
                        cm = self.find("ConfigMap", ref.get("name"), d.namespace)
                        self.check(cm is not None and ref.get("key") in (cm.obj.get("data") or {}), d,
                                   f"container {cname}: env {e.get('name')} references a missing ConfigMap key")
            annotations = (self.pod_template(d).get("metadata") or {}).get("annotations") or {}
            if annotations.get("prometheus.io/scrape") == "true":
                port = annotations.get("prometheus.io/port", "")
                declared = {p.get("containerPort") for c in self.containers(d) for p in c.get("ports") or []}
                self.check(port.isdigit() and int(port) in declared, d,
                           f"prometheus.io/port {port!r} is not a declared container port")

    def check_services(self) -> None:
        for s in self.of_kind("Service"):
            selector = s.spec.get("selector") or {}
            if not self.check(bool(selector), s, "has no selector"):
                continue
            matched = self.deployments_selected(s.namespace, {"matchLabels": selector})
            if not self.check(bool(matched), s, f"selector {selector} matches no Deployment's pods"):
                continue
            for port in s.spec.get("ports") or []:
                target = port.get("targetPort", port.get("port"))
                for d in matched:
                    declared = [(p.get("name"), p.get("containerPort")) for c in self.containers(d) for p in c.get("ports") or []]
                    self.check(any(target in pair for pair in declared), s,
                               f"port {port.get('name')}: targetPort {target!r} is not a container port of {d.ref()}")

    def check_pdbs_and_hpas(self) -> None:
        for p in self.of_kind("PodDisruptionBudget"):
            matched = self.deployments_selected(p.namespace, p.spec.get("selector") or {})
            self.check(len(matched) == 1, p,
                       f"selector must match exactly one Deployment, matches {[d.name for d in matched]}")
            self.check(("maxUnavailable" in p.spec) != ("minAvailable" in p.spec), p,
                       "needs exactly one of maxUnavailable / minAvailable")
        for h in self.of_kind("HorizontalPodAutoscaler"):
            ref = h.spec.get("scaleTargetRef") or {}
            self.check(ref.get("kind") == "Deployment" and ref.get("apiVersion") == "apps/v1", h,
                       "scaleTargetRef must be an apps/v1 Deployment")
            target = self.find("Deployment", ref.get("name"), h.namespace)
            if not self.check(target is not None, h, f"targets Deployment {ref.get('name')!r}, which does not exist"):
                continue
            lo, hi = h.spec.get("minReplicas", 1), h.spec.get("maxReplicas", 0)
            self.check(1 <= lo <= hi, h, f"minReplicas {lo} / maxReplicas {hi} out of order")
            for m in h.spec.get("metrics") or []:
                if m.get("type") == "Resource":
                    r = (m.get("resource") or {}).get("name")
                    self.check(all(r in ((c.get("resources") or {}).get("requests") or {}) for c in self.containers(target)),
                               h, f"scales on {r} utilisation, but a container of {target.ref()} requests no {r}")
        for d in self.of_kind("Deployment"):
            self.check(any(self.selector_matches(p.spec.get("selector") or {}, self.pod_labels(d))
                           for p in self.of_kind("PodDisruptionBudget") if p.namespace == d.namespace),
                       d, "no PodDisruptionBudget covers it")

    # -------------------------------------------------------------------- ledger contract

    def check_config(self) -> None:
        cm = self.find("ConfigMap", CONFIGMAP)
        if not self.check(cm is not None, self.rel(self.root), f"no ConfigMap {CONFIGMAP!r}"):
            return
        self.config_doc = cm
        text = (cm.obj.get("data") or {}).get(CONFIG_KEY)
        if not self.check(isinstance(text, str), cm, f"no data key {CONFIG_KEY!r}"):
            return
        try:
            config = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            self.problem(cm, f"{CONFIG_KEY} is not valid TOML: {e}")
            return
        known = {**CONFIG_KEYS, **CONFIG_OPTIONAL_KEYS}
        for key in config:
            if key == "jwt_secret":
                self.problem(cm, f"{CONFIG_KEY} holds jwt_secret: it belongs in the Secret ledger-jwt")
            else:
                self.check(key in known, cm, f"{CONFIG_KEY}: unknown key {key!r} (the services refuse unknown "
                                             "keys; see ClusterSettings in crates/ledger-cli/src/cluster.rs)")
        for key in list(CONFIG_KEYS) + list(CONFIG_MUST_SET):
            self.check(key in config, cm, f"{CONFIG_KEY} lacks {key}")
        for key, value in config.items():
            typ = known.get(key)
            if typ is not None:
                self.check(isinstance(value, typ) and (typ is bool or not isinstance(value, bool)), cm,
                           f"{CONFIG_KEY}: {key} must be a {typ.__name__}, is {value!r}")
        if any(k not in config or not isinstance(config[k], known[k]) for k in list(CONFIG_KEYS) + list(CONFIG_MUST_SET)):
            return
        self.check(1 <= config["shards"] <= 1024, cm, f"{CONFIG_KEY}: shards must be 1..1024")
        self.check(config["read_wait_ms"] > 0, cm, f"{CONFIG_KEY}: read_wait_ms must be positive")
        self.check(re.fullmatch(r"[a-z][a-z0-9_]{0,47}", config["cql_keyspace"]) is not None, cm,
                   f"{CONFIG_KEY}: cql_keyspace {config['cql_keyspace']!r} is not a plain CQL identifier")
        self.check(re.fullmatch(r"[a-zA-Z0-9._-]+", config["topic_prefix"]) is not None, cm,
                   f"{CONFIG_KEY}: topic_prefix {config['topic_prefix']!r} has characters Kafka refuses")
        for key in ("kafka_bootstrap", "cql_contact"):
            for hp in config[key].split(","):
                self.check(re.fullmatch(r"[a-z0-9.-]+:[0-9]{1,5}", hp.strip()) is not None, cm,
                           f"{CONFIG_KEY}: {key} entry {hp!r} is not host:port")
        self.config = config

    def ledger_deployments(self) -> dict[str, tuple[Doc, dict]]:
        """subcommand -> (Deployment, its ledger container)"""
        found = {}
        for d in self.of_kind("Deployment"):
            for c in self.containers(d):
                if c.get("image", "").rsplit(":", 1)[0] != LEDGER_IMAGE:
                    continue
                args = list(c.get("command") or []) + list(c.get("args") or [])
                sub = args[0] if args else None
                if not self.check(sub in SERVICES, d, f"container {c.get('name')}: first argument {sub!r} "
                                  f"is none of the ledger's subcommands {sorted(SERVICES)}"):
                    continue
                self.check(sub not in found, d, f"a second Deployment runs `ledger {sub}`")
                found.setdefault(sub, (d, c))
        return found

    def check_ledger_services(self) -> None:
        found = self.ledger_deployments()
        where = self.rel(self.root)
        for sub in SERVICES:
            self.check(sub in found, where, f"no Deployment runs `ledger {sub}`")
        images = {c.get("image") for _, c in found.values()}
        self.check(len(images) <= 1, where, f"the ledger Deployments run different images: {sorted(images)}")
        shards = (self.config or {}).get("shards")
        hpas = {(h.spec.get("scaleTargetRef") or {}).get("name"): h for h in self.of_kind("HorizontalPodAutoscaler")}
        for sub, (d, c) in found.items():
            pod = self.pod_spec(d)
            env = {e.get("name"): e for e in c.get("env") or []}
            self.check(pod.get("enableServiceLinks") is False, d,
                       "enableServiceLinks must be false: Service env vars (LEDGER_KAFKA_BOOTSTRAP_PORT=tcp://..) "
                       "would land among the LEDGER_* names the configuration is read from")
            # configuration file
            config_path = (env.get("LEDGER_CONFIG") or {}).get("value")
            mounted = set()
            volumes = {v.get("name"): v for v in pod.get("volumes") or []}
            for m in c.get("volumeMounts") or []:
                v = volumes.get(m.get("name")) or {}
                if (v.get("configMap") or {}).get("name") == CONFIGMAP:
                    items = v["configMap"].get("items") or [{"key": CONFIG_KEY, "path": CONFIG_KEY}]
                    mounted |= {m.get("mountPath", "").rstrip("/") + "/" + i.get("path") for i in items
                                if i.get("key") == CONFIG_KEY and "subPath" not in m}
                    if m.get("subPath") == CONFIG_KEY:
                        mounted.add(m.get("mountPath"))
            self.check(config_path is not None and config_path in mounted, d,
                       f"LEDGER_CONFIG={config_path!r}, but {CONFIGMAP}/{CONFIG_KEY} is mounted at {sorted(mounted)}")
            # HTTP address and port
            port = SERVICES[sub]
            addr = (env.get("LEDGER_HTTP_ADDR") or {}).get("value", f"0.0.0.0:{port}")
            self.check(addr.rsplit(":", 1)[-1] == str(port), d, f"LEDGER_HTTP_ADDR {addr!r} is not port {port}")
            self.check(port in {p.get("containerPort") for p in c.get("ports") or []}, d,
                       f"container port {port} is not declared")
            self.check("RUST_LOG" in env, d, "RUST_LOG is not set")
            if sub in NEEDS_JWT:
                ref = ((env.get("LEDGER_JWT_SECRET") or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
                self.check(bool(ref) and ref.get("optional") is not True, d,
                           "LEDGER_JWT_SECRET must come from a required secretKeyRef (ledger-jwt/secret)")
            self.check("value" not in (env.get("LEDGER_JWT_SECRET") or {}), d,
                       "LEDGER_JWT_SECRET given as a literal value: take it from the Secret")
            # selected by a Service
            self.check(any(self.selector_matches({"matchLabels": s.spec.get("selector") or {}}, self.pod_labels(d))
                           for s in self.of_kind("Service")), d, "no Service selects its pods")
            # scaling rules
            hpa = hpas.get(d.name)
            if sub == "projector":
                self.check(hpa is None, d, "the projector is scaled by hand (see its comment), not by an HPA")
                if shards:
                    self.check(1 <= d.spec.get("replicas", 1) <= shards, d,
                               f"replicas must be 1..shards ({shards}): more would own no partition")
            else:
                self.check(hpa is not None, d, "no HorizontalPodAutoscaler targets it")
            if sub == "command-api":
                self.check(pod.get("terminationGracePeriodSeconds", 30) >= 60, d,
                           "terminationGracePeriodSeconds must be >= 60 (the engine drains its shards)")
                self.check("startupProbe" in c, d, "needs a startupProbe (shard recovery can take minutes)")
                self.check(((c.get("lifecycle") or {}).get("preStop")) is not None, d,
                           "needs a preStop pause so the Service stops routing before the drain")
                strategy = (d.spec.get("strategy") or {}).get("rollingUpdate") or {}
                self.check(str(strategy.get("maxUnavailable", "25%")) == "0" and str(strategy.get("maxSurge", "25%")) == "1",
                           d, "rolls one pod at a time (maxSurge 1, maxUnavailable 0): each start moves shards")
                if hpa is not None:
                    if shards:
                        self.check(hpa.spec.get("maxReplicas", 0) <= shards, hpa,
                                   f"maxReplicas above shards ({shards}): the extra replicas would own no shard")
                    behavior = hpa.spec.get("behavior") or {}
                    down = behavior.get("scaleDown") or {}
                    self.check(down.get("stabilizationWindowSeconds", 0) >= 60, hpa,
                               "scale-down needs a stabilization window (>= 60 s): each step rebalances shards")
                    for direction in ("scaleUp", "scaleDown"):
                        rules = behavior.get(direction) or {}
                        policies = rules.get("policies") or []
                        self.check(bool(policies) and all(p.get("type") == "Pods" and p.get("value") == 1
                                                          and p.get("periodSeconds", 0) >= 60 for p in policies)
                                   and rules.get("selectPolicy", "Max") != "Disabled", hpa,
                                   f"{direction} must move at most 1 pod per minute (policies type Pods, value 1, "
                                   "periodSeconds >= 60)")

    def check_infrastructure(self) -> None:
        config = self.config
        if config is None:
            return
        cm = self.config_doc
        shards = config["shards"]
        # --- Kafka
        kafkas = self.of_kind("Kafka")
        pools = self.of_kind("KafkaNodePool")
        for p in pools + self.of_kind("KafkaTopic"):
            cluster = p.labels.get("strimzi.io/cluster")
            self.check(cluster is not None and self.find("Kafka", cluster, p.namespace) is not None, p,
                       f"label strimzi.io/cluster={cluster!r} names no Kafka in namespace {p.namespace}")
        bootstraps = set()
        for k in kafkas:
            brokers = sum(p.spec.get("replicas", 0) for p in pools
                          if p.labels.get("strimzi.io/cluster") == k.name and "broker" in (p.spec.get("roles") or []))
            controllers = sum(p.spec.get("replicas", 0) for p in pools
                              if p.labels.get("strimzi.io/cluster") == k.name and "controller" in (p.spec.get("roles") or []))
            self.check(brokers >= 1, k, "no KafkaNodePool with the broker role")
            self.check(controllers % 2 == 1, k, f"{controllers} KRaft controllers: use an odd number for a quorum")
            kconf = (k.spec.get("kafka") or {}).get("config") or {}
            for rf_key, isr_key in (("default.replication.factor", "min.insync.replicas"),
                                    ("transaction.state.log.replication.factor", "transaction.state.log.min.isr")):
                rf, isr = int(kconf.get(rf_key, 1)), int(kconf.get(isr_key, 1))
                self.check(rf == TOPIC_REPLICAS and isr == TOPIC_MIN_ISR, k,
                           f"{rf_key}/{isr_key} must be {TOPIC_REPLICAS}/{TOPIC_MIN_ISR} (schemas/kafka/topics.md), "
                           f"are {rf}/{isr}")
                self.check(rf <= brokers, k, f"{rf_key} {rf} exceeds the {brokers} brokers")
            for listener in (k.spec.get("kafka") or {}).get("listeners") or []:
                if listener.get("type") == "internal" and listener.get("tls") is False:
                    bootstraps.add(f"{k.name}-kafka-bootstrap.{k.namespace}.svc:{listener.get('port')}")
        if self.check(bool(kafkas), cm, "no Strimzi Kafka resource to check kafka_bootstrap against"):
            self.check(all(hp.strip() in bootstraps for hp in config["kafka_bootstrap"].split(",")), cm,
                       f"kafka_bootstrap {config['kafka_bootstrap']!r} is not the bootstrap Service of a plain listener "
                       f"of the Kafka resources ({sorted(bootstraps)}; Strimzi names it <kafka-name>-kafka-bootstrap)")
        brokers_total = sum(p.spec.get("replicas", 0) for p in pools if "broker" in (p.spec.get("roles") or []))
        topics = {}
        for t in self.of_kind("KafkaTopic"):
            topics[t.spec.get("topicName", t.name)] = t
        for suffix, (per_shard, retention_ms, retention_bytes) in TOPICS.items():
            name = f"{config['topic_prefix']}.{suffix}"
            t = topics.get(name)
            if not self.check(t is not None, cm, f"no KafkaTopic for topic {name} (topic_prefix {config['topic_prefix']!r})"):
                continue
            if per_shard:
                self.check(t.spec.get("partitions") == shards, t,
                           f"{name} has {t.spec.get('partitions')} partitions, must be shards = {shards}")
            else:
                self.check(1 <= t.spec.get("partitions", 0) <= shards, t, f"{name}: partitions must be small (1..shards)")
            replicas = t.spec.get("replicas")
            self.check(replicas == TOPIC_REPLICAS, t, f"{name}: replicas must be {TOPIC_REPLICAS}")
            self.check(replicas is None or replicas <= brokers_total, t, f"{name}: more replicas than brokers")
            tconf = t.spec.get("config") or {}

            def num(key):
                try:
                    return int(tconf[key])
                except (KeyError, TypeError, ValueError):
                    return None
            self.check(tconf.get("cleanup.policy") == "delete", t, f"{name}: cleanup.policy must be delete (never compacted)")
            self.check(num("retention.ms") == retention_ms, t, f"{name}: retention.ms must be {retention_ms}")
            self.check(num("retention.bytes") == retention_bytes, t, f"{name}: retention.bytes must be {retention_bytes}")
            self.check(num("min.insync.replicas") == TOPIC_MIN_ISR, t, f"{name}: min.insync.replicas must be {TOPIC_MIN_ISR}")
            self.check(replicas == config["topic_replication"], t,
                       f"{name}: replicas {replicas}, but ledger.toml topic_replication is {config['topic_replication']}")
            if suffix == "replies":
                self.check(t.spec.get("partitions") == config["reply_partitions"], t,
                           f"{name}: {t.spec.get('partitions')} partitions, but ledger.toml reply_partitions is "
                           f"{config['reply_partitions']} (the services refuse to start on a mismatch)")
        # --- ScyllaDB
        scyllas = self.of_kind("ScyllaCluster")
        clients = {f"{s.name}-client.{s.namespace}.svc:9042": s for s in scyllas}
        if self.check(bool(scyllas), cm, "no ScyllaCluster resource to check cql_contact against"):
            self.check(all(hp.strip() in clients for hp in config["cql_contact"].split(",")), cm,
                       f"cql_contact {config['cql_contact']!r} is not the client Service of a ScyllaCluster "
                       f"({sorted(clients)}; the operator names it <name>-client)")
        dcs = {}
        for s in scyllas:
            dc = s.spec.get("datacenter") or {}
            dcs[dc.get("name")] = sum(r.get("members", 0) for r in dc.get("racks") or [])
        # --- keyspace Job
        jobs = [(j, " ".join(str(a) for c in self.containers(j) for a in (c.get("command") or []) + (c.get("args") or [])))
                for j in self.of_kind("Job")]
        jobs = [(j, cmd) for j, cmd in jobs if "CREATE KEYSPACE" in cmd.upper()]
        if not jobs:
            self.notes[cm.rel].append("no keyspace Job: the keyspace must be created by hand (see README)")
        for j, cmd in jobs:
            m = re.search(r"CREATE\s+KEYSPACE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)\s+WITH\s+replication\s*=\s*(\{[^}]*\})",
                          cmd, re.IGNORECASE)
            if not self.check(m is not None, j, "cannot read its CREATE KEYSPACE statement"):
                continue
            keyspace = m.group(1)
            replication = dict(re.findall(r"'([^']+)'\s*:\s*'?([^',}]+)'?", m.group(2)))
            self.check(keyspace == config["cql_keyspace"], j,
                       f"creates keyspace {keyspace!r}, ledger.toml uses {config['cql_keyspace']!r}")
            self.check(replication.get("class") == "NetworkTopologyStrategy", j,
                       "the keyspace must use NetworkTopologyStrategy")
            for dc, rf in replication.items():
                if dc in ("class", "replication_factor"):
                    continue
                if self.check(dc in dcs, j, f"replicates to datacenter {dc!r}, which no ScyllaCluster has ({sorted(dcs)})"):
                    self.check(rf.strip().isdigit() and int(rf) <= dcs[dc], j,
                               f"replication {rf} in {dc} exceeds its {dcs[dc]} members")
                    self.check(rf.strip() == "3", j, f"replication in {dc} must be 3 (QUORUM reads and writes)")
            host = config["cql_contact"].split(",")[0].split(":")[0]
            self.check(host in cmd, j, f"does not connect to {host} (cql_contact)")

    # -------------------------------------------------------------------- report

    def run(self) -> int:
        self.load()
        for phase in (self.check_kustomizations, self.check_kustomize_build, self.check_schemas, self.check_metadata,
                      self.check_workloads, self.check_services, self.check_pdbs_and_hpas,
                      self.check_config, self.check_ledger_services, self.check_infrastructure):
            try:
                phase()
            except SystemExit:
                raise
            except Exception as e:  # malformed input that a schema check has already reported
                self.problem(self.rel(self.root), f"{phase.__name__} stopped on malformed input "
                                                  f"({type(e).__name__}: {e}); fix the problems above first")

        versions = ", ".join(self.versions)
        by_file = defaultdict(list)
        for d in self.docs:
            by_file[d.rel].append(d)
        width = max(len(self.rel(p)) for p in self.files) if self.files else 10
        for path in self.files:
            rel = self.rel(path)
            if path in self.kustomizations:
                what = f"Kustomization, {len(self.kustomizations[path].get('resources') or [])} resources listed"
            else:
                docs = by_file.get(rel, [])
                what = ", ".join(self.schema_note(d) for d in docs) or "-"
            notes = "; ".join(self.notes.get(rel, []))
            status = "FAIL" if self.problems.get(rel) else "ok"
            print(f"{status:<4}  {rel:<{width}}  {what}{'  [' + notes + ']' if notes else ''}")
            for p in self.problems.get(rel, []):
                print(f"      - {p}")
        for rel in sorted(set(self.problems) - {self.rel(p) for p in self.files}):
            print(f"FAIL  {rel}")
            for p in self.problems[rel]:
                print(f"      - {p}")
        total = sum(len(v) for v in self.problems.values())
        crds = sorted({f"{d.obj['apiVersion']} {d.kind}" for d in self.docs if (d.obj["apiVersion"], d.kind) in CRD_SCHEMAS})
        print(f"core resources: kubernetes-validate {KV_VERSION}, strict, Kubernetes {versions}")
        if crds:
            print("custom resources (hand-written subset schemas, not the operators' CRDs): " + ", ".join(crds))
        print(f"{len(self.files)} files, {len(self.docs)} resources, {self.checks} checks, {total} problems")
        return 1 if total else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parent),
                        help="the manifests' directory (default: the directory of this file)")
    parser.add_argument("-k", "--kubernetes-version", action="append", dest="versions",
                        help="Kubernetes version to validate against (repeatable; default 1.30 and the newest bundled)")
    args = parser.parse_args()
    versions = args.versions or ["1.30", kv.major_minor(kv.latest_version())]
    versions = list(dict.fromkeys(v[1:] if v.startswith("v") else v for v in versions))
    bundled = sorted({kv.major_minor(v) for v in kv.all_versions()}, key=lambda v: tuple(map(int, v.split("."))))
    unknown = [v for v in versions if v not in bundled]
    if unknown:
        print(f"kubernetes-validate {KV_VERSION} does not bundle Kubernetes {', '.join(unknown)} "
              f"(it has {', '.join(bundled)}; give major.minor)", file=sys.stderr)
        return 2
    root = Path(args.root)
    if not root.is_dir():
        print(f"{root}: not a directory", file=sys.stderr)
        return 2
    return Validator(root, versions).run()


if __name__ == "__main__":
    sys.exit(main())
