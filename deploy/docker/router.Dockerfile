# The router: stateless, any number of replicas behind nginx or a Kubernetes Service.
#   docker build -f deploy/docker/router.Dockerfile -t xero-router .      (from the repository root)
# Configuration comes from the environment: REDIS_URL, ROUTER_<OPTION> (see `python -m router --help`).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# The project's metadata first, so the dependency layer is reused while only code changes.
COPY pyproject.toml README.md ./
COPY contract/ contract/
COPY router/ router/
RUN pip install . \
    && useradd --system --uid 10001 --no-create-home xero

USER 10001
ENV ROUTER_HOST=0.0.0.0 \
    ROUTER_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2)"]
# SIGTERM: stop accepting, let in-flight requests finish (ROUTER_SHUTDOWN_TIMEOUT_S), exit.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "router"]
