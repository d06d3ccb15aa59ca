#!/bin/sh
# Start command of the Docker image (Hugging Face Spaces style). Projects live on the
# persistent volume /data when the Space has one (/data/projects), else in the app folder;
# the studio opens the demo project (the digits are imported at its first start).
# Environment: RCDM_STUDIO_PROJECTS (projects folder), RCDM_STUDIO_PROJECT (the project to
# open), RCDM_STUDIO_AUTH (user:password login: a Space secret, or `docker run -e`),
# RCDM_STUDIO_SHARE (public by default in the image: visitors browse, editors sign in),
# RCDM_STUDIO_EDITORS (Hugging Face users that are editors), GRADIO_SERVER_NAME /
# GRADIO_SERVER_PORT. The login is taken from the environment only: on the command line
# every process (and `docker inspect`) could read it.
# `exec` makes the studio tini's child (PID 1 without tini), so SIGTERM reaches it.
set -e
for arg in "$@"; do
  case "$arg" in
    --au*)  # --auth and the abbreviations argparse accepts
      echo "space-start.sh: set the login in RCDM_STUDIO_AUTH (a Space secret, or" \
           "docker run -e RCDM_STUDIO_AUTH), not on the command line" >&2
      exit 2 ;;
  esac
done
if [ -z "${RCDM_STUDIO_PROJECTS:-}" ]; then
  if [ -d /data ] && [ -w /data ]; then
    RCDM_STUDIO_PROJECTS=/data/projects
  else
    RCDM_STUDIO_PROJECTS="${HOME:-/tmp}/app/projects"
  fi
fi
if [ -z "${RCDM_STUDIO_HOME:-}" ] && [ -d /data ] && [ -w /data ]; then
  RCDM_STUDIO_HOME=/data/.rcdm-studio  # the recent projects list survives restarts
  export RCDM_STUDIO_HOME
fi
export RCDM_STUDIO_PROJECTS
project="${RCDM_STUDIO_PROJECT:-$RCDM_STUDIO_PROJECTS/demo}"
mkdir -p "$RCDM_STUDIO_PROJECTS" "$(dirname "$project")"
exec rcdm-studio --project "$project" --host "${GRADIO_SERVER_NAME:-0.0.0.0}" \
  --port "${GRADIO_SERVER_PORT:-7860}" --no-browser --demo "$@"
