"""The Open Inference Protocol routes against our own, on one server process (a script, not a test).

    python benchmarks/oip_load.py --model models/model.tar.gz [--data ../shared/data/lgsr] [--seconds 5]

1. One basket per request: /predict and /v2/models/<name>/infer (JSON) driven by wrk at 1, 8 and 32
   connections, the same real baskets, interleaved; requests/s and the ratio OIP / /predict.
2. 1,000 baskets per request: /predict/batch and /v2/.../infer in JSON and in binary tensor data (what
   tritonclient sends), repeated sequential calls; baskets/s and the ratio.
The issue's bar: the OIP at least 80 % of ours in both. Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from api_load import DEFAULT_DATA, WRK_SCRIPT, Server, run_wrk  # benchmarks/ is on the path as a script

from retail_prediction.data.requests import long_form, sample_baskets

NAME = "retail-prediction"
INFER = f"/v2/models/{NAME}/infer"


def oip_json(baskets: list[dict[str, Any]]) -> bytes:
    inputs = [{"name": n, "shape": [len(v)], "datatype": "FP64" if n in ("quantity", "price") else "BYTES",
               "data": v} for n, v in long_form(baskets).items()]
    return json.dumps({"inputs": inputs}).encode()


def oip_binary(baskets: list[dict[str, Any]]) -> tuple[bytes, dict[str, str]]:
    """What tritonclient sends by default: binary inputs, binary outputs."""
    head, blobs = [], []
    for name, values in long_form(baskets).items():
        if name in ("quantity", "price"):
            blob, datatype = struct.pack(f"<{len(values)}d", *values), "FP64"
        else:
            blob = b"".join(struct.pack("<I", len(s.encode())) + s.encode() for s in values)
            datatype = "BYTES"
        head.append({"name": name, "shape": [len(values)], "datatype": datatype,
                     "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    header = json.dumps({"inputs": head, "parameters": {"binary_data_output": True}}).encode()
    return header + b"".join(blobs), {"Inference-Header-Content-Length": str(len(header))}


def per_second(url: str, body: bytes, headers: dict[str, str], baskets: int, repeats: int) -> float:
    """Baskets per second over `repeats` sequential calls (median call time), after two warm-up calls."""
    times = []
    for _ in range(repeats + 2):
        request = urllib.request.Request(url, data=body, headers=headers)
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            assert response.status == 200
        times.append(time.perf_counter() - started)
    return baskets / statistics.median(times[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of each comparison")
    args = parser.parse_args()
    baskets = sample_baskets(args.data, 2000)
    work = Path(tempfile.mkdtemp(prefix="oip-bench-"))
    ours, theirs = work / "predict.jsonl", work / "oip.jsonl"
    ours.write_text("".join(json.dumps(b) + "\n" for b in baskets))
    theirs.write_text("".join(oip_json([b]).decode() + "\n" for b in baskets))
    server = Server(args.model, {"LOG_LEVEL": "warning", "MAX_BODY_BYTES": str(8 << 20)}, work / "server.log")
    try:
        print("one basket per request (wrk; requests/s):")
        for c in (int(x) for x in args.concurrency.split(",")):
            pairs = []
            for _ in range(args.rounds):
                a = run_wrk(server.url + "/predict", WRK_SCRIPT, ours, c, args.seconds)
                b = run_wrk(server.url + INFER, WRK_SCRIPT, theirs, c, args.seconds)
                assert a["non2xx"] == b["non2xx"] == 0, (a, b)
                pairs.append((a["rps"], b["rps"]))
            a_rps, b_rps = (statistics.median(p[i] for p in pairs) for i in (0, 1))
            print(f"  c={c:3d}  /predict {a_rps:7.0f}   OIP infer {b_rps:7.0f}   OIP/ours {b_rps / a_rps:5.2f}")
        print("1,000 baskets per request (sequential calls; baskets/s):")
        thousand = baskets[:1000]
        json_headers = {"Content-Type": "application/json"}
        batch = json.dumps({"baskets": thousand}).encode()
        binary, binary_headers = oip_binary(thousand)
        rows: dict[str, list[float]] = {"/predict/batch": [], "OIP JSON": [], "OIP binary": []}
        for _ in range(args.rounds):
            rows["/predict/batch"].append(per_second(server.url + "/predict/batch", batch, json_headers, 1000,
                                                     args.repeats))
            rows["OIP JSON"].append(per_second(server.url + INFER, oip_json(thousand), json_headers, 1000,
                                               args.repeats))
            rows["OIP binary"].append(per_second(server.url + INFER, binary, binary_headers, 1000, args.repeats))
        ref = statistics.median(rows["/predict/batch"])
        for name, values in rows.items():
            value = statistics.median(values)
            print(f"  {name:15s} {value:8.0f} baskets/s   vs /predict/batch {value / ref:5.2f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
