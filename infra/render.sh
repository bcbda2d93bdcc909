#!/usr/bin/env bash
# Render an infra template to stdout: every ${VRSEG_NAME} placeholder in the file is replaced by the
# environment variable of that name, which must be exported (it may be empty); nothing else is touched, so
# shell variables such as $RAY_HEAD_IP in the cluster-launcher commands stay as they are.
#   VRSEG_IMAGE=... infra/render.sh infra/kuberay/raycluster.yaml | kubectl apply -f -
set -euo pipefail
template=${1:?usage: infra/render.sh TEMPLATE}
names=$(grep -o '\${VRSEG_[A-Z0-9_]*}' "$template" | tr -d '${}' | sort -u || true)
missing=()
for name in $names; do
  printenv "$name" >/dev/null || missing+=("$name")   # exported (envsubst reads the environment)
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "render.sh: $template needs ${missing[*]} (see infra/README.md)" >&2
  exit 2
fi
shell_format=""
for name in $names; do shell_format+="\${$name} "; done
envsubst "$shell_format" < "$template"
