"""What the authenticators raise: a refusal (401) or an authority that cannot be asked (503)."""

from __future__ import annotations


class AuthFailure(Exception):
    """The credentials were missing or wrong: 401. `reason` is the metric label (a fixed, small set)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class AuthUnavailable(Exception):
    """Nothing to check credentials against (no keys, the issuer unreachable): 503, never open."""
