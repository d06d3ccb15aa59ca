# RCDM Studio as a Hugging Face Space (sdk: docker, app_port: 7860); README "Run it as a Space".
# Build and run anywhere; the login comes from the environment, never the command line:
#   docker build -t rcdm-studio .
#   read -rs RCDM_STUDIO_AUTH && export RCDM_STUDIO_AUTH     # user:password
#   docker run -p 7860:7860 -v rcdm-data:/data -e RCDM_STUDIO_AUTH rcdm-studio
#
# The base is pinned to one Python release on Debian bookworm. Pin its digest too when
# building with network (`docker buildx imagetools inspect python:3.11.11-slim-bookworm`):
# FROM python:3.11.11-slim-bookworm@sha256:<digest>
FROM python:3.11.11-slim-bookworm

# tini runs as PID 1: it forwards SIGTERM / SIGINT to the studio and reaps orphaned workers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/*

# Spaces run the container as uid 1000 with a writable home.
RUN useradd -m -u 1000 user
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False \
    RCDM_STUDIO_SHARE=public \
    HF_HOME=/home/user/.cache/huggingface
WORKDIR /home/user/app

# 1. The dependencies, from pyproject.toml alone, in layers of their own: editing the source
#    does not reinstall them. The CPU build of PyTorch keeps the image small (no CUDA).
RUN pip install --no-cache-dir "torch>=2.4" "torchvision>=0.19" \
    --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml /home/user/app/
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# 2. The source, installed without touching the dependencies.
COPY --chown=user:user . /home/user/app
RUN pip install --no-cache-dir --no-deps /home/user/app \
    && mkdir -p /home/user/app/projects /data \
    && chown user:user /home/user/app/projects /data

# Projects go to /data/projects when a persistent volume is mounted on /data (Spaces
# "persistent storage"), else to /home/user/app/projects (lost with the container).
USER 1000
EXPOSE 7860
# The health check asks the port the studio listens on ($GRADIO_SERVER_PORT, 7860 by default).
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/' % os.environ.get('GRADIO_SERVER_PORT', '7860'), timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["/home/user/app/scripts/space-start.sh"]
