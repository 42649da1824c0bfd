# deferred-diffusion for an NVIDIA host (needs the NVIDIA Container Toolkit).
# PyTorch's Linux wheels from PyPI bundle their CUDA libraries, so a plain Python base
# image is enough; the host provides only the driver.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The server runs as this user; match it to the owner of the bind-mounted folders
# (docker compose build --build-arg UID=$(id -u) --build-arg GID=$(id -g)).
ARG UID=1000
ARG GID=1000
RUN groupadd --gid "${GID}" dd \
    && useradd --uid "${UID}" --gid "${GID}" --create-home --shell /usr/sbin/nologin dd \
    && mkdir -p /data /models /hf-cache \
    && chown dd:dd /data /models /hf-cache

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY api/ api/

ENV DD_HOST=0.0.0.0 \
    DD_PORT=5000 \
    DD_DATA_DIR=/data \
    DD_MODELS_DIR=/models \
    HF_HOME=/hf-cache

USER dd
EXPOSE 5000

HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('DD_PORT', '5000'), timeout=5)"

CMD ["python", "-m", "api", "serve"]
