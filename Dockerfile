# GPU training image for kp2d: the official PyTorch CUDA runtime image with kp2d installed from this checkout.
# Build and run: docs/container.md. The base tag is pinned; --build-arg BASE=... picks another PyTorch/CUDA.
ARG BASE=pytorch/pytorch:2.8.0-cuda12.9-cudnn9-runtime
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /tmp/kp2d-src
COPY pyproject.toml README.md ./
COPY src ./src
# The base image's torch satisfies kp2d's requirement, so pip adds only the light dependencies (no extras).
RUN pip install --no-cache-dir . \
    && rm -rf /tmp/kp2d-src \
    && useradd --create-home --uid 1000 --shell /usr/sbin/nologin kp2d \
    && mkdir -p /work/runs \
    && chown -R kp2d:kp2d /work

USER 1000:1000
WORKDIR /work
ENTRYPOINT ["kp2d"]
CMD ["--help"]
