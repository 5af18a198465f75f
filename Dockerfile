# syntax=docker/dockerfile:1
# The engine image: `dql-trading` in a virtual environment, run as a non-root user.
# Build it with `dqlctl image build` (docker or podman): it assembles the build context, so that
#   --cpu          CPU-only torch (VARIANT=cpu; the GPU build is the default)
#   --base IMAGE   another base (BASE): any Debian-like image with python3 >= 3.11 and venv
#   --wheels DIR   installs from that folder of wheels only (no index: an offline build)
# A plain `docker build .` works too (online: the repository's wheels/ holds no wheel).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ARG VARIANT=cuda
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /opt/dqlctl

# Dependencies first: this layer is reused until pyproject.toml or the wheels change. Its inputs
# are pyproject.toml and the wheels/ folder alone: BuildKit (and recent buildah) key a bind
# mount by its content, as a COPY, so binding the whole context would reinstall torch after any
# edit. README.md and LICENSE (pip needs them only for the package itself) come later. wheels/
# is bound, not copied, so no wheel lands in a layer. C++ headers and the packages' own test
# suites are not needed to run the engine (about 250 MB).
COPY pyproject.toml ./
# $src is a list of pip options (word splitting wanted); versions are pinned by pyproject's ranges
# hadolint ignore=SC2086,DL3013
RUN --mount=type=bind,source=wheels,target=/wheels \
    python3 -m venv /opt/venv \
 && if ls /wheels/*.whl >/dev/null 2>&1; then src="--no-index --find-links /wheels"; \
    elif [ "$VARIANT" = "cpu" ]; then src="--extra-index-url https://download.pytorch.org/whl/cpu"; \
    else src=""; fi \
 && pip install $src 'torch==2.13.*' 'numpy>=1.26' 'pandas>=2.1' 'pyarrow>=15' \
        'gymnasium>=1.0' 'matplotlib>=3.8' 'pyyaml>=6' 'boto3>=1.34' \
        'google-cloud-storage>=2.16' 'azure-storage-blob>=12.20' 'azure-identity>=1.16' \
        'setuptools>=77' \
 && site=$(echo /opt/venv/lib/python3*/site-packages) \
 && rm -rf "$site/torch/include" "$site/torch/test" \
 && find "$site" -depth -type d -name tests -prune -exec rm -rf {} +

# Then the code (small, changes often).
COPY README.md LICENSE ./
COPY engine ./engine
COPY providers ./providers
COPY dqlctl ./dqlctl
COPY data ./data
COPY dql_trading.py ./
RUN pip install --no-deps --no-build-isolation --no-index . \
 && rm -rf build ./*.egg-info \
 && useradd --create-home --uid 1000 dql \
 && mkdir -p /results /data \
 && chown dql:dql /results

USER 1000:1000
WORKDIR /home/dql
ENTRYPOINT ["dql-trading"]
CMD ["--help"]
