"""`retail-prediction` command line: generate | train | evaluate | predict | publish | inspect | monitor | serve |
registry."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__

if TYPE_CHECKING:
    from .artifact.members import ArtifactLimits


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _week(text: str) -> int:
    if len(text) != 6 or not text.isdigit() or not 1 <= int(text[4:]) <= 53:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shop week YYYYWW")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _limit_flags() -> argparse.ArgumentParser:
    """Caps on a model archive's decompressed bytes: the server's MODEL_MAX_* settings, same defaults."""
    from .artifact.members import DEFAULT_MAX_JSON_BYTES, DEFAULT_MAX_MEMBER_BYTES, DEFAULT_MAX_TOTAL_BYTES

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--max-member-bytes", type=_positive, default=DEFAULT_MAX_MEMBER_BYTES,
                   help="largest archive member, decompressed (default: %(default)s)")
    p.add_argument("--max-total-bytes", type=_positive, default=DEFAULT_MAX_TOTAL_BYTES,
                   help="all members together, decompressed (default: %(default)s)")
    p.add_argument("--max-json-bytes", type=_positive, default=DEFAULT_MAX_JSON_BYTES,
                   help="largest JSON member (default: %(default)s)")
    return p


def _limits(args: argparse.Namespace) -> ArtifactLimits:
    from .artifact.members import ArtifactLimits

    return ArtifactLimits(args.max_member_bytes, args.max_total_bytes, args.max_json_bytes)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="retail-prediction", description=__doc__)
    limits = _limit_flags()
    p.add_argument("--version", action="version", version=__version__)
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="write synthetic weekly transaction files in the LGSR schema")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--weeks", type=int, default=20)
    g.add_argument("--customers", type=int, default=5000)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--start-week", type=_week, default=200607)
    g.add_argument("--format", choices=("csv.gz", "parquet"), default="csv.gz", dest="fmt",
                   help="one file per week: gzip CSV as the real files, or Parquet (zstd, row groups)")
    g.add_argument("--resume", action="store_true",
                   help="keep the weeks a stopped run with the same settings finished, write the rest")

    t = sub.add_parser("train", help="train, validate on the latest weeks, refit and pack model.tar.gz")
    t.add_argument("--data", nargs="+", required=True,
                   help="folder(s), glob(s) or file(s), local or s3://bucket/prefix/ (default credential chain)")
    t.add_argument("--out", help="model.tar.gz to write: a path, or s3://bucket/key.tar.gz (verified, then "
                                 "uploaded); optional with --registry")
    t.add_argument("--registry", metavar="ROOT",
                   help="also push the model to this registry root (folder or s3://bucket/prefix) under its "
                        "version, create-only; promote it with `registry promote`")
    t.add_argument("--until-week", type=_week, help="ignore lines after this shop week")
    t.add_argument("--validation-weeks", type=int, default=13)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=_positive, default=0,
                   help="threads for reading and fitting (default: the CPUs this process may use, within its "
                        "cgroup CPU limit)")
    t.add_argument("--memory-budget", type=float, default=6.0, metavar="GB",
                   help="peak memory to plan for, in GB (default 6: fits an 8 GB pod); bounds the sampled "
                        "baskets, training refuses a budget too small for the data's codes")
    t.add_argument("--spill-dir", help="folder for the compact copy of the lines while training runs "
                                       "(default: the system's temp folder)")

    e = sub.add_parser("evaluate", help="score labelled data and write metrics JSON, a PNG and a report",
                       parents=[limits])
    e.add_argument("--model", type=Path, required=True)
    e.add_argument("--data", nargs="+", required=True)
    e.add_argument("--json", type=Path, required=True, dest="json_out")
    e.add_argument("--png", type=Path, help="confusion matrix image (default: next to the JSON)")
    e.add_argument("--report", type=Path, help="Markdown report (default: next to the JSON)")
    e.add_argument("--from-week", type=_week)
    e.add_argument("--until-week", type=_week)

    pr = sub.add_parser("predict", help="score baskets of transaction files into a CSV", parents=[limits])
    pr.add_argument("--model", type=Path, required=True)
    pr.add_argument("--data", nargs="+", required=True)
    pr.add_argument("--out", type=Path, required=True)
    pr.add_argument("--explain", action="store_true",
                    help="also write each basket's explanation (as POST /predict?explain=true gives it) as JSON "
                    "lines to OUT's name with .explanations.jsonl")

    pu = sub.add_parser("publish", help="upload model.tar.gz to S3 (AWS_ENDPOINT_URL_S3 honoured)",
                        parents=[limits])
    pu.add_argument("model", type=Path)
    pu.add_argument("--bucket", required=True)
    pu.add_argument("--key", required=True)

    i = sub.add_parser("inspect", help="verify a model archive as the server loads it; print its metadata",
                       parents=[limits])
    i.add_argument("model", type=Path)

    mo = sub.add_parser("monitor", help="drift report of a payload log: PSI per hour, histograms live vs "
                        "training, class mix over time (Markdown, HTML, PNG)", parents=[limits])
    mo.add_argument("--log", required=True, help="the payload log: a directory or s3://bucket/prefix")
    mo.add_argument("--model", type=Path, required=True, help="the model to featurize with and compare against")
    mo.add_argument("--out", type=Path, required=True, help="folder for report.md, report.html, PNGs")
    mo.add_argument("--min-baskets", type=_positive, default=50,
                    help="hours with fewer baskets are marked as noisy (default: %(default)s)")

    s = sub.add_parser("serve", help="run the prediction API (settings from the environment)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--workers", type=int)

    from .registry.commands import add_parser as add_registry_parser

    add_registry_parser(sub, limits)
    return p


def _generate(args: argparse.Namespace) -> int:
    from .data.synthetic import generate

    try:
        result = generate(args.out, weeks=args.weeks, customers=args.customers, seed=args.seed,
                          start_week=args.start_week, progress=_say, fmt=args.fmt, resume=args.resume)
    except ValueError as exc:  # settings a folder cannot take (resume with other ones)
        _say(f"error: {exc}")
        return 2
    _say(f"wrote {result.lines:,} lines in {result.baskets:,} baskets to {len(result.files)} files in "
         f"{result.out_dir} ({result.seconds:.1f}s)")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .registry.delivery import Destination
    from .training.train import TrainConfig, train

    # Where the model goes is checked before hours of training, not after.
    destination = Destination.parse(args.out, args.registry)
    config = TrainConfig(until_week=args.until_week, validation_weeks=args.validation_weeks, seed=args.seed,
                         threads=args.threads, memory_budget_gb=args.memory_budget, spill_dir=args.spill_dir)
    with destination.local_path() as path:
        result = train(args.data, path, config, progress=_say)
        delivered = destination.deliver(path, progress=_say)
    v = result.validation
    print(json.dumps({"model": delivered.get("uri", str(result.path)), "sha256": result.sha256,
                      "chosen": result.chosen, "model_version": result.metadata["model_version"], **delivered,
                      "validation": {"accuracy": v["accuracy"], "macro_f1": v["macro_f1"],
                                     "unseen_accuracy": v["unseen_products"]["accuracy"]}}, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> None:
    from .training.scoring import evaluate

    report = evaluate(args.model, args.data, args.json_out, png=args.png, markdown=args.report,
                      first_week=args.from_week, last_week=args.until_week, progress=_say, limits=_limits(args))
    print(json.dumps({k: report[k] for k in ("n_baskets", "accuracy", "macro_f1", "log_loss")}, indent=2))


def _predict(args: argparse.Namespace) -> None:
    from .training.scoring import predict_files

    n, seconds = predict_files(args.model, args.data, args.out, progress=_say, limits=_limits(args),
                               explain=args.explain)
    _say(f"scored {n:,} baskets in {seconds:.2f}s ({n / max(seconds, 1e-9):,.0f} baskets/s) -> {args.out}")


def _publish(args: argparse.Namespace) -> None:
    from .artifact.store import publish
    from .serving.predictor import load_predictor

    load_predictor(args.model, limits=_limits(args))  # never publish an archive the server would refuse
    print(json.dumps(publish(args.model, args.bucket, args.key, validate=False), indent=2))  # validated above


def _inspect(args: argparse.Namespace) -> None:
    from .serving.predictor import load_predictor

    # The server's own validation (read, verify, schema-check, build, warm up): refused the same way.
    predictor = load_predictor(args.model, limits=_limits(args))
    meta = dict(predictor.metadata)
    meta.pop("example_products", None)
    print(json.dumps({"sha256": predictor.sha256, "manifest": predictor.manifest, "metadata": meta}, indent=2))


def _monitor(args: argparse.Namespace) -> None:
    try:
        import matplotlib  # noqa: F401  (the serving image has none: say what to install)
    except ImportError:
        raise FileNotFoundError("monitor draws with matplotlib, not installed here: "
                                "pip install 'retail-prediction[monitor]'") from None
    from .monitoring.report import monitor

    summary = monitor(args.log, args.model, args.out, limits=_limits(args), min_baskets=args.min_baskets,
                      progress=_say)
    overall = summary["overall"]
    print(json.dumps({"report": str(args.out / "report.html"), "baskets": overall["baskets"],
                      "hours": len(summary["hours"]), "psi": overall.get("psi"),
                      "prediction_psi": overall.get("prediction_psi"),
                      "malformed_lines": summary["read"]["malformed_lines"]}, indent=2))


def _serve(args: argparse.Namespace) -> None:
    from .serve import serve

    serve(host=args.host, port=args.port, workers=args.workers)


def _registry(args: argparse.Namespace) -> int:
    from .registry.commands import run

    return run(args, _limits(args) if hasattr(args, "max_member_bytes") else None)


COMMANDS = {"generate": _generate, "train": _train, "evaluate": _evaluate, "predict": _predict,
            "publish": _publish, "inspect": _inspect, "monitor": _monitor, "serve": _serve, "registry": _registry}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .artifact.archive import ArtifactError
    from .artifact.s3 import StoreError
    from .data.errors import DataError

    started = time.monotonic()
    try:
        status = COMMANDS[args.command](args)
    except (DataError, ArtifactError, StoreError, FileNotFoundError, PermissionError, IsADirectoryError,
            MemoryError) as exc:
        _say(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    if status:  # a command that answers with its own exit code (registry: 2 refused, 3 gate)
        return int(status)
    if args.command not in ("serve", "inspect", "publish", "registry"):
        _say(f"done in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
