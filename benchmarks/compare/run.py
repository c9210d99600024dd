"""Side-by-side serving benchmark: our API vs a hand-built reference vs Seldon MLServer (issue 5).

    bash benchmarks/compare/setup.sh          # once: wrk, the MLServer and reference venvs
    python benchmarks/compare/run.py --model models/model.tar.gz   # the report goes into docs/benchmarks.md

Not part of the test suite. Each system is started by this script, one at a time, on the same port
(`--port`, MLServer's gRPC and metrics ports next to it), with the same worker count (`--workers`):

  ours       `python -m retail_prediction.serve` (POST /predict, POST /predict/batch; GET /health as the
             ceiling of our HTTP stack), default settings except the ones listed in the report;
  reference  benchmarks/reference/app.py under uvicorn: FastAPI + pydantic models, a pandas
             DataFrame per request, a scikit-learn RandomForest loaded with joblib, the same features;
  mlserver   MLServer with its LightGBM runtime serving the same trees (model.onnx converted back to a
             LightGBM model, checked against ONNX Runtime), on *precomputed* feature vectors over its V2
             REST endpoint: it does less work per request than the other two (no featurization). Three
             configurations: `mlserver` (defaults: parallel_workers = --workers), `mlserver-omp1` (the same
             with OMP_NUM_THREADS=1: LightGBM's OpenMP pool otherwise costs ~2 ms per 1-row predict on 2
             cores) and `mlserver-inproc` (OMP_NUM_THREADS=1, parallel_workers=0: inference in the HTTP
             process, no inter-process hop).

Scenarios, per system: cold start (process start -> first correct prediction, `--starts` runs); closed
loop at each `--concurrency` with `wrk` (benchmarks/compare/check.lua checks every answer against the
expected one: a wrong answer is an error); fixed request rates, open loop (requests sent on schedule,
latency from the scheduled send time, every answer checked); batches of `--batch-sizes` baskets
(baskets/s); RSS of every process at rest and its peak under load; server CPU per request.
The load generator runs on the same machine as the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata as md
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REFERENCE = HERE.parent / "reference"  # the hand-built reference app (never shipped)
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT / "benchmarks")]

from api_load import sample_baskets  # noqa: E402  (the colleague's sampler of real baskets)

DEFAULT_DATA = ROOT.parent / "shared/data/lgsr"
SYSTEMS = ("ours", "reference", "mlserver", "mlserver-omp1", "mlserver-inproc")
LABELS = {"ours": "ours /predict", "reference": "reference (FastAPI+pandas+RF)",
          "mlserver": "MLServer defaults (parallel_workers=W)",
          "mlserver-omp1": "MLServer tuned (OMP_NUM_THREADS=1, parallel_workers=W)",
          "mlserver-inproc": "MLServer tuned (OMP_NUM_THREADS=1, parallel_workers=0)",
          "ours-health": "ours /health"}
TARGETS = {"reference": 3, "mlserver": 2, "mlserver-omp1": 2, "mlserver-inproc": 2}
TOLERANCE = 1e-4  # on each probability; labels must match exactly
MLSERVER_MODEL = "basket-classifier"


def label(name: str, args: argparse.Namespace) -> str:
    return LABELS[name].replace("=W", f"={args.workers}")


def short(name: str, args: argparse.Namespace) -> str:
    return label(name, args).replace(" /predict", "")


def log(*parts: Any) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *parts, flush=True)


# --------------------------------------------------------------------------------------------------
# Inputs and expected answers


class Cases:
    """Request bodies and expected answers per system and per batch size, written as files for wrk."""

    def __init__(self, work: Path, baskets: list[dict[str, Any]], ours: list[dict[str, Any]],
                 features: np.ndarray, mlserver: np.ndarray, reference: np.ndarray, classes: list[str]):
        self.work, self.baskets, self.classes = work, baskets, classes
        self.ours, self.features, self.mlserver, self.reference = ours, features, mlserver, reference

    def expected(self, system: str, idx: list[int]) -> tuple[list[str], list[float]]:
        if system == "ours":
            return ([self.ours[i]["label"] for i in idx],
                    [self.ours[i]["probabilities"][c] for i in idx for c in self.classes])
        proba = self.mlserver if system.startswith("mlserver") else self.reference
        return ([self.classes[int(np.argmax(proba[i]))] for i in idx], [float(p) for i in idx for p in proba[i]])

    def body(self, system: str, idx: list[int], rid: str, batch: bool) -> str:
        if system.startswith("mlserver"):
            data = [float(v) for i in idx for v in self.features[i]]
            return json.dumps({"id": rid, "inputs": [{"name": "features", "shape": [len(idx), self.features.shape[1]],
                                                      "datatype": "FP32", "data": data}]})
        if batch:
            return json.dumps({"baskets": [self.baskets[i] for i in idx]})
        return json.dumps(self.baskets[idx[0]])

    def files(self, system: str, size: int | None) -> tuple[Path, Path]:
        """(bodies, expected) for single requests (size None) or batches of `size` baskets."""
        name = f"{system}-{'single' if size is None else f'batch{size}'}"
        bodies, expected = self.work / f"{name}.bodies", self.work / f"{name}.expected"
        if bodies.exists() and expected.exists():
            return bodies, expected
        n = len(self.baskets)
        if size is None:
            groups = [[i] for i in range(n)]
        else:
            count = max(2, min(200, n // size))
            rng = np.random.default_rng(size)
            groups = [sorted(rng.choice(n, size, replace=False).tolist()) for _ in range(count)]
        prefix = "b" if size is None else f"B{size}x"
        with bodies.open("w") as fb, expected.open("w") as fe:
            for g, idx in enumerate(groups):
                rid = f"{prefix}{g}"
                labels, probs = self.expected(system, idx)
                fb.write(f"{rid}\t{self.body(system, idx, rid, size is not None)}\n")
                fe.write(f"{rid}\t{','.join(labels)}\t{','.join(repr(p) for p in probs)}\n")
        return bodies, expected


def prepare(args: argparse.Namespace, work: Path) -> tuple[Cases, dict[str, Any]]:
    from onnx_to_lightgbm import convert

    from retail_prediction.api.decoding import decode_predict
    from retail_prediction.api.schemas import Limits, request_types
    from retail_prediction.features.client import encode_clients
    from retail_prediction.features.tables import encoded_features
    from retail_prediction.serving.predictor import Predictor
    from retail_prediction.serving.service import answers

    info: dict[str, Any] = {}
    model_dir = work / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(args.model) as tar:
        tar.extractall(model_dir, filter="data")
    predictor = Predictor.load(args.model)
    classes = list(predictor.classes)
    log(f"model {predictor.version}; sampling {args.baskets} real baskets from the last data file")
    baskets = sample_baskets(args.data, args.baskets)
    types = request_types(Limits())
    ours, features = [], []
    for b in baskets:
        request = decode_predict(json.dumps(b).encode(), types)
        # what /predict answers, computed in process
        ours.append(answers(predictor, predictor.score([request.basket_items]))[0])
        lines = encode_clients([request.basket_items], predictor.tables)
        features.append(encoded_features(lines.enc, lines.spend, lines.quantity, lines.basket, 1,
                                         predictor.tables)[0])
    X = np.stack(features).astype(np.float32)
    onnx_proba = predictor.predict_features(X)
    our_proba = np.array([[a["probabilities"][c] for c in classes] for a in ours])
    info["features_vs_api_max_abs_diff"] = float(np.abs(onnx_proba - our_proba).max())
    info["n_features"] = int(X.shape[1])
    sizes = [len(b["basket_items"]) for b in baskets]
    info["baskets"] = {"n": len(baskets), "lines_mean": statistics.mean(sizes),
                       "lines_p95": float(np.percentile(sizes, 95)), "lines_max": max(sizes),
                       "source": "random baskets of the last data file (after the model's training weeks)"}

    # MLServer: the same trees as a native LightGBM model.
    bst = work / "mlserver-model" / "model.bst"
    bst.parent.mkdir(exist_ok=True)
    info["lightgbm_vs_onnx_max_abs_diff"] = convert(model_dir / "model.onnx", bst, X)
    log(f"model.onnx -> model.bst: max |p_lightgbm - p_onnx| = {info['lightgbm_vs_onnx_max_abs_diff']:.2e}")
    if info["lightgbm_vs_onnx_max_abs_diff"] > TOLERANCE:
        raise SystemExit("the converted LightGBM model does not match the ONNX model")

    # Reference: a RandomForest trained on real baskets of the model's training period.
    rf = work / "rf.joblib"
    if not rf.exists():
        train_npz = work / "rf-train.npz"
        Xt, yt = training_features(args.data, predictor, args.rf_weeks)
        np.savez(train_npz, X=Xt, y=yt, feature_names=np.array(predictor.feature_names))
        log(f"training the reference RandomForest on {len(yt)} baskets")
        run([args.reference_python, str(REFERENCE / "train.py"), str(train_npz), str(rf)])
    sample_npz, answers = work / "sample-features.npz", work / "rf-answers.json"
    np.savez(sample_npz, X=X, feature_names=np.array(predictor.feature_names))
    run([args.reference_python, str(REFERENCE / "offline.py"), str(rf), str(sample_npz), str(answers)])
    forest = json.loads(answers.read_text())
    ref_proba = np.array(forest["proba"])
    info["rf"] = {"trees": forest["trees"], "nodes": forest["nodes"], "file_mb": rf.stat().st_size / 1e6,
                  "train_weeks": args.rf_weeks}
    return Cases(work, baskets, ours, X, onnx_proba, ref_proba, classes), info


def training_features(data: Path, predictor: Any, weeks: str) -> tuple[np.ndarray, np.ndarray]:
    from retail_prediction.data.baskets import table_to_baskets
    from retail_prediction.data.reading import read_transactions, resolve_files

    first, last = (int(w) for w in weeks.split("-"))
    files = [f for f in resolve_files(data) if first <= int(re.findall(r"(\d{6})", Path(f).name)[-1]) <= last]
    baskets = table_to_baskets(read_transactions(files))
    X = predictor.features(baskets.lines)
    y = np.searchsorted(np.asarray(predictor.classes), baskets.label)
    return X, y


def run(cmd: list[str], **kwargs: Any) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs).stdout


# --------------------------------------------------------------------------------------------------
# Processes


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            tree.setdefault(ppid, []).append(int(d.name))
    return tree


def process_tree(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def rss_mb(pid: int) -> dict[str, float]:
    """RSS of every process of the system (the server and its workers), by command."""
    out = {}
    for p in process_tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:60].strip()
        except OSError:
            continue
        m = re.search(r"VmRSS:\s+(\d+)", status)
        if m:
            out[f"{p} {cmd}"] = int(m.group(1)) / 1024
    return out


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class RssSampler:
    """Peak total RSS of the system's processes, sampled every 0.25 s while load runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_total, self.peak = pid, 0.0, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            rss = rss_mb(self.pid)
            if sum(rss.values()) > self.peak_total:
                self.peak_total, self.peak = sum(rss.values()), rss

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        return {"total": self.peak_total, "processes": self.peak}


class System:
    """One running system: started, probed until it answers a prediction correctly, stopped."""

    def __init__(self, name: str, args: argparse.Namespace, work: Path, cases: Cases):
        self.name, self.args, self.work, self.cases = name, args, work, cases
        self.port = args.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.v2 = name.startswith("mlserver")
        self.path = f"/v2/models/{MLSERVER_MODEL}/infer" if self.v2 else "/predict"
        self.batch_path = self.path if self.v2 else "/predict/batch"
        bodies, expected = cases.files(name, None)
        self.first_body = bodies.read_text().split("\n", 1)[0].split("\t", 1)
        self.first_expected = expected.read_text().split("\n", 1)[0].split("\t")

    def command(self) -> tuple[list[str], dict[str, str], Path | None]:
        cmd, extra, cwd = self._command()
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "AWS_", "PORT", "WORKERS", "OMP_"))}
        return cmd, {**base, **extra}, cwd

    def shown(self) -> str:
        """The command as run, with the environment variables the script set."""
        cmd, env, cwd = self._command()
        extra = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        settings = ""
        if self.v2:
            settings = f" (settings.json: {json.dumps(json.loads((cwd / 'settings.json').read_text()))})"
        return f"{'cd ' + str(cwd) + ' && ' if cwd and not self.v2 else ''}{extra} {shlex.join(cmd)}{settings}".strip()

    def _command(self) -> tuple[list[str], dict[str, str], Path | None]:
        """(command, the environment variables it is given on top of ours, working directory)."""
        env: dict[str, str] = {}
        workers = str(self.args.workers)
        if self.name == "ours":
            env.update({"MODEL_URI": str(self.args.model), "MODEL_POLL_SECONDS": "0", "HOST": "127.0.0.1",
                        "PORT": str(self.port), "WORKERS": workers, "MODEL_DIR": str(self.work / "ours-models"),
                        "MAX_BODY_BYTES": str(4 << 20)})
            return [sys.executable, "-m", "retail_prediction.serve"], env, None
        if self.name == "reference":
            env.update({"MODEL_DIR": str(self.work / "model"), "RF_PATH": str(self.work / "rf.joblib"),
                        "PYTHONPATH": str(ROOT / "src")})
            return ([self.args.reference_python, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port",
                     str(self.port), "--workers", workers], env, REFERENCE)
        root = self.work / "mlserver"
        (root / MLSERVER_MODEL).mkdir(parents=True, exist_ok=True)
        settings = json.loads((HERE / "mlserver/settings.json").read_text())
        settings.update({"http_port": self.port, "grpc_port": self.port + 1, "metrics_port": self.port + 2,
                         "parallel_workers": 0 if self.name == "mlserver-inproc" else self.args.workers})
        (root / "settings.json").write_text(json.dumps(settings, indent=2))
        (root / MLSERVER_MODEL / "model-settings.json").write_text((HERE / "mlserver/model-settings.json").read_text())
        (root / MLSERVER_MODEL / "model.bst").write_bytes((self.work / "mlserver-model/model.bst").read_bytes())
        if self.name != "mlserver":  # LightGBM's OpenMP pool costs ~2 ms per 1-row predict on 2 cores
            env["OMP_NUM_THREADS"] = "1"
        mlserver = str(Path(self.args.mlserver_python).with_name("mlserver"))
        return [mlserver, "start", str(root)], env, root

    def start(self, timeout: float = 120) -> float:
        """Start; seconds from process start to the first correct prediction."""
        cmd, env, cwd = self.command()
        self.log = (self.work / f"{self.name}.log").open("ab")
        started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        rid, body = self.first_body
        while time.perf_counter() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: see {self.log.name}")
            try:
                req = urllib.request.Request(self.url + self.path, data=body.encode(), method="POST",
                                             headers={"Content-Type": "application/json", "X-Request-ID": rid})
                with urllib.request.urlopen(req, timeout=2) as resp:
                    answer = resp.read()
                    if resp.status == 200:
                        elapsed = time.perf_counter() - started
                        self._check_first(answer)
                        return elapsed
            except (OSError, urllib.error.HTTPError):
                pass
            time.sleep(0.01)
        self.stop()
        raise TimeoutError(f"{self.name} gave no prediction within {timeout} s")

    def _check_first(self, answer: bytes) -> None:
        probs = _probabilities(self.name, json.loads(answer), self.cases.classes)
        want = [float(p) for p in self.first_expected[2].split(",")]
        if len(probs) != len(want) or max(abs(a - b) for a, b in zip(probs, want, strict=True)) > TOLERANCE:
            raise RuntimeError(f"{self.name}: first answer {probs} differs from the expected {want}")

    def stop(self) -> None:
        t0 = time.perf_counter()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(8)
            except subprocess.TimeoutExpired:
                log(f"{self.name}: still running 8 s after SIGTERM, killed")
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        log(f"{self.name}: stopped in {time.perf_counter() - t0:.1f} s")
        # MLServer's workers and uvicorn's children leave with their parent; make sure of it.
        for p in process_tree(self.proc.pid)[1:]:
            with contextlib.suppress(OSError):
                os.kill(p, 9)
        self.log.close()


def _probabilities(system: str, answer: dict[str, Any], classes: list[str]) -> list[float]:
    if system.startswith("mlserver"):
        return [float(v) for v in answer["outputs"][0]["data"]]
    rows = answer.get("predictions", [answer])
    return [float(r["probabilities"][c]) for r in rows for c in classes]


# --------------------------------------------------------------------------------------------------
# Load


def wrk(system: System, path: str, bodies: Path, expected: Path, connections: int, seconds: float,
        mode: str) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(HERE / "check.lua"),
           system.url + path, "--", str(bodies), str(expected), mode, repr(TOLERANCE), ",".join(system.cases.classes)]
    cpu0 = cpu_seconds(system.proc.pid)
    out = run(cmd)
    cpu = cpu_seconds(system.proc.pid) - cpu0
    result = json.loads(out.split("RESULT ", 1)[1])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["errors"] = result["socket_errors"] + result["bad_status"] + result["wrong"]
    result["server_cpu_us"] = cpu / max(result["requests"], 1) * 1e6
    result["cmd"] = shlex.join(cmd)
    return result


def closed_loop(system: System, levels: list[int], seconds: float, label: str = "") -> list[dict[str, Any]]:
    bodies, expected = system.cases.files(system.name, None)
    mode = "v2" if system.v2 else "api"
    path, what = system.path, label or system.name
    if label == "ours-health":
        path, mode = "/health", "get"
    rows = []
    for c in levels:
        r = wrk(system, path, bodies, expected, c, seconds, mode)
        r["connections"] = c
        rows.append(r)
        log(f"{what:12s} c={c:4d} {r['rps']:8.0f} req/s  p50 {r['p50_us'] / 1000:7.2f}  p95 "
            f"{r['p95_us'] / 1000:7.2f}  p99 {r['p99_us'] / 1000:7.2f} ms  errors {r['errors']} "
            f"(wrong {r['wrong']}, checked {r['checked']})  cpu/req {r['server_cpu_us']:.0f} us"
            + (f"  first wrong: {r['first_wrong']}" if r["first_wrong"] else ""))
    return rows


def batches(system: System, sizes: list[int], seconds: float, connections: int) -> list[dict[str, Any]]:
    rows = []
    mode = "v2" if system.v2 else "api"
    for size in sizes:
        bodies, expected = system.cases.files(system.name, size)
        r = wrk(system, system.batch_path, bodies, expected, connections, seconds, mode)
        r.update({"batch_size": size, "connections": connections, "baskets_per_s": r["rps"] * size})
        rows.append(r)
        log(f"{system.name:12s} batch {size:5d} x c={connections}: {r['baskets_per_s']:8.0f} baskets/s  p50 "
            f"{r['p50_us'] / 1000:8.2f}  p99 {r['p99_us'] / 1000:8.2f} ms  errors {r['errors']}")
    return rows


async def _open_loop_conn(system: System, queue: asyncio.Queue, deadline: float, out: dict[str, Any],
                          expected: dict[str, list[float]]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", system.port)
    loop = asyncio.get_running_loop()
    try:
        while True:
            scheduled, rid, request = await queue.get()
            if not request:
                return
            if loop.time() > deadline:
                out["unsent"] += 1
                continue
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(request)
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), max(deadline - loop.time(), 0.01))
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
                body = await reader.readexactly(length)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                out["timeouts"] += 1
                return
            out["latencies"].append(loop.time() - scheduled)
            out["last"] = loop.time()
            if not head.startswith(b"HTTP/1.1 200"):
                out["bad_status"] += 1
                continue
            try:
                probs = _probabilities(system.name, json.loads(body), system.cases.classes)
                ok = len(probs) == len(expected[rid]) and all(
                    abs(a - b) <= TOLERANCE for a, b in zip(probs, expected[rid], strict=True))
            except (KeyError, ValueError, TypeError):
                ok = False
            out["wrong"] += not ok
    finally:
        writer.close()


async def _open_loop(system: System, rate: float, seconds: float, connections: int) -> dict[str, Any]:
    bodies, expected_file = system.cases.files(system.name, None)
    reqs = []
    for line in bodies.read_text().splitlines():
        rid, body = line.split("\t", 1)
        raw = body.encode()
        reqs.append((rid, (f"POST {system.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                           f"X-Request-ID: {rid}\r\nContent-Length: {len(raw)}\r\n\r\n").encode() + raw))
    expected = {}
    for line in expected_file.read_text().splitlines():
        rid, _, probs = line.split("\t")
        expected[rid] = [float(p) for p in probs.split(",")]
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.3
    n = int(rate * seconds)
    queue: asyncio.Queue = asyncio.Queue()
    offset = np.random.default_rng(int(rate)).integers(len(reqs))
    for k in range(n):
        rid, req = reqs[(offset + k) % len(reqs)]
        queue.put_nowait((start + k / rate, rid, req))
    for _ in range(connections):
        queue.put_nowait((0.0, "", b""))
    out: dict[str, Any] = {"latencies": [], "bad_status": 0, "wrong": 0, "unsent": 0, "timeouts": 0, "last": start}
    deadline = start + seconds + 5.0
    await asyncio.gather(*(_open_loop_conn(system, queue, deadline, out, expected) for _ in range(connections)))
    done = len(out["latencies"])
    ms = np.array(out.pop("latencies") or [np.nan]) * 1000
    span = max(out.pop("last") - start, seconds)  # a server that falls behind answers over a longer span
    result = {"target_rps": rate, "scheduled": n, "completed": done, "achieved_rps": done / span, **out,
              "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
              "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(np.max(ms))}
    result["errors"] = result["bad_status"] + result["wrong"] + result["unsent"] + result["timeouts"]
    result["kept_up"] = kept_up(result)
    return result


def kept_up(r: dict[str, Any]) -> bool:
    """Everything answered correctly, at ≥ 95 % of the target rate, with p99 under a second."""
    return r["errors"] == 0 and r["p99_ms"] < 1000 and r["achieved_rps"] >= 0.95 * r["target_rps"]


def fixed_rates(system: System, rates: list[float], seconds: float, connections: int) -> list[dict[str, Any]]:
    rows = []
    for rate in rates:
        cpu0 = cpu_seconds(system.proc.pid)
        r = asyncio.run(_open_loop(system, rate, seconds, connections))
        r["server_cpu_us"] = (cpu_seconds(system.proc.pid) - cpu0) / max(r["completed"], 1) * 1e6
        rows.append(r)
        log(f"{system.name:12s} rate {rate:6.0f}/s: {r['achieved_rps']:7.0f} done/s  p50 {r['p50_ms']:8.2f}  p95 "
            f"{r['p95_ms']:8.2f}  p99 {r['p99_ms']:8.2f} ms  errors {r['errors']} (wrong {r['wrong']}, unsent "
            f"{r['unsent']}, timeouts {r['timeouts']})")
        if not kept_up(r):
            log(f"{system.name}: did not keep up at {rate:.0f}/s; higher rates skipped")
            break
    return rows


def profile(system: System, args: argparse.Namespace, work: Path, connections: int) -> dict[str, Any]:
    """py-spy on the server process while wrk drives /predict: the functions with the most own time."""
    pyspy = str(Path(args.reference_python).with_name("py-spy"))
    raw = work / f"profile-{system.name}-c{connections}.txt"
    pid = system.proc.pid
    spy = subprocess.Popen([pyspy, "record", "--pid", str(pid), "--duration", str(int(args.profile_seconds)),
                            "--rate", "250", "--format", "raw", "--output", str(raw), "--nonblocking"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    bodies, expected = system.cases.files(system.name, None)
    load = wrk(system, system.path, bodies, expected, connections, args.profile_seconds - 1, "api")
    spy.wait(60)
    own: dict[str, int] = {}
    parts: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        n = int(count)
        total += n
        own[_frame(frames[-1])] = own.get(_frame(frames[-1]), 0) + n
        part = _part(frames)
        parts[part] = parts.get(part, 0) + n
    return {"samples": total, "connections": connections, "rps": load["rps"], "cpu_us": load["server_cpu_us"],
            "errors": load["errors"], "own": [(k, v / total) for k, v in sorted(own.items(), key=lambda kv: -kv[1])],
            "parts": [(k, v / total) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])], "raw": str(raw)}


# Where a sample's time goes: the first rule matching a frame, from the innermost frame outwards.
PARTS = [
    ("ONNX Runtime (`Session.run`)", r"Session\.run"),
    ("featurization (`client_features`: code lookups, features, unknown counts)",
     r"retail_prediction/(features|predictor)\.py"),
    ("request body read + validation (msgspec)", r"retail_prediction/api/(body|decoding)\.py"),
    ("answer building (`score`, `answers`, orjson)", r"retail_prediction/api/(prediction|app)\.py|orjson"),
    ("micro-batcher", r"retail_prediction/api/batcher\.py"),
    ("access log (JSON logging)", r"/logging/__init__\.py|retail_prediction/api/logging\.py"),
    ("metrics (prometheus_client)", r"prometheus_client|retail_prediction/api/metrics\.py"),
    ("request-context middleware (request id, timing; its own code)", r"retail_prediction/api/middleware\.py"),
    ("HTTP server and framework (uvicorn, httptools, Starlette, FastAPI, asyncio)",
     r"\((uvicorn|httptools|starlette|fastapi|asyncio)/|httptools_impl|uvloop"),
]


def _part(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, pattern in PARTS:
            if re.search(pattern, frame):
                return name
    return "other (interpreter, libraries outside the parts above)"


def _frame(frame: str) -> str:
    # py-spy raw frames: "function (path/to/file.py:line)"; keep the function and the file's tail.
    m = re.match(r"(.*) \((.*?):\d+\)$", frame.strip())
    if not m:
        return frame.strip()
    func, path = m.groups()
    tail = "/".join(Path(path).parts[-2:])
    return f"{func} ({tail})"


# --------------------------------------------------------------------------------------------------
# One system, all scenarios


def bench_system(name: str, args: argparse.Namespace, work: Path, cases: Cases) -> dict[str, Any]:
    system = System(name, args, work, cases)
    res: dict[str, Any] = {"load_average_before": os.getloadavg()}
    starts = []
    for _ in range(args.starts - 1):
        starts.append(system.start())
        system.stop()
    starts.append(system.start())
    res["cold_start_s"] = {"runs": starts, "median": statistics.median(starts)}
    log(f"{name}: start -> first correct prediction {', '.join(f'{s:.2f}' for s in starts)} s")
    res["command"] = system.shown()
    try:
        time.sleep(1.0)
        res["rss_at_rest_mb"] = rss_mb(system.proc.pid)
        cpu0 = cpu_seconds(system.proc.pid)
        time.sleep(3.0)
        res["idle_cpu_pct"] = (cpu_seconds(system.proc.pid) - cpu0) / 3.0 * 100
        sampler = RssSampler(system.proc.pid)
        bodies, expected = cases.files(name, None)
        wrk(system, system.path, bodies, expected, 8, args.warmup, "v2" if system.v2 else "api")
        res["closed"] = closed_loop(system, args.levels, args.seconds)
        if name == "ours":
            res["health"] = closed_loop(system, args.levels, args.seconds, "ours-health")
        res["rates"] = fixed_rates(system, args.rate_list, args.rate_seconds, args.rate_connections)
        res["batch"] = batches(system, args.batch_list, args.batch_seconds, args.batch_connections)
        res["rss_under_load_mb"] = sampler.stop()
        if args.profile and name in args.profile.split(","):
            res["profile"] = [profile(system, args, work, int(c)) for c in args.profile_connections.split(",")]
    finally:
        system.stop()
    res["load_average_after"] = os.getloadavg()
    return res


# --------------------------------------------------------------------------------------------------
# Report


def versions(args: argparse.Namespace) -> dict[str, str]:
    def venv(python: str, names: list[str]) -> str:
        code = ("import importlib.metadata as m, sys; print(sys.version.split()[0], "
                f"*[n + '==' + m.version(n) for n in {names!r}])")
        try:
            return run([python, "-c", code]).strip()
        except (OSError, subprocess.CalledProcessError) as exc:
            return f"unavailable ({exc})"

    ours = ["retail-prediction", "fastapi", "starlette", "uvicorn", "msgspec", "onnxruntime", "numpy", "orjson"]
    return {
        "ours (main venv)": f"{platform.python_version()} " + " ".join(f"{n}=={md.version(n)}" for n in ours),
        "reference venv": venv(args.reference_python, ["fastapi", "starlette", "uvicorn", "pydantic", "pandas",
                                                       "scikit-learn", "joblib", "numpy"]),
        "mlserver venv": venv(args.mlserver_python, ["mlserver", "mlserver-lightgbm", "lightgbm", "fastapi",
                                                     "uvicorn", "numpy"]),
        "wrk": (subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines() or ["?"])[0],
        "kernel": platform.release(),
    }


def machine() -> str:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) / 1024 / 1024
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Linux {platform.release()}"


def runtime_closure_mb() -> tuple[float, list[str]]:
    """Installed size of our serving dependencies (what the image adds to its base), from package metadata."""
    seen: dict[str, float] = {}
    todo = ["retail-prediction"]
    while todo:
        name = re.split(r"[\s<>=!~;\[(]", todo.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        size = 0
        for f in dist.files or []:
            with contextlib.suppress(OSError):
                size += (Path(dist.locate_file(f))).stat().st_size
        seen[name] = size / 1e6
        todo += [r for r in (dist.requires or []) if "extra ==" not in r]
    return sum(seen.values()), sorted(seen, key=lambda k: -seen[k])[:8]


def image_size(image: str | None) -> str:
    if not image:
        return "not measured (no `--image` given)"
    r = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", image], capture_output=True, text=True)
    if r.returncode:
        return f"not measured: `docker image inspect {image}` failed: {r.stderr.strip()}"
    return f"{int(r.stdout.strip()) / 1e6:.0f} MB (`{image}`)"


def plot(results: dict[str, Any], args: argparse.Namespace, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6.5), dpi=110)
    colours = {"ours": "tab:blue", "reference": "tab:red", "mlserver": "tab:green", "mlserver-omp1": "tab:olive",
               "mlserver-inproc": "tab:purple", "ours-health": "tab:gray"}
    series = [(n, "closed") for n in SYSTEMS] + [("ours-health", "health")]
    for name, key in series:
        res = results["systems"].get(name.removesuffix("-health"))
        if not res or key not in res:
            continue
        closed, colour = res[key], colours[name]
        style = ":" if name == "ours-health" else "-"
        ax.plot([r["rps"] for r in closed], [r["p99_us"] / 1000 for r in closed], "o" + style, color=colour,
                label=f"{label(name, args)}: closed loop")
        for r in closed:
            ax.annotate(f"c={r['connections']}", (r["rps"], r["p99_us"] / 1000), fontsize=7,
                        xytext=(3, 3), textcoords="offset points", color=colour)
        rates = [r for r in res.get("rates", []) if kept_up(r)] if key == "closed" else []
        if rates:
            ax.plot([r["achieved_rps"] for r in rates], [r["p99_ms"] for r in rates], "s--", color=colour,
                    alpha=0.6, label=f"{label(name, args)}: fixed rates kept up with")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("throughput (requests/s, log scale)")
    ax.set_ylabel("p99 latency (ms, log scale)")
    ax.set_title(f"p99 latency vs throughput, 1 basket per request, {args.workers} worker(s)\n"
                 f"{results['date']}, {os.cpu_count()} cores shared with the load generator; lower right is better",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, bbox_inches="tight")
    plt.close(fig)


def _f(x: float | None, digits: int = 0) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


BEGIN = ("<!-- BEGIN serving benchmark report: written by benchmarks/compare/run.py, do not edit by hand "
         "(the reading of the run is benchmarks/compare/NOTES.md) -->")
END = "<!-- END serving benchmark report -->"


def write_report(out: Path, text: str) -> None:
    """The report as its own file, or between the markers of a document that has them (docs/benchmarks.md),
    its title dropped and its headings one level down so that it nests under the document's section."""
    current = out.read_text() if out.exists() else ""
    if BEGIN not in current or END not in current:
        out.write_text(text)
        return
    head, rest = current.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    out.write_text(f"{head}{BEGIN}\n{_nested(text)}\n{END}{tail}")


def _nested(text: str) -> str:
    lines, fenced = [], False
    for line in text.splitlines()[1:]:  # without the title
        fenced ^= line.startswith("```")
        lines.append("#" + line if line.startswith("#") and not fenced else line)
    return "\n".join(lines).strip("\n")


def report(results: dict[str, Any], args: argparse.Namespace, png: Path, out: Path) -> str:
    S = results["systems"]
    L: list[str] = []
    w = L.append
    partial = [n for n in SYSTEMS if n not in S or "error" in S.get(n, {})]
    w("# Serving benchmarks: our API, a hand-built reference and Seldon MLServer")
    w("")
    w(f"Generated by `benchmarks/compare/run.py` on {results['date']} "
      f"({'smoke run: short durations, not for quoting' if args.smoke else 'full run'})."
      + (f" **Partial: {', '.join(partial)} missing or failed (see below).**" if partial else ""))
    w("")
    w(f"**Machine:** {results['machine']}. The load generator (`wrk`, and a Python asyncio client for the "
      "fixed-rate scenario) runs on the same 2 cores as the server, and the machine is shared with other work: "
      f"load average before / after the run {results['load_before'][0]:.1f} / {results['load_after'][0]:.1f}. "
      "Absolute requests/s are therefore conservative and noisy; the *server CPU per request* column "
      "(user + system time of all the system's processes divided by the requests served) depends much less "
      "on neighbours and is the better basis for capacity planning.")
    w("")
    w("## What is compared")
    w("")
    b = results["info"]["baskets"]
    w(f"- **Requests:** {b['n']} real baskets ({b['source']}; {b['lines_mean']:.1f} lines on average, p95 "
      f"{b['lines_p95']:.0f}, max {b['lines_max']}), list form with the four hierarchy codes, cycled. Each "
      f"system answers every request; **every answer is checked** against the expected one computed in "
      f"process (labels equal, every probability within {TOLERANCE:g}); a wrong answer, a non-200 status, a "
      "socket error or a timeout all count as errors.")
    w(f"- **ours**: `python -m retail_prediction.serve`, `WORKERS={args.workers}`, default settings (JSON access "
      "log at `info`, micro-batching `PREDICT_EXECUTION=batched`, cache off) except `MODEL_POLL_SECONDS=0` and "
      "`MAX_BODY_BYTES=4194304` (batches of 1000 baskets are ~1.1 MB). Full work per request: validation, "
      "featurization, ONNX Runtime.")
    rf = results["info"]["rf"]
    w(f"- **reference** (`benchmarks/reference/`, never shipped): FastAPI + pydantic models, a sync "
      f"endpoint, a pandas DataFrame built per request, a scikit-learn RandomForest ({rf['trees']} trees, "
      f"{rf['nodes']:,} nodes, {rf['file_mb']:.0f} MB joblib file, scikit-learn defaults, trained on the "
      f"baskets of weeks {rf['train_weeks']}) loaded with joblib, under `uvicorn --workers {args.workers}` "
      "with its defaults (access log on). It computes *the same features* by calling our "
      "`basket_features` (compiled loops) on the DataFrame's columns, so its featurization is as fast as ours "
      "per call: a hand-written pandas featurization would make it slower. It is a different model (a forest, not the "
      "LightGBM trees), as such hand-built services usually are; its answers are checked against the same "
      "forest run in process.")
    w("- **MLServer** with its LightGBM runtime (`mlserver-lightgbm`), `debug=false`, otherwise default settings "
      "(`benchmarks/compare/mlserver/`), in three configurations: *defaults* (`parallel_workers="
      f"{args.workers}`: one inference worker process behind MLServer's HTTP front-end process); *tuned, "
      f"parallel_workers={args.workers}* (the same with `OMP_NUM_THREADS=1`); *tuned, parallel_workers=0* "
      "(`OMP_NUM_THREADS=1`, inference inside the single HTTP process, like our one worker). It serves *the "
      "same trees*: our artifact ships only `model.onnx`, so `benchmarks/compare/onnx_to_lightgbm.py` writes "
      "the ONNX tree ensemble back as a LightGBM text model (max |p_LightGBM − p_ONNX| on the benchmark "
      f"baskets: {results['info']['lightgbm_vs_onnx_max_abs_diff']:.1e}). **MLServer receives precomputed "
      f"feature vectors** ({results['info'].get('n_features', '?')} floats, V2 / Open Inference Protocol REST "
      "`POST /v2/models/basket-classifier/infer`): "
      "it does no featurization and no basket validation, i.e. *less work per request than the other two*. "
      "Its answers are checked against ONNX Runtime on the same features.")
    w(f"- Same port for all ({args.port}; MLServer's gRPC and metrics servers on the next two ports), one system "
      "at a time, each started by the script.")
    w("")

    # -- closed loop
    w("## Closed loop: fixed concurrency, 1 basket per request")
    w("")
    w(f"`wrk -t1 -c<C> -d{args.seconds:g}s` with `benchmarks/compare/check.lua`, after a {args.warmup:g} s warm-up. "
      "Latencies as measured by wrk (closed loop: a client waits for its answer before sending the next).")
    w("")
    w("| system | connections | requests/s | p50 ms | p95 ms | p99 ms | errors (of which wrong answers) | "
      "checked answers | server CPU per request µs |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, key in [("ours", "closed"), ("ours-health", "health")] + [(n, "closed") for n in SYSTEMS[1:]]:
        res = S.get(name.removesuffix("-health"), {})
        for r in res.get(key, []):
            w(f"| {label(name, args)} | {r['connections']} | {_f(r['rps'])} | {r['p50_us'] / 1000:.2f} | "
              f"{r['p95_us'] / 1000:.2f} | {r['p99_us'] / 1000:.2f} | {r['errors']} ({r['wrong']}) | "
              f"{r['checked'] if key == 'closed' else '–'} | {_f(r['server_cpu_us'])} |")
    w("")
    # -- targets
    w("### Against the targets (issue 5: at equal concurrency and equal or lower p99, ours ≥ 3× the reference's "
      "and ≥ 2× MLServer's throughput)")
    w("")
    w("| connections | competitor | ours req/s | theirs req/s | throughput ratio | target | p99 ms ours / theirs "
      "| verdict | server CPU per request, theirs / ours |")
    w("| ---: | --- | ---: | ---: | ---: | ---: | --- | --- | ---: |")
    ours = {r["connections"]: r for r in S.get("ours", {}).get("closed", [])}
    for c, o in ours.items():
        for other, target in TARGETS.items():
            t = {r["connections"]: r for r in S.get(other, {}).get("closed", [])}.get(c)
            if not t:
                continue
            ratio = o["rps"] / t["rps"]
            met = ratio >= target and o["p99_us"] <= t["p99_us"] and o["errors"] == 0
            w(f"| {c} | {label(other, args)} | {_f(o['rps'])} | {_f(t['rps'])} | {ratio:.2f}× | ≥ {target}× | "
              f"{o['p99_us'] / 1000:.1f} / {t['p99_us'] / 1000:.1f} | {'**met**' if met else '**not met**'} | "
              f"{t['server_cpu_us'] / o['server_cpu_us']:.1f}× |")
    w("")
    # -- rates
    w("## Fixed request rates (open loop), 1 basket per request")
    w("")
    w(f"A Python asyncio client ({args.rate_connections} keep-alive connections) sends each request at its "
      f"scheduled time for {args.rate_seconds:g} s per rate; latency runs from the *scheduled* send time, so a "
      "server that falls behind shows its queueing (no coordinated omission: Debian's `wrk` and `hey` are "
      "closed-loop tools and would hide it). Every answer is checked. A system's higher rates are skipped once "
      "it fails to keep up (any error, p99 ≥ 1 s, or under 95 % of the target rate answered); requests "
      "still unsent or unanswered 5 s after the "
      "schedule ends count as errors. At low rates the server CPU per request includes the system's cost at rest "
      "(see the last column of the cold-start table).")
    w("")
    w("| system | target req/s | answered req/s | p50 ms | p95 ms | p99 ms | max ms | errors (wrong, unsent, "
      "timed out) | kept up | server CPU per request µs |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |")
    for name in SYSTEMS:
        for r in S.get(name, {}).get("rates", []):
            w(f"| {label(name, args)} | {r['target_rps']:g} | {_f(r['achieved_rps'])} | {r['p50_ms']:.2f} | "
              f"{r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.0f} | {r['errors']} ({r['wrong']}, "
              f"{r['unsent']}, {r['timeouts']}) | {'yes' if kept_up(r) else '**no**'} | {_f(r['server_cpu_us'])} |")
    w("")
    # -- batch
    w("## Batches")
    w("")
    w(f"`wrk -t1 -c{args.batch_connections} -d{args.batch_seconds:g}s`, distinct random batches of real baskets "
      "cycled; every basket's answer checked. Ours and the reference: `POST /predict/batch` with "
      "`{\"baskets\": [...]}`; MLServer: one V2 request with an "
      f"`[N, {results['info'].get('n_features', '?')}]` feature tensor.")
    w("")
    w("| system | baskets per request | requests/s | baskets/s | p50 ms | p99 ms | errors | server CPU per basket µs |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in SYSTEMS:
        for r in S.get(name, {}).get("batch", []):
            w(f"| {short(name, args)} | {r['batch_size']} | {_f(r['rps'], 1)} | {_f(r['baskets_per_s'])} | "
              f"{r['p50_us'] / 1000:.2f} | {r['p99_us'] / 1000:.2f} | {r['errors']} | "
              f"{_f(r['server_cpu_us'] / r['batch_size'], 1)} |")
    w("")
    # -- start and memory
    w("## Cold start and memory")
    w("")
    w(f"Cold start: process start to the first *correct* prediction (the first basket, polled every 10 ms), "
      f"{args.starts} start(s), median. RSS: every process of the system (server, workers), at rest after the "
      "start and the peak total sampled every 0.25 s during all the load above.")
    w("")
    w("| system | cold start s (median; runs) | RSS at rest MB (total; per process) | peak RSS under load MB (total; "
      "per process) | CPU at rest (% of a core, over 3 s) |")
    w("| --- | --- | --- | --- | ---: |")
    for name in SYSTEMS:
        res = S.get(name, {})
        if "cold_start_s" not in res:
            continue
        cs = res["cold_start_s"]
        rest = res.get("rss_at_rest_mb", {})
        load = res.get("rss_under_load_mb", {"total": 0, "processes": {}})
        w(f"| {short(name, args)} | {cs['median']:.2f} ({', '.join(f'{s:.2f}' for s in cs['runs'])}) | "
          f"{sum(rest.values()):.0f} ({'; '.join(f'{v:.0f}' for v in rest.values())}) | {load['total']:.0f} "
          f"({'; '.join(f'{v:.0f}' for v in load['processes'].values())}) | {res.get('idle_cpu_pct', 0):.1f} |")
    w("")
    closure, biggest = results["runtime_closure"]
    w(f"Image size of ours: {results['image']}. The installed size of our serving dependency closure "
      f"(`retail-prediction` and its runtime requirements, from package metadata; what the image adds to its "
      f"base) is {closure:.0f} MB, the largest being {', '.join(biggest[:5])}.")
    w("")
    w("## The plot")
    w("")
    w(f"![p99 latency against throughput]({os.path.relpath(png, out.parent)})")
    w("")
    w("Closed-loop points (one per concurrency) and the fixed rates each system kept up with. Down and to the "
      "right is better.")
    w("")
    profiles = [(name, p) for name in SYSTEMS for p in S.get(name, {}).get("profile", [])]
    if profiles:
        w("## Profile of our `/predict`")
        w("")
    for _name, p in profiles:
        w(f"### {p['connections']} connection(s)")
        w("")
        w(f"py-spy (`record --rate 250 --nonblocking`, {p['samples']} samples of the busy main thread; "
          f"idle time is not sampled) on the server process while wrk drove `/predict` at {p['connections']} "
          f"connection(s) ({p['rps']:.0f} req/s while profiled, {p['errors']} errors, server CPU "
          f"{p['cpu_us']:.0f} µs per request including the profiler's own overhead).")
        w("")
        w("| part of the request (innermost matching frame) | share of busy time |")
        w("| --- | ---: |")
        for k, v in p["parts"]:
            w(f"| {k} | {v:.1%} |")
        w("")
        w("| own time (innermost frame): function (file) | share |")
        w("| --- | ---: |")
        for k, v in p["own"][:15]:
            w(f"| `{k}` | {v:.1%} |")
        w("")
        w(f"Raw py-spy output: `{p['raw']}` (not kept in the repository).")
        w("")
    notes = HERE / "NOTES.md"
    if notes.exists():
        w(notes.read_text().rstrip())
        w("")
    w("## Errors and missing parts")
    w("")
    errs = [f"- {n}: {S[n]['error']}" for n in SYSTEMS if "error" in S.get(n, {})]
    L.extend(errs or ["- none: every system ran every scenario."])
    w("")
    w("## How to reproduce")
    w("")
    w("```sh")
    w("bash benchmarks/compare/setup.sh      # apt: wrk; venvs: /tmp/mlserver-venv, /tmp/reference-venv")
    w(f"python benchmarks/compare/run.py {results['argv']}")
    w("```")
    w("")
    w("Server commands as run:")
    w("")
    for name in SYSTEMS:
        if "command" in S.get(name, {}):
            w(f"- {name}: `{S[name]['command']}`")
    w("")
    w(f"The wrk command of the closed loop, e.g.: `{_example_cmd(S)}`")
    w("")
    w("Prepared inputs: model.onnx → model.bst agreement "
      f"{results['info']['lightgbm_vs_onnx_max_abs_diff']:.1e}; in-process featurization + ONNX vs the API's own "
      f"scoring path {results['info']['features_vs_api_max_abs_diff']:.1e}. Raw results: "
      f"`{os.path.relpath(args.json, ROOT)}`.")
    w("")
    w("## Versions")
    w("")
    for k, v in results["versions"].items():
        w(f"- {k}: {v}")
    w("")
    return "\n".join(L)


def _example_cmd(S: dict[str, Any]) -> str:
    for name in SYSTEMS:
        for r in S.get(name, {}).get("closed", []):
            return r["cmd"]
    return "–"


# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "models/model.tar.gz")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks.md")
    p.add_argument("--png", type=Path, default=ROOT / "docs/img/p99-vs-throughput.png")
    p.add_argument("--json", type=Path, default=HERE / "last-run.json")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "retail-bench")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--port", type=int, default=18000)
    p.add_argument("--baskets", type=int, default=2000)
    p.add_argument("--concurrency", default="1,8,32,128")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("--rates", default="50,100,200,400,800,1600")
    p.add_argument("--rate-seconds", type=float, default=6)
    p.add_argument("--rate-connections", type=int, default=64)
    p.add_argument("--batch-sizes", default="1,100,1000")
    p.add_argument("--batch-seconds", type=float, default=6)
    p.add_argument("--batch-connections", type=int, default=2)
    p.add_argument("--starts", type=int, default=3)
    p.add_argument("--rf-weeks", default="200728-200739", help="weeks of the reference forest's training baskets")
    p.add_argument("--profile", default="ours", help="systems to profile with py-spy (comma-separated; '' = none)")
    p.add_argument("--profile-seconds", type=float, default=8)
    p.add_argument("--profile-connections", default="1,32")
    p.add_argument("--image", help="docker image of ours, for its size")
    p.add_argument("--mlserver-python", default="/tmp/mlserver-venv/bin/python")
    p.add_argument("--reference-python", default="/tmp/reference-venv/bin/python")
    p.add_argument("--report-only", action="store_true",
                   help="re-render the report and the plot from --json (e.g. after editing NOTES.md), no runs")
    p.add_argument("--smoke", action="store_true", help="2 s runs, fewer levels and rates: checks the set-up only")
    args = p.parse_args(argv)
    if args.smoke:
        args.seconds, args.warmup, args.rate_seconds, args.batch_seconds, args.starts = 2, 1, 2, 2, 1
        args.concurrency, args.rates, args.profile_seconds = "1,32", "50,200", 4
    args.levels = [int(x) for x in args.concurrency.split(",")]
    args.rate_list = [float(x) for x in args.rates.split(",")]
    args.batch_list = [int(x) for x in args.batch_sizes.split(",")]
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.report_only:
        results = json.loads(args.json.read_text())
        for key in ("seconds", "warmup", "rate_seconds", "batch_seconds", "starts", "workers", "port",
                    "rate_connections", "batch_connections", "smoke"):
            setattr(args, key, results["settings"][key])
        plot(results, args, args.png)
        write_report(args.out, report(results, args, args.png, args.out))
        log(f"re-rendered {args.out} and {args.png} from {args.json}")
        return
    args.model = args.model.resolve()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    for f in work.glob("*.bodies"):  # inputs follow the model and the sample: rebuilt every run
        f.unlink()
    for f in work.glob("*.expected"):
        f.unlink()
    started = dt.datetime.now(dt.UTC)
    results: dict[str, Any] = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
                               "load_before": os.getloadavg(), "argv": shlex.join(argv), "systems": {},
                               "settings": {k: getattr(args, k) for k in (
                                   "seconds", "warmup", "rate_seconds", "batch_seconds", "starts", "workers", "port",
                                   "rate_connections", "batch_connections", "smoke")}}
    cases, results["info"] = prepare(args, work)
    results["versions"] = versions(args)
    for name in args.systems.split(","):
        log(f"=== {name} ===")
        try:
            results["systems"][name] = bench_system(name, args, work, cases)
        except Exception as exc:  # one system failing must not lose the others' results
            log(f"{name} failed: {exc!r}")
            results["systems"][name] = {"error": f"{type(exc).__name__}: {exc}"}
    results["load_after"] = os.getloadavg()
    results["runtime_closure"] = runtime_closure_mb()
    results["image"] = image_size(args.image)
    results["elapsed_s"] = (dt.datetime.now(dt.UTC) - started).total_seconds()
    args.json.write_text(json.dumps(results, indent=2, default=str))
    plot(results, args, args.png)
    write_report(args.out, report(results, args, args.png, args.out))
    log(f"done in {results['elapsed_s']:.0f} s: {args.out}, {args.png}, {args.json}")


if __name__ == "__main__":
    main()
