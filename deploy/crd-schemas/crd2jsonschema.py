#!/usr/bin/env python3
"""Turns CustomResourceDefinitions into the JSON schemas kubeconform reads.

    python3 deploy/crd-schemas/crd2jsonschema.py OUT_DIR CRD.yaml...

Writes OUT_DIR/<group>/<kind>_<version>.json (lowercase kind) for every served
version of every CRD given, from its openAPIV3Schema, made strict the way the
API server prunes: an object that lists `properties` and neither sets
`additionalProperties` nor `x-kubernetes-preserve-unknown-fields` refuses other
fields. `nullable` becomes a "null" type and `x-kubernetes-int-or-string` an
integer-or-string. The files under this directory were made by it from the
operators' own CRDs (see README.md beside it); run it again to move to a newer
operator release.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml


def strict(schema):
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else out["type"] + ["null"]
    preserve = out.pop("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    for key in [k for k in out if k.startswith("x-kubernetes-")]:
        del out[key]
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    out_dir = Path(argv[1])
    for path in argv[2:]:
        for crd in yaml.safe_load_all(Path(path).read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group = crd["spec"]["group"]
            kind = crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if not version.get("served", True):
                    continue
                schema = strict(version["schema"]["openAPIV3Schema"])
                schema["properties"]["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
                schema["properties"]["kind"] = {"type": "string", "enum": [kind]}
                schema.setdefault("required", [])
                for field in ("apiVersion", "kind", "metadata"):
                    if field not in schema["required"]:
                        schema["required"].append(field)
                # metadata is the API server's ObjectMeta: left open, as the CRD has it
                schema["properties"]["metadata"] = {"type": "object"}
                target = out_dir / group / f"{kind.lower()}_{version['name']}.json"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
                print(f"{path}: {group}/{version['name']} {kind} -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
