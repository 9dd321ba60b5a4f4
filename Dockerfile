# One image for every component: the entrypoint `ollama-fleet` runs
#   ollama-fleet balancer   (the load balancer, port 11434)
#   ollama-fleet operator   (the ModelPool operator)
#   ollama-fleet emulate    (emulated Ollama nodes, for tests and demos)
#
# Build:   docker build -t ollama-fleet:0.1.0 .
#          docker build --build-arg BASE_IMAGE=my-registry/python:3.13-slim -t ollama-fleet .
# The base image is a build argument: any Debian-like image with python3 (>= 3.11) and
# its venv module, e.g. python:3.13-slim-bookworm, or a debootstrap'ed bookworm with
# python3 and python3-venv (what the test suite builds when no registry is reachable).
# Python 3.13 by default: of the current Pythons it measured cheaper per request than 3.12
# (docs/benchmarks.md, "Python versions"); every locked package has cp311-cp313 wheels.
# Versions: exactly the lock's runtime set, requirements/runtime.txt (exported from uv.lock by
# `bash .ci/lock`, with hashes); tests/chart/test_image.py compares the image with it.
ARG BASE_IMAGE=python:3.13-slim-bookworm

# ---------------------------------------------------------------------------- build stage
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/ollama-fleet
# Dependencies first (the lock's exact versions, every file checked against its sha256):
# this layer is cached until the lock changes.
COPY requirements/runtime.txt /src/requirements/runtime.txt
RUN /opt/ollama-fleet/bin/pip install --no-deps --only-binary=:all: --require-hashes \
        -r /src/requirements/runtime.txt
COPY pyproject.toml README.md /src/
COPY kernel /src/kernel
COPY balancer /src/balancer
COPY emulator /src/emulator
COPY operator /src/operator
COPY cli /src/cli
# --no-deps: everything it needs is in the lock; the install fails the build if not.
RUN /opt/ollama-fleet/bin/pip install --no-deps /src \
    && /opt/ollama-fleet/bin/pip check \
    && /opt/ollama-fleet/bin/python -m compileall -q /opt/ollama-fleet/lib \
    && /opt/ollama-fleet/bin/pip uninstall -y -q pip

# -------------------------------------------------------------------------- runtime stage
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="ollama-fleet" \
      org.opencontainers.image.description="Load balancer, operator and emulator for fleets of Ollama servers" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/ollama-fleet /opt/ollama-fleet
ENV PATH=/opt/ollama-fleet/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    OLLAMA_FLEET_HOST=0.0.0.0
# Non-root, numeric (Kubernetes runAsNonRoot can verify it); the root filesystem may be
# read-only: only /tmp needs to be writable.
USER 10001:10001
EXPOSE 11434
ENTRYPOINT ["ollama-fleet"]
CMD ["--help"]
