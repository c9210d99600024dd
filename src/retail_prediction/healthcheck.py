"""Container health check: ``python -m retail_prediction.healthcheck``.

GET ``http://127.0.0.1:$PORT/health`` with a short timeout; exit 0 when the answer is 200, else 1.
Standard library only, so it costs no import of the app (no numpy/onnxruntime) and works in the
image without curl. Used by the Dockerfile ``HEALTHCHECK``; Kubernetes uses its own HTTP probes.

Environment: ``PORT`` (default 8000), ``HEALTHCHECK_PATH`` (default ``/health``),
``HEALTHCHECK_TIMEOUT`` seconds (default 3).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_PORT = 8000
DEFAULT_PATH = "/health"
DEFAULT_TIMEOUT = 3.0


def _port(environ: dict[str, str]) -> int:
    raw = environ.get("PORT", "").strip()
    if not raw:
        return DEFAULT_PORT
    port = int(raw)
    if not 0 < port < 65536:
        raise ValueError(f"PORT out of range: {port}")
    return port


def _timeout(environ: dict[str, str]) -> float:
    raw = environ.get("HEALTHCHECK_TIMEOUT", "").strip()
    return float(raw) if raw else DEFAULT_TIMEOUT


def check(environ: dict[str, str] | None = None) -> tuple[bool, str]:
    """Return (healthy, message)."""
    env = dict(os.environ if environ is None else environ)
    try:
        port = _port(env)
        timeout = _timeout(env)
    except ValueError as exc:
        return False, f"bad configuration: {exc}"
    path = env.get("HEALTHCHECK_PATH", "").strip() or DEFAULT_PATH
    if not path.startswith("/"):
        path = "/" + path
    url = f"http://127.0.0.1:{port}{path}"
    # No proxy for loopback, whatever HTTP(S)_PROXY the container was given.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        return False, f"{url} -> HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, f"{url} -> {exc}"
    if status == 200:
        return True, f"{url} -> HTTP 200"
    return False, f"{url} -> HTTP {status}"


def main() -> int:
    healthy, message = check()
    print(("healthy: " if healthy else "unhealthy: ") + message, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
