"""JWTs of an OIDC issuer (AUTH_MODE=jwt), verified by PyJWT against the issuer's JWKS.

A token is accepted when its signature verifies with a key of the issuer's JWKS (found by the header's
`kid`), with an algorithm of AUTH_JWT_ALGORITHMS (public-key ones only: never `none` or HMAC), and its
claims hold: `iss` is AUTH_JWT_ISSUER, `aud` names AUTH_JWT_AUDIENCE, `exp` is to come, `nbf` / `iat` are
not in the future (30 s leeway for clocks), `sub` is there. The caller is `sub`.

The JWKS (its address from the issuer's discovery document, or AUTH_JWKS_URI) is fetched in a worker thread
with a short timeout, so a slow issuer holds only the requests that need it, never the event loop or the
probes; one fetch runs at a time. It is reused for AUTH_JWKS_REFRESH_SECONDS, then fetched again (if that
fails the keys in hand stay); a token whose `kid` is unknown fetches it at once, but at most once per
AUTH_JWKS_MIN_REFRESH_SECONDS, so a flood of made-up kids cannot flood the issuer. No keys at all (issuer
unreachable since the start) is a 503: fail closed. A verified token is remembered by its SHA-256 (a bounded
LRU, until it expires), so a repeated token costs a dictionary lookup, not a signature check.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import urllib.request
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

import jwt

from ..serving.metrics import AuthMetrics
from ..serving.settings import Settings
from .auth_common import AuthFailure, AuthUnavailable

log = logging.getLogger("retail_prediction.auth")

MAX_DOCUMENT_BYTES = 1_048_576
LEEWAY_SECONDS = 30
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}  # plain http only to this machine (tests, a local issuer)
_REQUIRED = ["exp", "iss", "aud", "sub"]
_REASONS: list[tuple[type[Exception], str]] = [
    (jwt.ExpiredSignatureError, "expired"), (jwt.InvalidAudienceError, "wrong_audience"),
    (jwt.InvalidIssuerError, "wrong_issuer"), (jwt.InvalidAlgorithmError, "bad_algorithm"),
    (jwt.ImmatureSignatureError, "not_yet_valid"), (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.InvalidSignatureError, "bad_signature"),
]  # fmt: skip


def _secure(url: str) -> bool:
    """https, or plain http to this machine only."""
    parts = urlsplit(url)
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK)


def _get_json(url: str, timeout: float) -> dict[str, Any]:
    """GET `url` as a JSON object (at most MAX_DOCUMENT_BYTES), in the calling thread."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler())
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with opener.open(request, timeout=timeout) as response:
        data = response.read(MAX_DOCUMENT_BYTES + 1)
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"{url}: larger than {MAX_DOCUMENT_BYTES} bytes")
    document = json.loads(data)
    if not isinstance(document, dict):
        raise ValueError(f"{url}: not a JSON object")
    return document


class JwtVerifier:
    """`await caller(token)`: the token's subject, or AuthFailure (401) / AuthUnavailable (503)."""

    def __init__(self, settings: Settings, metrics: AuthMetrics) -> None:
        assert settings.auth_jwt_issuer and settings.auth_jwt_audience
        self.issuer = settings.auth_jwt_issuer
        self.audience = settings.auth_jwt_audience
        self.algorithms = list(settings.auth_jwt_algorithms)
        self.metrics = metrics
        self._timeout = settings.auth_jwks_timeout_seconds
        self._refresh_after = settings.auth_jwks_refresh_seconds
        self._min_refresh = settings.auth_jwks_min_refresh_seconds
        self._jwks_uri = settings.auth_jwks_uri
        self._jwks: dict[str, dict[str, Any]] = {}  # kid -> JWK
        self._keys: dict[tuple[str, str], jwt.PyJWK] = {}  # (kid, alg) -> key, made from the JWK on first use
        self._fetched_at = float("-inf")  # last successful fetch (monotonic)
        self._tried_at = float("-inf")  # last attempt
        self._kid_refresh_at = float("-inf")  # last fetch for an unknown kid
        self._lock: asyncio.Lock | None = None
        self._verified: OrderedDict[bytes, tuple[str, float]] = OrderedDict()  # sha256(token) -> (sub, exp)
        self._cache_size = settings.auth_token_cache_size
        for url in (self.issuer, self._jwks_uri):
            if url and not _secure(url):
                raise ValueError(f"the token issuer's keys must come over https: {url}")

    async def caller(self, token: str) -> str:
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._verified.get(digest)
        if hit is not None:
            if hit[1] > time.time():
                self._verified.move_to_end(digest)
                return hit[0]
            del self._verified[digest]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthFailure("malformed_token", "the bearer token is not a JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.algorithms:
            raise AuthFailure("bad_algorithm", f"tokens signed with {alg!r} are not accepted")
        key = await self._key(kid if isinstance(kid, str) else None, alg)
        try:
            claims = jwt.decode(token, key, algorithms=self.algorithms, audience=self.audience, issuer=self.issuer,
                                leeway=LEEWAY_SECONDS, options={"require": _REQUIRED})
        except jwt.PyJWTError as exc:
            reason = next((name for kind, name in _REASONS if isinstance(exc, kind)), "invalid_token")
            raise AuthFailure(reason, f"the token was refused: {reason.replace('_', ' ')}") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise AuthFailure("missing_claim", "the token was refused: missing claim")
        self._remember(digest, subject[:256], float(claims["exp"]))
        return subject[:256]

    def _remember(self, digest: bytes, subject: str, expires: float) -> None:
        if self._cache_size:
            self._verified[digest] = (subject, expires)
            if len(self._verified) > self._cache_size:
                self._verified.popitem(last=False)

    async def _key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        # Fetches are at most once per AUTH_JWKS_MIN_REFRESH_SECONDS; with no keys at all (the issuer has been
        # down) every 2 s at most, since every request fails until it answers.
        gap = self._min_refresh if self._jwks else min(self._min_refresh, 2.0)
        now = time.monotonic()
        fetched = False
        if now - self._fetched_at > self._refresh_after and now - self._tried_at > gap:
            await self._refresh()  # stale: fetch again (the keys in hand stay if that fails)
            fetched = True
        jwk = self._find(kid)
        if jwk is None and not fetched and now - self._kid_refresh_at > gap:
            self._kid_refresh_at = now  # an unknown kid may be a new key: fetch, within the same limit
            await self._refresh()
            jwk = self._find(kid)
        if jwk is None:
            if not self._jwks:
                raise AuthUnavailable(f"the token issuer's keys could not be fetched from {self.issuer}")
            raise AuthFailure("unknown_key", "the token was refused: signed with a key the issuer does not list")
        if jwk.get("alg", alg) != alg:
            raise AuthFailure("bad_algorithm", "the token was refused: its algorithm is not its key's")
        key = self._keys.get((jwk["kid"], alg))
        if key is None:
            try:
                key = self._keys[(jwk["kid"], alg)] = jwt.PyJWK(jwk, algorithm=alg)
            except jwt.PyJWTError:
                raise AuthFailure("bad_algorithm", "the token was refused: its key does not fit its algorithm") \
                    from None
        return key

    def _find(self, kid: str | None) -> dict[str, Any] | None:
        if kid is None:  # no kid: acceptable only when the issuer has one key
            return next(iter(self._jwks.values())) if len(self._jwks) == 1 else None
        return self._jwks.get(kid)

    async def _refresh(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        tried = self._tried_at
        async with self._lock:
            if self._tried_at != tried:
                return  # another request fetched while this one waited
            self._tried_at = time.monotonic()
            try:
                jwks = await asyncio.to_thread(self._fetch)
            except Exception as exc:  # unreachable, slow, or nonsense: keep what we have
                self.metrics.jwks_fetches.labels("failure").inc()
                log.error("could not fetch the token issuer's keys: %s", exc, extra={"issuer": self.issuer})
                return
            self.metrics.jwks_fetches.labels("success").inc()
            self._jwks, self._keys, self._fetched_at = jwks, {}, time.monotonic()

    def _fetch(self) -> dict[str, dict[str, Any]]:
        """The issuer's signing keys by kid (runs in a worker thread)."""
        if self._jwks_uri is None:
            discovery = _get_json(self.issuer.rstrip("/") + "/.well-known/openid-configuration", self._timeout)
            if discovery.get("issuer") != self.issuer:
                raise ValueError(f"the discovery document names issuer {discovery.get('issuer')!r}")
            uri = discovery.get("jwks_uri")
            if not isinstance(uri, str) or not _secure(uri):
                raise ValueError(f"the discovery document's jwks_uri is not an https address: {uri!r}")
            self._jwks_uri = uri
        document = _get_json(self._jwks_uri, self._timeout)
        keys = document.get("keys")
        if not isinstance(keys, list):
            raise ValueError(f"{self._jwks_uri}: no `keys` list")
        usable = {k["kid"]: k for k in keys
                  if isinstance(k, dict) and isinstance(k.get("kid"), str) and k.get("use", "sig") == "sig"}
        if not usable:
            raise ValueError(f"{self._jwks_uri}: no signing key with a kid")
        return usable
