"""What authentication costs a request, in process (a script, not a test). Results go to docs/benchmarks.md.

    python benchmarks/auth_cost.py --model models/model.tar.gz 2>/dev/null

It prints, in µs of CPU per call (best of --rounds rounds of --calls calls):
  1. the checks alone: parsing the `Authorization` header; a bearer key against a file of 2 and of 20 keys
     (hit and miss); a JWT already verified (the cache), and one verified afresh (RS256 signature + claims);
  2. the middleware alone, around an app that answers nothing (AUTH_MODE=keys and jwt, minus no middleware);
  3. POST /predict through the whole app (the example basket), AUTH_MODE=off / keys / jwt, one app at a time,
     rounds interleaved so that the machine's drift falls on all three alike; the CPU of the event loop's
     thread (ONNX Runtime's own threads, the same in every mode, are left out).
No sockets: `benchmarks/api_load.py` measures the server over real sockets (with AUTH_MODE=off, the default,
the middleware is not installed: nothing to measure there).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import jwt
import orjson
import uvloop
from app_cost import call  # benchmarks/ is on the path when run as a script
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from prometheus_client import CollectorRegistry

from retail_prediction.api import Settings, create_app
from retail_prediction.api.auth import AuthMiddleware, JwtAuthenticator, KeysAuthenticator, bearer
from retail_prediction.api.schemas import EXAMPLE_REQUEST
from retail_prediction.serving.metrics import AuthMetrics

ISSUER, AUDIENCE, KID = "https://issuer.example.com", "retail-api", "k1"
KEY = "bench-key-0123456789abcdef"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--calls", type=int, default=20_000, help="calls per round (checks, middleware)")
    parser.add_argument("--requests", type=int, default=2_000, help="/predict requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    return parser.parse_args()


def best_us(run: Callable[[], Any], calls: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(calls):
            run()
        best = min(best, (time.process_time() - started) / calls)
    return best * 1e6


def keys_file(folder: Path, count: int) -> Path:
    path = folder / f"keys-{count}"
    path.write_text("".join(f"caller{i}:key-{i:04d}-0123456789abcdef\n" for i in range(count - 1))
                    + f"bench:{KEY}\n")
    return path


def jwt_settings(folder: Path) -> tuple[Settings, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Settings(auth_mode="jwt", auth_jwt_issuer=ISSUER, auth_jwt_audience=AUDIENCE,
                    model_dir=folder / "models"), key


def token(key: rsa.RSAPrivateKey, subject: str = "svc") -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "iat": now, "exp": now + 3600}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": KID})


def with_keys(authenticator: JwtAuthenticator, key: rsa.RSAPrivateKey) -> JwtAuthenticator:
    """The verifier with the issuer's keys in hand, as after its first fetch (no issuer to ask here)."""
    verifier = authenticator.verifier
    verifier._jwks = {KID: {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": KID, "alg": "RS256"}}
    verifier._fetched_at = time.monotonic()
    return authenticator


def checks(folder: Path, calls: int, rounds: int, loop: asyncio.AbstractEventLoop) -> None:
    print("1. the checks alone (µs per call)")
    scope = {"headers": [(b"host", b"x"), (b"content-type", b"application/json"),
                         (b"authorization", f"Bearer {KEY}".encode())]}
    print(f"   parse the Authorization header            {best_us(lambda: bearer(scope), calls, rounds):7.2f}")
    for count in (2, 20):
        auth = KeysAuthenticator(Settings(auth_mode="keys", auth_keys_file=keys_file(folder, count)),
                                 AuthMetrics(CollectorRegistry(), 50))
        hit = best_us(lambda a=auth: a.store.caller(KEY), calls, rounds)
        miss = best_us(lambda a=auth: a.store.caller("wrong-key-0123456789abcdef"), calls, rounds)
        print(f"   key among {count:2d} keys: hit / miss             {hit:7.2f} / {miss:.2f}")
    settings, key = jwt_settings(folder)
    auth = with_keys(JwtAuthenticator(settings, AuthMetrics(CollectorRegistry(), 50)), key)
    cached = token(key)
    loop.run_until_complete(auth.caller(cached))

    def run_cached() -> None:
        with suppress(StopIteration):
            auth.caller(cached).send(None)  # the cached path never suspends: no event loop needed

    print(f"   JWT already verified (cache)              {best_us(run_cached, calls, rounds):7.2f}")
    fresh = [token(key, f"svc-{i}") for i in range(max(calls // 20, 200))]
    auth.verifier._cache_size = 0
    position = iter(range(10**9))

    def run_fresh() -> None:
        coroutine = auth.caller(fresh[next(position) % len(fresh)])
        with suppress(StopIteration):
            coroutine.send(None)

    print(f"   JWT verified afresh (RS256, claims)       {best_us(run_fresh, len(fresh), rounds):7.2f}")
    digest = best_us(lambda: hashlib.sha256(cached.encode()).digest(), calls, rounds)
    print(f"   (of which the token's SHA-256, cache key) {digest:7.2f}")


async def _nothing(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def middleware(folder: Path, calls: int, rounds: int, loop: asyncio.AbstractEventLoop) -> None:
    print("2. the middleware alone, around an app that answers nothing (µs per request)")
    settings, key = jwt_settings(folder)
    fake_app = type("App", (), {"router": None})()
    keyed = KeysAuthenticator(Settings(auth_mode="keys", auth_keys_file=keys_file(folder, 2)),
                              AuthMetrics(CollectorRegistry(), 50))
    jwt_auth = with_keys(JwtAuthenticator(settings, AuthMetrics(CollectorRegistry(), 50)), key)
    cases = [("no middleware (AUTH_MODE=off)", _nothing, KEY),
             ("AUTH_MODE=keys", AuthMiddleware(_nothing, keyed, AuthMetrics(CollectorRegistry(), 50), fake_app), KEY),
             ("AUTH_MODE=jwt (cached token)",
              AuthMiddleware(_nothing, jwt_auth, AuthMetrics(CollectorRegistry(), 50), fake_app), token(key))]
    base = None
    for name, app, credential in cases:
        headers = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {credential}".encode())]

        async def many(app: Any = app, headers: list[Any] = headers) -> None:
            for _ in range(calls):
                await app({"type": "http", "path": "/predict", "method": "POST", "headers": headers},
                          None, _swallow)

        best = float("inf")
        for _ in range(rounds):
            started = time.process_time()
            loop.run_until_complete(many())
            best = min(best, (time.process_time() - started) / calls * 1e6)
        base = best if base is None else base
        print(f"   {name:<36} {best:7.2f}  (+{best - base:.2f})")


async def _swallow(message: Any) -> None:
    return None


def predict(folder: Path, model: Path, requests: int, rounds: int) -> None:
    print("3. POST /predict through the whole app (µs of the event loop thread's CPU per request; best round)")
    body = orjson.dumps(EXAMPLE_REQUEST)
    jwt_base, key = jwt_settings(folder)
    common = {"model_uri": str(model), "model_poll_seconds": 0, "model_dir": folder / "models",
              "log_level": "warning"}
    modes = {"off": (Settings(**common), None),
             "keys": (Settings(**common, auth_mode="keys", auth_keys_file=keys_file(folder, 2)), KEY),
             "jwt": (jwt_base.model_copy(update=common), token(key))}

    async def one(settings: Settings, credential: str | None) -> float:
        """One app alone (another app's ONNX Runtime threads would share the cores): build, load, time."""
        app = create_app(settings)
        for middleware in app.user_middleware:  # jwt: the issuer's keys in hand
            if middleware.cls is AuthMiddleware and isinstance(middleware.kwargs["authenticator"], JwtAuthenticator):
                with_keys(middleware.kwargs["authenticator"], key)
        extra = [(b"authorization", f"Bearer {credential}".encode())] if credential else []
        async with app.router.lifespan_context(app):
            while app.state.service.manager.current is None:
                await asyncio.sleep(0.05)
            for _ in range(300):  # warm-up
                await call(app, "POST", "/predict", body, extra)
            started = time.thread_time()
            for _ in range(requests):
                await call(app, "POST", "/predict", body, extra)
            return (time.thread_time() - started) / requests * 1e6

    best = {mode: float("inf") for mode in modes}
    loop = asyncio.get_event_loop()
    for _ in range(rounds):  # modes interleaved: the machine's drift falls on all three
        for mode, (settings, credential) in modes.items():
            best[mode] = min(best[mode], loop.run_until_complete(one(settings, credential)))
    for mode, value in best.items():
        print(f"   AUTH_MODE={mode:<5} {value:8.1f}  (+{value - best['off']:.1f})")


def main() -> None:
    args = parse_args()
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    with tempfile.TemporaryDirectory() as folder:
        checks(Path(folder), args.calls, args.rounds, loop)
        middleware(Path(folder), args.calls, args.rounds, loop)
        predict(Path(folder), args.model, args.requests, args.rounds)


if __name__ == "__main__":
    main()
