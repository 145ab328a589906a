# syntax=docker/dockerfile:1
# The export Job's image (chart value exportJob.image): `make export` with torch on the CPU. The gateway image
# carries no torch, so exporting needs this one. Build from the repository root:
#   docker build -f deploy/export.Dockerfile -t reranker-export:0.1.0 .
FROM python:3.11-slim
ARG TORCH_SPEC="torch==2.5.1"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 VENV=/opt/venv HF_HOME=/tmp/huggingface
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md Makefile ./
COPY gateway ./gateway
COPY export ./export
# The Makefile's `install` step is done here (and marked done): `make export` only exports.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu "$TORCH_SPEC" \
    && /opt/venv/bin/pip install ".[export]" \
    && touch /opt/venv/.installed
RUN useradd --uid 10001 --user-group --no-create-home app
USER app
ENTRYPOINT ["make", "VENV=/opt/venv"]
CMD ["export", "REPO=/repository/model_repository"]
