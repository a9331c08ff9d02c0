# agentopz-otel with the demo extra (the stack's `demo` service runs the same image).
#
#   docker build -t agentopz-otel .
#   docker run -p 4317:4317 -p 4318:4318 -p 9464:9464 -e TRACE_BACKEND=http://tempo:4317 agentopz-otel
#
# The default config is collector-config/agentopz.yaml (listens on all interfaces, forwards to
# $TRACE_BACKEND); mount your own at /etc/agentopz/agentopz.yaml to change it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY agentopz_otel ./agentopz_otel
# gcc compiles the hot path (setup.py) and leaves with the build; the image runs the extensions.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install ".[demo]" \
    && apt-get purge -y --auto-remove gcc libc6-dev && rm -rf /var/lib/apt/lists/* /src

COPY collector-config/agentopz.yaml /etc/agentopz/agentopz.yaml
RUN useradd --system --uid 10001 --no-create-home agentopz
# Rollout state, the audit log and any persistent queue live in one SQLite file here.
RUN mkdir -p /var/lib/agentopz && chown 10001 /var/lib/agentopz
ENV AGENTOPZ_STORAGE_PATH=/var/lib/agentopz/agentopz.sqlite
USER 10001
WORKDIR /

EXPOSE 4317 4318 9464
ENTRYPOINT ["agentopz-otel"]
CMD ["run", "--config", "/etc/agentopz/agentopz.yaml"]
