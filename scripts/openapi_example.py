"""Print the example request body of POST /predict from an OpenAPI document read on stdin.

Used by build-push.sh and container-e2e.sh for their smoke predictions. Exit status 1 when none exists.
"""

import json
import sys


def resolve(spec: dict, schema: dict) -> dict:
    while isinstance(schema, dict) and "$ref" in schema:
        node = spec
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def main() -> int:
    spec = json.load(sys.stdin)
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    for src in (body, resolve(spec, body.get("schema", {}))):
        if "example" in src:
            print(json.dumps(src["example"]))
            return 0
        if src.get("examples"):
            ex = src["examples"]
            ex = ex[0] if isinstance(ex, list) else next(iter(ex.values())).get("value")
            print(json.dumps(ex))
            return 0
    print("no example for the /predict request body in /openapi.json", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
