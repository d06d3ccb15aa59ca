#!/bin/sh
# Start command of the Docker image (Hugging Face Spaces style): the project lives on the
# persistent volume /data when the Space has one, else in the app folder.
set -e
if [ -n "${RCDM_STUDIO_PROJECT:-}" ]; then
  project="$RCDM_STUDIO_PROJECT"
elif [ -d /data ] && [ -w /data ]; then
  project=/data/rcdm-studio
else
  project="${HOME:-/tmp}/app/projects/rcdm-studio"
fi
mkdir -p "$(dirname "$project")"
exec rcdm-studio --project "$project" --host "${GRADIO_SERVER_NAME:-0.0.0.0}" \
  --port "${GRADIO_SERVER_PORT:-7860}" --no-browser --demo "$@"
