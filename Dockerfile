# Retail Prediction API: the serving image (runtime dependencies only, no training stack, no model), and the
# training image as a separate target (`--target train`: `retail-prediction train`, for deploy/k8s/training).
#
#   docker build -t retail-prediction-api .                          # serving (the last stage: the default)
#   docker build --target train -t retail-prediction-train .         # training (requirements/train.lock)
#   docker run --rm -p 8000:8000 --read-only --tmpfs /tmp --cap-drop ALL \
#     -e MODEL_BUCKET=my-bucket -e MODEL_KEY=models/model.tar.gz retail-prediction-api
#
# Build args: BASE_IMAGE (any Debian-based image with python3 >= 3.11 and venv; CI passes a
# debootstrapped bookworm), BUILD_DATE, GIT_COMMIT, GIT_BRANCH, VERSION, SOURCE_URL.
# Outbound HTTPS behind a TLS-inspecting proxy: pass its CA bundle as a build secret, never a layer:
#   docker build --secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt ...
# Model strategies (docs/deployment.md): S3 download at start (MODEL_BUCKET/MODEL_KEY, default),
# a mounted file or volume (MODEL_URI=/models/model.tar.gz), or baked in by a derived image.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS toolchain

SHELL ["/bin/sh", "-eu", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_NO_INPUT=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /build

RUN python3 -m venv /opt/venv

# 1) A C compiler and Python's headers for the package's compiled featurization loops (Cython). They stay
#    in this stage: the runtime stage copies the venv only. Versions come with the base image's suite.
# hadolint ignore=DL3008
RUN include="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"; \
    set -- gcc libc6-dev; \
    if [ ! -f "$include/Python.h" ]; then set -- "$@" python3-dev; fi; \
    apt-get update \
    && apt-get install -y --no-install-recommends "$@" \
    && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------------------------------------
FROM toolchain AS builder

# 2) Pinned, hash-checked, wheels only: the runtime dependencies, then the build tools (Cython, setuptools).
COPY requirements/runtime.lock requirements/build.lock requirements/
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi; \
    for lock in runtime build; do \
        /opt/venv/bin/pip install --no-cache-dir --require-hashes --no-deps --only-binary=:all: \
            -r "requirements/$lock.lock"; \
    done

# 3) The package itself, built with the tools just installed (no dependencies: they are all in the lock),
#    then the installers and build tools are dropped.
COPY pyproject.toml setup.py README.md ./
COPY src ./src
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -m pip uninstall --yes pip setuptools wheel cython \
    && find /opt/venv -depth -type d -name tests -path '*/site-packages/*/tests' -prune -exec rm -rf {} + \
    && /opt/venv/bin/python -c "import retail_prediction.healthcheck, retail_prediction.api.wire, \
        retail_prediction.features.kernel, retail_prediction.features.explain_kernel"

# ---------------------------------------------------------------------------------------------
# The training stack: train.lock is the runtime lock plus the `train` extra (pip-compile'd against runtime.lock,
# so the shared packages are the same versions), hash-checked, wheels only, like the serving venv.
FROM toolchain AS train-builder

COPY requirements/train.lock requirements/build.lock requirements/
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi; \
    for lock in train build; do \
        /opt/venv/bin/pip install --no-cache-dir --require-hashes --no-deps --only-binary=:all: \
            -r "requirements/$lock.lock"; \
    done
COPY pyproject.toml setup.py README.md ./
COPY src ./src
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -m pip uninstall --yes pip setuptools wheel cython \
    && find /opt/venv -depth -type d -name tests -path '*/site-packages/*/tests' -prune -exec rm -rf {} + \
    && /opt/venv/bin/python -c "import retail_prediction.training.train, lightgbm, sklearn, pyarrow.fs"

# ---------------------------------------------------------------------------------------------
# What both images share: the build's OCI labels and the fixed, unprivileged user.
FROM ${BASE_IMAGE} AS app

ARG BUILD_DATE=unknown
ARG GIT_COMMIT=unknown
ARG GIT_BRANCH=unknown
ARG VERSION=0.1.0
ARG SOURCE_URL=unknown

LABEL org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.ref.name="${GIT_BRANCH}"

# Fixed UID/GID 10001 (matches runAsUser/runAsGroup/fsGroup in deploy/k8s); no home, no shell.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app

# ---------------------------------------------------------------------------------------------
FROM app AS train

ARG BUILD_DATE=unknown
ARG GIT_COMMIT=unknown
ARG GIT_BRANCH=unknown

LABEL org.opencontainers.image.title="retail-prediction-train" \
      org.opencontainers.image.description="Retail Prediction training job (retail-prediction train)"

# LightGBM links the system's OpenMP runtime (libgomp1); nothing else is added to the base.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

COPY --from=train-builder /opt/venv /opt/venv

# Read-only root filesystem: every write (the packed model before its upload, Arrow's and matplotlib's
# scratch) goes to /tmp, an emptyDir in the Job (deploy/k8s/training).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    GIT_COMMIT=${GIT_COMMIT} \
    GIT_BRANCH=${GIT_BRANCH} \
    BUILD_DATE=${BUILD_DATE}

WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["retail-prediction", "train"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------
# The serving image: the last stage, so a plain `docker build .` builds it.
FROM app AS runtime

ARG BUILD_DATE=unknown
ARG GIT_COMMIT=unknown
ARG GIT_BRANCH=unknown

LABEL org.opencontainers.image.title="retail-prediction-api" \
      org.opencontainers.image.description="Retail Prediction API (FastAPI + ONNX Runtime)"

COPY --from=builder /opt/venv /opt/venv

# Build metadata reaches /model/info through the app settings (GIT_COMMIT, GIT_BRANCH, BUILD_DATE).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    MODEL_DIR=/tmp/retail-prediction \
    GIT_COMMIT=${GIT_COMMIT} \
    GIT_BRANCH=${GIT_BRANCH} \
    BUILD_DATE=${BUILD_DATE}

# The root filesystem may be read-only: the only writes go to MODEL_DIR (mount a tmpfs/emptyDir on /tmp).
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "retail_prediction.healthcheck"]
CMD ["retail-prediction", "serve"]
