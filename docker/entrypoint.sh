#!/bin/sh
# The image's command: `serve` (what SageMaker runs: `docker run IMAGE serve`) starts the server
# on the model in /opt/ml/model; any other command runs as given (`docker run -it IMAGE bash`).
# Environment variables (OPTION_*, SERVING_*, HF_MODEL_ID, SAGEMAKER_*, TGI-style names) pass
# through untouched: serve's config layer maps them onto serving.properties keys.
set -e
if [ "$#" -eq 0 ] || [ "$1" = "serve" ]; then
  [ "$#" -gt 0 ] && shift
  model_dir="${SERVE_MODEL_DIR:-/opt/ml/model}"
  # Nothing mounted and no model id given: serve the model baked into the image, if any.
  if [ -z "${HF_MODEL_ID}${OPTION_MODEL_ID}" ] && [ -z "$(ls -A "$model_dir" 2>/dev/null)" ] \
     && [ -f "${SERVE_EMBEDDED_MODEL_DIR}/config.json" ]; then
    echo "entrypoint: $model_dir is empty: serving the embedded model in $SERVE_EMBEDDED_MODEL_DIR" >&2
    model_dir="$SERVE_EMBEDDED_MODEL_DIR"
  fi
  exec serve --model-dir "$model_dir" "$@"
fi
exec "$@"
