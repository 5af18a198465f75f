# The engine image: `dql-trading` with its dependencies, run as a non-root user.
#   GPU hosts (default):  docker build -t dqlctl-engine .
#   CPU only:             docker build --build-arg VARIANT=cpu -t dqlctl-engine:cpu .
# `dqlctl image build` runs this with whatever engine is present (docker or podman).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ARG VARIANT=cuda
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/dqlctl

# Dependencies first: this layer is reused until pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN if [ "$VARIANT" = "cpu" ]; then \
        pip install --index-url https://download.pytorch.org/whl/cpu 'torch==2.13.*'; \
    else \
        pip install 'torch==2.13.*'; \
    fi \
 && pip install 'numpy>=1.26' 'pandas>=2.1' 'pyarrow>=15' 'gymnasium>=1.0' \
        'matplotlib>=3.8' 'pyyaml>=6' 'boto3>=1.34' 'google-cloud-storage>=2.16' \
        'azure-storage-blob>=12.20' 'azure-identity>=1.16'

# Then the code (small, changes often).
COPY engine ./engine
COPY providers ./providers
COPY dqlctl ./dqlctl
COPY data ./data
COPY dql_trading.py ./
RUN pip install --no-deps . \
 && useradd --create-home --uid 1000 dql \
 && mkdir -p /results /data \
 && chown dql:dql /results

USER 1000:1000
WORKDIR /home/dql
ENTRYPOINT ["dql-trading"]
CMD ["--help"]
