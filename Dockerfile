# mailproxy container image: `docker build -t mailproxy .`
#   docker run -p 8000:8000 -p 2525:2525 -v mailproxy-data:/data mailproxy
# tini is PID 1 (signals reach the server, zombies are reaped); without it use `docker run --init`.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY mailproxy ./mailproxy
COPY templates ./templates
COPY static ./static
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[s3]"

FROM python:3.11-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
RUN groupadd --system --gid 10001 mailproxy \
    && useradd --system --uid 10001 --gid mailproxy --home-dir /data --shell /usr/sbin/nologin mailproxy \
    && mkdir -p /data && chown mailproxy:mailproxy /data
ENV GMP_DATA_DIR=/data \
    GMP_HOST=0.0.0.0 \
    GMP_SMTP_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
VOLUME ["/data"]
EXPOSE 8000 2525
USER mailproxy
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('GMP_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["mail-proxy", "serve"]
