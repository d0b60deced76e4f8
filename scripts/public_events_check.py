"""Validates public events (the analysts' stream) against the published JSON
Schemas of schemas/json/, as any non-Rust consumer would.

  public_events_check.py FILE.ndjson...       lines of `ledger export --public`
                                              (CloudEvents structured mode)
  public_events_check.py --kafka BOOTSTRAP --topic TOPIC
                                              the public topic, read_committed,
                                              every partition to its end

Each event's envelope is checked against cloudevent.v1.schema.json and its
data against <type>.v<version>.schema.json (from `type`,
ledger.<type>.v<version>); `id`s must be unique. Prints one line per
source, then the money per user (summed wallet_changes and
pending_changes) as JSON. Exit 1 on any invalid event.
"""

import argparse
import json
import pathlib
import re
import sys

from jsonschema import Draft202012Validator

SCHEMAS = pathlib.Path(__file__).resolve().parent.parent / "schemas" / "json"
TYPE = re.compile(r"^ledger\.([a-z_]+)\.v([0-9]+)$")


def load_validators():
    validators = {}
    for path in sorted(SCHEMAS.glob("*.schema.json")):
        schema = json.loads(path.read_text())
        Draft202012Validator.check_schema(schema)
        validators[path.name] = Draft202012Validator(schema)
    return validators


def check(events, validators, where):
    problems = []
    seen = set()
    sums = {}
    envelope = validators["cloudevent.v1.schema.json"]
    for index, event in enumerate(events):
        label = f"{where}[{index}] {event.get('id')}"
        for error in envelope.iter_errors(event):
            problems.append(f"{label}: envelope: {error.message}")
        match = TYPE.match(str(event.get("type", "")))
        if not match:
            problems.append(f"{label}: type {event.get('type')!r} is not ledger.<type>.v<n>")
            continue
        name = f"{match.group(1)}.v{match.group(2)}.schema.json"
        validator = validators.get(name)
        if validator is None:
            problems.append(f"{label}: no published schema {name}")
            continue
        for error in validator.iter_errors(event.get("data")):
            problems.append(f"{label}: data: {error.message}")
        if event.get("id") in seen:
            problems.append(f"{label}: id repeated")
        seen.add(event.get("id"))
        data = event.get("data") or {}
        for field, slot in (("wallet_changes", 0), ("pending_changes", 1)):
            for change in data.get(field, []):
                sums.setdefault(change["user_id"], [0, 0])[slot] += change["amount"]
    return problems, sums


def from_files(paths):
    for path in paths:
        events = []
        with open(path) as lines:
            for line in lines:
                if line.strip():
                    events.append(json.loads(line))
        yield path, events


def from_kafka(bootstrap, topic):
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"{topic}.schema-check",
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    })
    metadata = consumer.list_topics(topic, timeout=30)
    partitions = sorted(metadata.topics[topic].partitions)
    consumer.assign([TopicPartition(topic, partition, 0) for partition in partitions])
    done = set()
    events = []
    while len(done) < len(partitions):
        message = consumer.poll(5.0)
        if message is None:
            continue
        if message.error():
            if message.error().code() == KafkaError._PARTITION_EOF:
                done.add(message.partition())
                continue
            raise SystemExit(f"{topic}: {message.error()}")
        headers = {key: value.decode() for key, value in (message.headers() or [])}
        key = message.key().decode() if message.key() else None
        if key != headers.get("ce_subject"):
            raise SystemExit(f"{topic}/{message.partition()}@{message.offset()}: key {key!r} is not ce_subject")
        events.append({
            "specversion": headers.get("ce_specversion"),
            "id": headers.get("ce_id"),
            "type": headers.get("ce_type"),
            "source": headers.get("ce_source"),
            "subject": headers.get("ce_subject"),
            "time": headers.get("ce_time"),
            "datacontenttype": headers.get("content-type"),
            "recordhash": headers.get("ce_recordhash"),
            "data": json.loads(message.value()),
        })
    consumer.close()
    yield f"{bootstrap}/{topic}", events


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*")
    parser.add_argument("--kafka")
    parser.add_argument("--topic", default="ledger.public.v1")
    args = parser.parse_args()
    if not args.files and not args.kafka:
        parser.error("give NDJSON files or --kafka")
    validators = load_validators()
    sources = from_kafka(args.kafka, args.topic) if args.kafka else from_files(args.files)
    failed = False
    for where, events in sources:
        problems, sums = check(events, validators, where)
        for problem in problems[:50]:
            print(problem)
        status = "valid" if not problems else f"{len(problems)} problems"
        print(f"{where}: {len(events)} events, {status}")
        print(json.dumps({"money_per_user": sums}, sort_keys=True))
        failed = failed or bool(problems) or not events
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
