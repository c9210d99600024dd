"""Load benchmark of the prediction API (a script, not a test). Results go to docs/benchmarks.md.

    python benchmarks/api_load.py --model models/model.tar.gz [--data ../shared/data/lgsr] [--out run.json]

What it does, against one real server process (`python -m retail_prediction.serve`, 1 worker, default
settings unless --env is given) on 127.0.0.1:
  1. process start -> /ready 200, with the local model (median of 3 starts);
  2. peak throughput and latency (p50/p95/p99) of GET /health and POST /predict at several concurrency
     levels, driven by `wrk` (Debian package `wrk`) with baskets sampled from the real data set, and
     /predict's peak against /health's (the ceiling of the HTTP stack);
  3. POST /predict at a fixed rate of half its peak, open loop (latency counted from each request's
     scheduled send time, so a stalled server cannot hide its queueing);
  4. POST /predict/batch with 1000 real baskets: latency over repeated calls;
  5. RSS of the worker after all of the above.
The load generator runs on the same 2 cores as the server: figures are conservative.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from retail_prediction.data.requests import sample_baskets

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/lgsr"
WRK_SCRIPT = """
local bodies, i = {}, 0
function init(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  i = math.random(#bodies)
end
function request()
  i = i % #bodies + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[i])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('\\nRESULT {"requests": %d, "duration_us": %d, "socket_errors": %d, ' ..
    '"non2xx": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
"""
_POST = 'wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[i])'
HEALTH_SCRIPT = WRK_SCRIPT.replace(_POST, 'wrk.format("GET", nil)')


# --------------------------------------------------------------------------------------------------
# Real baskets


# sample_baskets lives in the package (tests replay the same bodies as live traffic).


# --------------------------------------------------------------------------------------------------
# The server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    command: tuple[str, ...] = (sys.executable, "-m", "retail_prediction.serve")

    def __init__(self, model: Path, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "AWS_"))}
        full.update({"MODEL_URI": str(model), "MODEL_POLL_SECONDS": "0", "HOST": "127.0.0.1",
                     "PORT": str(self.port), **env})
        self.started = time.perf_counter()
        with log.open("ab") as out:
            self.proc = subprocess.Popen(list(self.command), env=full,
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self.ready_seconds = self._wait_ready()
        except BaseException:
            self.proc.kill()
            raise

    def _wait_ready(self, timeout: float = 60) -> float:
        while time.perf_counter() - self.started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(0.005)
        raise TimeoutError("server not ready")

    def rss_mb(self) -> dict[str, float]:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server has used: per request, it does not depend on what else
        runs on the machine, unlike requests/s."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def scoring_calls(self) -> tuple[float, float]:
        """(model calls, baskets scored) so far, from the server's own histogram."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        # The names lost their retail_prediction_ prefix here, so older servers can be measured too.
        values = {name.removeprefix("retail_prediction_"): float(value) for name, value in
                  (line.split()[:2] for line in text.splitlines() if line and not line.startswith("#"))}
        return values.get("scoring_batch_baskets_count", 0.0), values.get("scoring_batch_baskets_sum", 0.0)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


# --------------------------------------------------------------------------------------------------
# Drivers


def run_wrk(url: str, script: str, bodies: Path, connections: int, seconds: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{round(seconds)}s", "-s", f.name, url, "--", str(bodies)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    os.unlink(f.name)
    result = json.loads(out.split("RESULT ", 1)[1])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


async def _open_loop_worker(port: int, queue: asyncio.Queue[tuple[float, bytes]], latencies: list[float],
                            errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    while True:
        scheduled, request = await queue.get()
        if not request:
            break
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        await reader.readexactly(length)
        latencies.append(loop.time() - scheduled)
        if not head.startswith(b"HTTP/1.1 200"):
            errors.append(head.split(b"\r\n", 1)[0].decode())
    writer.close()


async def open_loop(port: int, bodies: list[bytes], rate: float, seconds: float,
                    connections: int) -> dict[str, Any]:
    """Requests at a fixed rate; latency from the scheduled send time (no coordinated omission)."""
    requests = [(f"POST /predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(b)}\r\n\r\n").encode() + b for b in bodies]
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
    latencies: list[float] = []
    errors: list[str] = []
    start = asyncio.get_running_loop().time() + 0.2
    n = int(rate * seconds)
    for i in range(n):
        queue.put_nowait((start + i / rate, requests[i % len(requests)]))
    for _ in range(connections):
        queue.put_nowait((0.0, b""))
    await asyncio.gather(*(_open_loop_worker(port, queue, latencies, errors) for _ in range(connections)))
    ms = np.array(latencies) * 1000
    return {"target_rps": rate, "requests": n, "errors": len(errors), "achieved_rps": n / seconds,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}


def batch_latency(url: str, baskets: list[dict[str, Any]], repeats: int) -> dict[str, Any]:
    body = json.dumps({"baskets": baskets}).encode()
    times = []
    for _ in range(repeats + 2):
        headers = {"Content-Type": "application/json"}
        req = urllib.request.Request(url + "/predict/batch", data=body, headers=headers)
        started = time.perf_counter()
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            assert resp.status == 200
        times.append((time.perf_counter() - started) * 1000)
    times = times[2:]  # first calls warm allocator and caches
    lines = sum(len(b["basket_items"]) for b in baskets)
    return {"baskets": len(baskets), "lines": lines, "body_bytes": len(body), "p50_ms": statistics.median(times),
            "p95_ms": float(np.percentile(times, 95)), "max_ms": max(times)}


# --------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("models/model.tar.gz"))
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--concurrency", default="1,4,16,64")
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--baskets", type=int, default=5000, help="distinct real baskets to cycle through")
    p.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server, e.g. CACHE_SIZE=0")
    p.add_argument("--skip", default="", help="comma-separated phases to skip: start,peak,rate,batch")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    return p.parse_args()


def start_times(model: Path, env: dict[str, str], log: Path, runs: int = 3) -> dict[str, Any]:
    starts = []
    for _ in range(runs):
        server = Server(model, env, log)
        starts.append(server.ready_seconds)
        server.stop()
    return {"runs": starts, "median": statistics.median(starts)}


def _measured(server: Server, route: str, script: str, bodies: Path, c: int, seconds: float) -> dict[str, Any]:
    before, scored_before = server.cpu_seconds(), server.scoring_calls()
    result = run_wrk(server.url + route, script, bodies, c, seconds)
    result["cpu_us"] = (server.cpu_seconds() - before) / max(result["requests"], 1) * 1e6
    calls, baskets = (a - b for a, b in zip(server.scoring_calls(), scored_before, strict=True))
    result["baskets_per_model_call"] = baskets / calls if calls else None
    return result


def peak_table(server: Server, bodies: Path, levels: list[int], seconds: float) -> list[dict[str, Any]]:
    rows = []
    for c in levels:
        health = _measured(server, "/health", HEALTH_SCRIPT, bodies, c, seconds)
        predict = _measured(server, "/predict", WRK_SCRIPT, bodies, c, seconds)
        row = {"connections": c, "health": health, "predict": predict, "ratio": predict["rps"] / health["rps"]}
        rows.append(row)
        p = {k: predict[k] / 1000 for k in ("p50_us", "p95_us", "p99_us")}
        print(f"c={c:3d}  /health {health['rps']:7.0f} rps | /predict {predict['rps']:7.0f} rps "
              f"p50 {p['p50_us']:6.2f} p95 {p['p95_us']:6.2f} p99 {p['p99_us']:6.2f} ms "
              f"errors {predict['socket_errors'] + predict['non2xx']} | ratio {row['ratio']:.2f} | server CPU "
              f"per request {health['cpu_us']:.0f} / {predict['cpu_us']:.0f} us | baskets per model call "
              f"{predict['baskets_per_model_call'] or 0:.1f}", flush=True)
    return rows


def main() -> None:
    args = parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")
    env = dict(item.split("=", 1) for item in args.env)
    skip = set(filter(None, args.skip.split(",")))
    work = Path(tempfile.mkdtemp(prefix="api-bench-"))
    env.setdefault("MODEL_DIR", str(work / "models"))
    # 1000 real baskets with all four hierarchy codes are ~1.1 MB, over the 1 MiB default.
    env.setdefault("MAX_BODY_BYTES", str(4 << 20))
    baskets = sample_baskets(args.data, args.baskets)
    bodies = work / "bodies.jsonl"
    bodies.write_text("\n".join(json.dumps(b) for b in baskets) + "\n")
    lines = [len(b["basket_items"]) for b in baskets]
    results: dict[str, Any] = {"env": env, "baskets": len(baskets), "lines_mean": statistics.mean(lines),
                               "lines_p95": float(np.percentile(lines, 95)), "cpu_count": os.cpu_count(),
                               # Other work on the machine skews requests/s; CPU per request much less so.
                               "load_average_before": os.getloadavg()}
    print(json.dumps(results), flush=True)
    if "start" not in skip:
        results["start_to_ready_s"] = start_times(args.model, env, work / "server.log")
        print("start -> ready:", json.dumps(results["start_to_ready_s"]), flush=True)
    server = Server(args.model, env, work / "server.log")
    try:
        results["rss_after_start_mb"] = server.rss_mb()
        if "peak" not in skip:
            levels = [int(x) for x in args.concurrency.split(",")]
            results["peak"] = peak_table(server, bodies, levels, args.seconds)
            peaks = {route: max(r[route]["rps"] for r in results["peak"]) for route in ("health", "predict")}
            # Issue 3's target: /predict's peak against the ceiling of the HTTP stack, /health's peak.
            results["peak_ratio"] = peaks["predict"] / peaks["health"]
            print(f"peak against peak: /predict {peaks['predict']:.0f} / /health {peaks['health']:.0f} req/s = "
                  f"{results['peak_ratio']:.0%}", flush=True)
            half = peaks["predict"] / 2
            raw = [json.dumps(b).encode() for b in baskets]
            results["half_peak"] = asyncio.run(open_loop(server.port, raw, half, args.seconds, 64))
            print("half of peak, open loop:", json.dumps(results["half_peak"]), flush=True)
        if "batch" not in skip:
            results["batch_1000"] = batch_latency(server.url, baskets[:1000], 20)
            print("batch of 1000:", json.dumps(results["batch_1000"]), flush=True)
        results["rss_after_load_mb"] = server.rss_mb()
        print("rss MB:", json.dumps(results["rss_after_load_mb"]), flush=True)
    finally:
        server.stop()
    results["load_average_after"] = os.getloadavg()
    print("load average before / after:", results["load_average_before"], results["load_average_after"])
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
