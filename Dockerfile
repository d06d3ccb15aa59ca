# RCDM Studio as a Hugging Face Space (sdk: docker, app_port: 7860).
# Build and run anywhere: docker build -t rcdm-studio . &&
#   docker run -p 7860:7860 -v rcdm-data:/data -e RCDM_STUDIO_AUTH=me:secret rcdm-studio
FROM python:3.11-slim

# Spaces run the container as uid 1000 with a writable home.
RUN useradd -m -u 1000 user
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False \
    HF_HOME=/home/user/.cache/huggingface
WORKDIR /home/user/app

# CPU build of PyTorch keeps the image small (no CUDA libraries).
RUN pip install --no-cache-dir "torch>=2.4" "torchvision>=0.19" \
    --index-url https://download.pytorch.org/whl/cpu

COPY --chown=user:user . /home/user/app
RUN pip install --no-cache-dir /home/user/app && mkdir -p /home/user/app/projects /data \
    && chown -R user:user /home/user/app /data

# Projects go to /data/projects when a persistent volume is mounted on /data (Spaces
# "persistent storage"), else to /home/user/app/projects (lost with the container).
USER 1000
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=4)"]
CMD ["/home/user/app/scripts/space-start.sh"]
