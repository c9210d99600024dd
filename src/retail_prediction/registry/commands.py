"""`retail-prediction registry push|list|promote|rollback|unlock`: arguments, and what each prints.

The parser is built without importing the registry's operations (they load ONNX Runtime), so ``--help``
stays fast. Exit codes: 0 done, 2 refused or failed (the message names the root, version or file),
3 the gate refused the candidate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT_ENV = "REGISTRY_ROOT"


def _max_drop(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a drop between 0 and 1 (e.g. 0.002)")
    return value


def add_parser(sub: Any, limits: argparse.ArgumentParser) -> None:
    """Add ``registry`` and its commands to the CLI's subparsers."""
    root = argparse.ArgumentParser(add_help=False)
    root.add_argument("--root", default=os.environ.get(ROOT_ENV), required=not os.environ.get(ROOT_ENV),
                      help=f"a folder or s3://bucket/prefix (default: ${ROOT_ENV})")
    by = argparse.ArgumentParser(add_help=False)
    by.add_argument("--by", help="who does it, for the history (default: $USER)")
    r = sub.add_parser("registry", help="versioned models: push, list, promote to current/, roll back")
    rsub = r.add_subparsers(dest="registry_command", required=True)
    p = rsub.add_parser("push", parents=[root, by, limits],
                        help="verify an archive and store it once under versions/<version>/")
    p.add_argument("model", type=Path)
    ls = rsub.add_parser("list", parents=[root], help="versions, their figures, promotions, the current one")
    ls.add_argument("--json", action="store_true", dest="as_json")
    pr = rsub.add_parser("promote", parents=[root, by, limits],
                         help="gate a version (optional) and make it current/model.tar.gz")
    pr.add_argument("version")
    pr.add_argument("--gate-data", nargs="+", default=[],
                    help="labelled week files or folders the candidate was not trained on")
    pr.add_argument("--max-drop", type=_max_drop, default=0.002,
                    help="refuse if accuracy or macro-F1 falls more than this below current's (default: 0.002)")
    rsub.add_parser("rollback", parents=[root, by, limits], help="re-promote the version before the current one")
    rsub.add_parser("unlock", parents=[root],
                    help="remove the lock of a promote or rollback that died (only one runs at a time)")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _weeks(value: Any) -> str:
    return f"{value[0]}-{value[1]}" if isinstance(value, list) and len(value) == 2 else "?"


def _figure(row: dict[str, Any], name: str) -> str:
    value = (row.get("validation") or {}).get(name)
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def version_table(rows: list[dict[str, Any]]) -> str:
    """The list as a terminal table; ``*`` marks the current version."""
    header = ("", "version", "training weeks", "val acc", "val F1", "pushed at", "promoted at")
    lines = [header]
    for row in rows:
        lines.append(("*" if row.get("current") else "", str(row["version"]),
                      "(incomplete push)" if row.get("incomplete") else _weeks(row.get("training_weeks")),
                      _figure(row, "accuracy"), _figure(row, "macro_f1"),
                      str(row.get("pushed_at") or "-")[:19], str(row.get("promoted_at") or "-")[:19]))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def run(args: argparse.Namespace, limits: Any) -> int:
    """Run one registry command; returns the exit code (errors outside the registry's own propagate)."""
    from . import operations as ops
    from .root import open_root

    try:
        root = open_root(args.root)
    except ValueError as exc:
        _say(f"error: {exc}")
        return 2
    with tempfile.TemporaryDirectory(prefix="registry-") as tmp:
        workdir = Path(tmp)
        try:
            if args.registry_command == "push":
                print(json.dumps(ops.push(root, args.model, by=args.by, limits=limits), indent=2))
                _say(f"pushed {args.model} to {root.uri}")
            elif args.registry_command == "list":
                rows = ops.list_versions(root, workdir)
                print(json.dumps(rows, indent=2) if args.as_json else version_table(rows) if rows
                      else f"no versions in {root.uri}")
            elif args.registry_command == "promote":
                entry = ops.promote(root, args.version, workdir, gate_data=args.gate_data, max_drop=args.max_drop,
                                    by=args.by, limits=limits)
                _report(entry, root.uri)
            elif args.registry_command == "unlock":
                held = ops.unlock(root)
                _say(f"removed {root.describe(ops.LOCK)}, held by {json.dumps(held)}" if held
                     else f"no lock in {root.uri}")
            else:
                _report(ops.rollback(root, workdir, by=args.by, limits=limits), root.uri)
        except ops.GateRefused as exc:
            _say(exc.result.table())
            _say(f"error: {exc}; {root.describe(ops.CURRENT)} is unchanged")
            return exc.exit_code
        except ops.RegistryError as exc:
            _say(f"{'note' if exc.exit_code == 0 else 'error'}: {exc}")
            return exc.exit_code
    return 0


def _report(entry: dict[str, Any], uri: str) -> None:
    if entry.get("gate"):
        from .gate import format_gate

        _say(format_gate(entry["gate"]))
    print(json.dumps(entry, indent=2))
    _say(f"{entry['kind']}: {entry['version']} is current in {uri} (was {entry['previous'] or 'none'})")
