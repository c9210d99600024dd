#!/usr/bin/env bash
# Build the Retail Prediction API image, smoke-test it, and push it to Amazon ECR.
#
#   scripts/build-push.sh --smoke-model model.tar.gz            # build, test, push
#   scripts/build-push.sh --smoke-model model.tar.gz --dry-run  # print the plan only
#
# Steps: resolve the git commit/branch and build date -> docker build with those as build args
# (OCI labels, /model/info) -> smoke test: run the image read-only with all capabilities dropped
# and the model mounted, wait for /health and /ready, POST one /predict; any failure aborts here,
# nothing is pushed -> create the ECR repository if missing (scan on push, encryption) -> log in
# -> tag latest, <commit>, <branch>-<commit> -> push -> print the image URIs.
#
# Options (each also settable by the environment variable in brackets):
#   -r, --region REGION       AWS region [AWS_REGION, AWS_DEFAULT_REGION] (ap-southeast-1)
#   -n, --repository NAME     ECR repository [ECR_REPOSITORY] (retail-prediction-api)
#   --account-id ID           AWS account [AWS_ACCOUNT_ID] (default: aws sts get-caller-identity)
#   --registry HOST[:PORT]    registry to push to [REGISTRY]
#                             (default <account>.dkr.ecr.<region>.amazonaws.com)
#   --ecr-endpoint URL        ECR/STS API endpoint override, e.g. a test double [ECR_ENDPOINT_URL]
#   --kms-key ARN             encrypt the new repository with this KMS key [ECR_KMS_KEY]
#                             (default: AES256)
#   --docker BIN              container engine client [DOCKER] (docker)
#   --aws BIN                 AWS CLI [AWS_CLI] (aws)
#   --context DIR             build context [BUILD_CONTEXT] (the repository root)
#   --base-image IMAGE        BASE_IMAGE build arg [BASE_IMAGE] (Dockerfile default)
#   --build-secret SPEC       extra `docker build --secret` [BUILD_SECRET],
#                             e.g. id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt
#   --network MODE            network for the build and the smoke container [DOCKER_NETWORK]
#                             (engine default; with `host` the smoke test uses a free local port)
#   --target NAME             Dockerfile stage [BUILD_TARGET]: runtime (the serving image, default) or
#                             train (the training image; repository default retail-prediction-train; its
#                             smoke test imports the training stack and runs `train --help`, no model)
#   --smoke-model PATH        model.tar.gz mounted into the smoke container [SMOKE_MODEL] (required
#                             unless --skip-smoke or --target train)
#   --smoke-body FILE         JSON body for the smoke POST /predict [SMOKE_BODY] (default: the
#                             example of the /predict request body in the app's /openapi.json)
#   --smoke-timeout SECONDS   how long to wait for /ready [SMOKE_TIMEOUT] (120)
#   (SOURCE_URL: the org.opencontainers.image.source label; default: the https git remote origin)
#   --skip-smoke              push without the smoke test (not recommended)
#   --no-push                 build and smoke-test only
#   --dry-run                 print the plan and exit without building or pushing
#   -h, --help
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-ap-southeast-1}}"
REPOSITORY="${ECR_REPOSITORY:-}"
TARGET="${BUILD_TARGET:-runtime}"
ACCOUNT_ID="${AWS_ACCOUNT_ID:-}"
REGISTRY="${REGISTRY:-}"
ECR_ENDPOINT_URL="${ECR_ENDPOINT_URL:-}"
KMS_KEY="${ECR_KMS_KEY:-}"
DOCKER="${DOCKER:-docker}"
AWS_CLI="${AWS_CLI:-aws}"
CONTEXT="${BUILD_CONTEXT:-$REPO_ROOT}"
BASE_IMAGE="${BASE_IMAGE:-}"
BUILD_SECRET="${BUILD_SECRET:-}"
NETWORK="${DOCKER_NETWORK:-}"
SMOKE_MODEL="${SMOKE_MODEL:-}"
SMOKE_BODY="${SMOKE_BODY:-}"
SMOKE_TIMEOUT="${SMOKE_TIMEOUT:-120}"
SMOKE=1
PUSH=1
DRY_RUN=0

usage() { sed -n '2,/^set -euo pipefail/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "build-push: error: $*" >&2; exit 1; }
say() { echo "build-push: $*" >&2; }
need_arg() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    -r|--region) need_arg "$@"; REGION="$2"; shift 2 ;;
    -n|--repository) need_arg "$@"; REPOSITORY="$2"; shift 2 ;;
    --account-id) need_arg "$@"; ACCOUNT_ID="$2"; shift 2 ;;
    --registry) need_arg "$@"; REGISTRY="$2"; shift 2 ;;
    --ecr-endpoint) need_arg "$@"; ECR_ENDPOINT_URL="$2"; shift 2 ;;
    --kms-key) need_arg "$@"; KMS_KEY="$2"; shift 2 ;;
    --docker) need_arg "$@"; DOCKER="$2"; shift 2 ;;
    --aws) need_arg "$@"; AWS_CLI="$2"; shift 2 ;;
    --context) need_arg "$@"; CONTEXT="$2"; shift 2 ;;
    --base-image) need_arg "$@"; BASE_IMAGE="$2"; shift 2 ;;
    --build-secret) need_arg "$@"; BUILD_SECRET="$2"; shift 2 ;;
    --network) need_arg "$@"; NETWORK="$2"; shift 2 ;;
    --target) need_arg "$@"; TARGET="$2"; shift 2 ;;
    --smoke-model) need_arg "$@"; SMOKE_MODEL="$2"; shift 2 ;;
    --smoke-body) need_arg "$@"; SMOKE_BODY="$2"; shift 2 ;;
    --smoke-timeout) need_arg "$@"; SMOKE_TIMEOUT="$2"; shift 2 ;;
    --skip-smoke) SMOKE=0; shift ;;
    --no-push) PUSH=0; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

[[ "$TARGET" == runtime || "$TARGET" == train ]] || die "--target must be runtime or train, not $TARGET"
if [[ -z "$REPOSITORY" ]]; then
  if [[ "$TARGET" == train ]]; then REPOSITORY=retail-prediction-train; else REPOSITORY=retail-prediction-api; fi
fi
[[ "$REGION" =~ ^[a-z]{2}(-[a-z]+)+-[0-9]+$ ]] || die "not an AWS region: $REGION"
[[ "$REPOSITORY" =~ ^[a-z0-9]+([._/-][a-z0-9]+)*$ ]] || die "not a valid ECR repository name: $REPOSITORY"
[[ "$SMOKE_TIMEOUT" =~ ^[0-9]+$ ]] || die "--smoke-timeout must be a number of seconds"
if [[ $SMOKE -eq 1 && "$TARGET" == runtime ]]; then
  [[ -n "$SMOKE_MODEL" ]] || die "--smoke-model PATH is required for the smoke test (or --skip-smoke)"
  [[ -f "$SMOKE_MODEL" ]] || die "smoke model not found: $SMOKE_MODEL"
  SMOKE_MODEL="$(cd "$(dirname "$SMOKE_MODEL")" && pwd)/$(basename "$SMOKE_MODEL")"
  [[ -z "$SMOKE_BODY" || -f "$SMOKE_BODY" ]] || die "smoke body not found: $SMOKE_BODY"
fi

# ------------------------------------------------------------------------------ git, tags --
git_in() { git -C "$CONTEXT" "$@"; }
GIT_COMMIT="$(git_in rev-parse HEAD 2>/dev/null)" || die "$CONTEXT is not a git checkout with a commit"
SHORT_COMMIT="$(git_in rev-parse --short=12 HEAD)"
GIT_BRANCH="${GIT_BRANCH:-$(git_in rev-parse --abbrev-ref HEAD)}"
if [[ "$GIT_BRANCH" == HEAD ]]; then  # detached (CI checkouts): take the CI's branch name
  GIT_BRANCH="${GITHUB_HEAD_REF:-${GITHUB_REF_NAME:-${CI_COMMIT_REF_NAME:-detached}}}"
fi
BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
VERSION="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$CONTEXT/pyproject.toml" | head -1)"
VERSION="${VERSION:-0.0.0}"
SOURCE_URL="${SOURCE_URL:-$(git_in remote get-url origin 2>/dev/null || true)}"
case "$SOURCE_URL" in  # only a public https URL (never one with credentials in it) becomes a label
  https://*@*|"") SOURCE_URL="" ;;
  git@github.com:*) SOURCE_URL="https://github.com/${SOURCE_URL#git@github.com:}"; SOURCE_URL="${SOURCE_URL%.git}" ;;
  https://*) SOURCE_URL="${SOURCE_URL%.git}" ;;
  *) SOURCE_URL="" ;;
esac
if [[ -n "$(git_in status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  say "warning: uncommitted changes: the image will not be exactly commit $SHORT_COMMIT"
fi
# Tag-safe branch: [A-Za-z0-9_.-] only, no leading '.' or '-', and the whole tag <= 128 chars.
SAFE_BRANCH="$(printf '%s' "$GIT_BRANCH" | tr -c 'A-Za-z0-9_.-' '-' | sed 's/^[.-]*//' | cut -c1-100)"
SAFE_BRANCH="${SAFE_BRANCH:-branch}"
TAGS=(latest "$SHORT_COMMIT" "${SAFE_BRANCH}-${SHORT_COMMIT}")
LOCAL_IMAGE="${REPOSITORY##*/}:${SHORT_COMMIT}"

aws_ecr() {  # the AWS CLI with region and optional endpoint override
  local endpoint=()
  [[ -n "$ECR_ENDPOINT_URL" ]] && endpoint=(--endpoint-url "$ECR_ENDPOINT_URL")
  "$AWS_CLI" --region "$REGION" "${endpoint[@]}" "$@"
}

if [[ -z "$REGISTRY" ]]; then
  if [[ -z "$ACCOUNT_ID" ]]; then
    if [[ $DRY_RUN -eq 1 ]] && ! command -v "$AWS_CLI" >/dev/null; then
      ACCOUNT_ID="<account-id>"
    else
      ACCOUNT_ID="$(aws_ecr sts get-caller-identity --query Account --output text)" \
        || die "cannot read the AWS account id (credentials?); pass --account-id"
    fi
  fi
  REGISTRY="${ACCOUNT_ID}.dkr.ecr.${REGION}.amazonaws.com"
fi
URIS=()
for tag in "${TAGS[@]}"; do URIS+=("$REGISTRY/$REPOSITORY:$tag"); done

build_cmd=("$DOCKER" build --pull=false -t "$LOCAL_IMAGE"
  --build-arg "GIT_COMMIT=$GIT_COMMIT" --build-arg "GIT_BRANCH=$GIT_BRANCH"
  --build-arg "BUILD_DATE=$BUILD_DATE" --build-arg "VERSION=$VERSION")
[[ -n "$SOURCE_URL" ]] && build_cmd+=(--build-arg "SOURCE_URL=$SOURCE_URL")
[[ -n "$BASE_IMAGE" ]] && build_cmd+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
[[ -n "$BUILD_SECRET" ]] && build_cmd+=(--secret "$BUILD_SECRET")
[[ -n "$NETWORK" ]] && build_cmd+=(--network "$NETWORK")
[[ "$TARGET" == train ]] && build_cmd+=(--target train)
build_cmd+=("$CONTEXT")
# The training image's smoke test: its stack imports (LightGBM's OpenMP, Arrow, the compiled loops) and the
# entrypoint answers, read-only, no network, no capabilities.
# shellcheck disable=SC2054  # the commas are tmpfs mount options
train_smoke=("$DOCKER" run --rm --network none --read-only --cap-drop ALL --security-opt no-new-privileges
  --tmpfs /tmp:rw,nosuid,nodev,size=64m)

encryption=(--encryption-configuration encryptionType=AES256)
[[ -n "$KMS_KEY" ]] && encryption=(--encryption-configuration "encryptionType=KMS,kmsKey=$KMS_KEY")

if [[ $DRY_RUN -eq 1 ]]; then
  echo "Plan (dry run; nothing is built or pushed):"
  echo "  commit $GIT_COMMIT  branch $GIT_BRANCH  version $VERSION  date $BUILD_DATE"
  echo "  1. DOCKER_BUILDKIT=1 ${build_cmd[*]}"
  if [[ $SMOKE -eq 1 && "$TARGET" == train ]]; then
    echo "  2. smoke test: ${train_smoke[*]} --entrypoint python $LOCAL_IMAGE -c 'import ...training.train';" \
      "${train_smoke[*]} $LOCAL_IMAGE --help"
  elif [[ $SMOKE -eq 1 ]]; then
    echo "  2. smoke test: $DOCKER run --read-only --cap-drop ALL -v $SMOKE_MODEL:/models/model.tar.gz:ro" \
      "-e MODEL_URI=/models/model.tar.gz $LOCAL_IMAGE; GET /health, /ready; POST /predict"
  else
    echo "  2. smoke test SKIPPED (--skip-smoke)"
  fi
  if [[ $PUSH -eq 1 ]]; then
    echo "  3. ensure ECR repository $REPOSITORY in $REGION${ECR_ENDPOINT_URL:+ (endpoint $ECR_ENDPOINT_URL)}" \
      "(create: scanOnPush=true, ${encryption[1]}, tag mutability MUTABLE)"
    echo "  4. $AWS_CLI ecr get-login-password | $DOCKER login --username AWS --password-stdin $REGISTRY"
    for uri in "${URIS[@]}"; do echo "  5. $DOCKER tag $LOCAL_IMAGE $uri && $DOCKER push $uri"; done
  else
    echo "  3. no push (--no-push)"
  fi
  exit 0
fi

command -v "$DOCKER" >/dev/null || die "container engine client not found: $DOCKER"
if [[ $PUSH -eq 1 ]]; then command -v "$AWS_CLI" >/dev/null || die "AWS CLI not found: $AWS_CLI"; fi

# ----------------------------------------------------------------------------------- build --
say "building $LOCAL_IMAGE (commit $SHORT_COMMIT, branch $GIT_BRANCH)"
DOCKER_BUILDKIT=1 "${build_cmd[@]}" >&2

# ------------------------------------------------------------------------------ smoke test --
SMOKE_CONTAINER=""
SMOKE_DIR=""
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  [[ -n "$SMOKE_CONTAINER" ]] && "$DOCKER" rm -f "$SMOKE_CONTAINER" >/dev/null 2>&1
  [[ -n "$SMOKE_DIR" ]] && rm -rf "$SMOKE_DIR"
  return 0
}
trap cleanup EXIT

smoke_fail() {
  say "SMOKE TEST FAILED: $*"
  if [[ -n "$SMOKE_CONTAINER" ]]; then
    say "container log tail:"; "$DOCKER" logs --tail 30 "$SMOKE_CONTAINER" >&2 2>&1 || true
  fi
  die "aborting: nothing was pushed"
}

if [[ $SMOKE -eq 1 && "$TARGET" == train ]]; then
  say "smoke test: the training stack imports and \`train --help\` answers"
  "${train_smoke[@]}" --entrypoint python "$LOCAL_IMAGE" -c \
    "import lightgbm, sklearn, pyarrow.fs, retail_prediction.training.train" >&2 || smoke_fail "training stack import"
  "${train_smoke[@]}" "$LOCAL_IMAGE" --help >/dev/null || smoke_fail "retail-prediction train --help"
  say "smoke test passed"
elif [[ $SMOKE -eq 1 ]]; then
  command -v curl >/dev/null || die "curl is needed for the smoke test"
  SMOKE_DIR="$(mktemp -d)"
  SMOKE_CONTAINER="build-push-smoke-$$"
  run_net=()
  if [[ "$NETWORK" == host ]]; then
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    run_net=(--network host -e "PORT=$port" -e HOST=127.0.0.1)
  else
    [[ -n "$NETWORK" ]] && run_net=(--network "$NETWORK")
    run_net+=(-p 127.0.0.1::8000)
  fi
  say "smoke test: starting $SMOKE_CONTAINER"
  "$DOCKER" run -d --name "$SMOKE_CONTAINER" "${run_net[@]}" --read-only --cap-drop ALL \
    --security-opt no-new-privileges --tmpfs /tmp:rw,nosuid,nodev,size=512m \
    -v "$SMOKE_MODEL:/models/model.tar.gz:ro" -e MODEL_URI=/models/model.tar.gz \
    "$LOCAL_IMAGE" >/dev/null || smoke_fail "container did not start"
  if [[ "$NETWORK" != host ]]; then
    port="$("$DOCKER" port "$SMOKE_CONTAINER" 8000/tcp | head -1 | sed 's/.*://')"
  fi
  base="http://127.0.0.1:$port"
  deadline=$((SECONDS + SMOKE_TIMEOUT))
  ready=0
  while [[ $SECONDS -lt $deadline ]]; do
    [[ "$("$DOCKER" inspect -f '{{.State.Running}}' "$SMOKE_CONTAINER")" == true ]] || smoke_fail "container exited"
    if curl -sf --max-time 5 -o /dev/null "$base/health" && curl -sf --max-time 5 -o /dev/null "$base/ready"; then
      ready=1; break
    fi
    sleep 1
  done
  [[ $ready -eq 1 ]] || smoke_fail "/health and /ready not both 200 within ${SMOKE_TIMEOUT}s"
  body="$SMOKE_BODY"
  if [[ -z "$body" ]]; then
    body="$SMOKE_DIR/body.json"
    curl -sf --max-time 10 "$base/openapi.json" | python3 "$REPO_ROOT/scripts/openapi_example.py" >"$body" || smoke_fail "no /predict example in /openapi.json: pass --smoke-body FILE"
  fi
  code="$(curl -s --max-time 30 -o "$SMOKE_DIR/predict.json" -w '%{http_code}' \
    -H 'Content-Type: application/json' --data-binary "@$body" "$base/predict")" || true
  [[ "$code" == 200 ]] || smoke_fail "POST /predict answered HTTP $code: $(head -c 300 "$SMOKE_DIR/predict.json" 2>/dev/null)"
  say "smoke test passed: /health, /ready, POST /predict -> $(head -c 200 "$SMOKE_DIR/predict.json")"
  "$DOCKER" rm -f "$SMOKE_CONTAINER" >/dev/null 2>&1 || true
  SMOKE_CONTAINER=""
else
  say "warning: smoke test skipped (--skip-smoke)"
fi

if [[ $PUSH -eq 0 ]]; then
  say "--no-push: built and tested $LOCAL_IMAGE"
  exit 0
fi

# ------------------------------------------------------------------------------------- ECR --
if aws_ecr ecr describe-repositories --repository-names "$REPOSITORY" >/dev/null 2>&1; then
  say "ECR repository $REPOSITORY exists"
else
  say "creating ECR repository $REPOSITORY (scan on push, ${encryption[1]})"
  aws_ecr ecr create-repository --repository-name "$REPOSITORY" \
    --image-scanning-configuration scanOnPush=true "${encryption[@]}" \
    --image-tag-mutability MUTABLE >/dev/null
fi

say "logging in to $REGISTRY"
aws_ecr ecr get-login-password | "$DOCKER" login --username AWS --password-stdin "$REGISTRY" >&2

for uri in "${URIS[@]}"; do
  "$DOCKER" tag "$LOCAL_IMAGE" "$uri"
  say "pushing $uri"
  "$DOCKER" push "$uri" >&2
done

digest="$("$DOCKER" image inspect -f '{{join .RepoDigests " "}}' "${URIS[0]}" 2>/dev/null || true)"
for uri in "${URIS[@]}"; do echo "IMAGE_URI=$uri"; done
[[ -n "$digest" ]] && echo "IMAGE_DIGESTS=$digest"
exit 0
