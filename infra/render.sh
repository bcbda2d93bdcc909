#!/usr/bin/env bash
# Render an infra template to stdout: every ${VRSEG_NAME} placeholder in the file is replaced by the
# environment variable of that name; nothing else is touched, so shell variables such as $RAY_HEAD_IP in the
# cluster-launcher commands stay as they are.
#   VRSEG_IMAGE=... infra/render.sh infra/kuberay/raycluster.yaml | kubectl apply -f -
# Refused, with a message naming the variable (exit status 2), before anything is printed:
#   - a variable that is not exported, or is empty (only VRSEG_EXTRA_OVERRIDES may be empty);
#   - VRSEG_*_WORKERS that is not a positive integer, VRSEG_DEADLINE that is not a `timeout` duration (72h);
#   - VRSEG_*_CONFIG that is not an absolute path (/opt/vrseg/configs/...) or a URI (s3://...);
#   - a rendered Kubernetes name that KubeRay rejects: not a DNS-1035 label (lower case letters, digits and
#     '-', starting with a letter), or longer than 47 characters for a RayJob, 53 for a RayCluster.
set -euo pipefail
template=${1:?usage: infra/render.sh TEMPLATE}
MAY_BE_EMPTY=" VRSEG_EXTRA_OVERRIDES "

fail() {
  echo "render.sh: $template: $*" >&2
  exit 2
}

check_value() {  # name value
  local name=$1 value=$2
  if [ -z "$value" ] && [[ $MAY_BE_EMPTY != *" $name "* ]]; then
    fail "$name is empty (see infra/README.md)"
  fi
  case $name in
    *_WORKERS) [[ $value =~ ^[1-9][0-9]*$ ]] || fail "$name must be a positive integer, got '$value'" ;;
    VRSEG_DEADLINE) [[ $value =~ ^[1-9][0-9]*[smhd]$ ]] ||
      fail "$name must be a duration such as 72h, got '$value'" ;;
    *_CONFIG) [[ $value == /* || $value =~ ^[a-z][a-z0-9+.-]*:// ]] ||
      fail "$name must be an absolute path (/opt/vrseg/configs/...) or a URI, got '$value'" ;;
  esac
}

check_name() {  # rendered template text
  local kind name limit
  kind=$(sed -n 's/^kind: *//p' <<<"$1" | head -n 1)
  case $kind in
    RayJob) limit=47 ;;
    RayCluster) limit=53 ;;
    *) return 0 ;;
  esac
  name=$(awk '/^metadata:/ {m = 1; next} m && /^  name:/ {print $2; exit} /^[^ #]/ {m = 0}' <<<"$1")
  [[ $name =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
    fail "$kind name '$name' must be lower case letters, digits and '-', starting with a letter" \
      "(check VRSEG_JOB_NAME)"
  [ ${#name} -le $limit ] ||
    fail "$kind name '$name' has ${#name} characters; KubeRay allows $limit (shorten VRSEG_JOB_NAME)"
}

names=$(grep -o '\${VRSEG_[A-Z0-9_]*}' "$template" | tr -d '${}' | sort -u || true)
missing=()
for name in $names; do
  printenv "$name" >/dev/null || missing+=("$name")   # exported (envsubst reads the environment)
done
[ ${#missing[@]} -eq 0 ] || fail "needs ${missing[*]} (see infra/README.md)"
shell_format=""
for name in $names; do
  check_value "$name" "$(printenv "$name")"
  shell_format+="\${$name} "
done
rendered=$(envsubst "$shell_format" < "$template")
check_name "$rendered"
printf '%s\n' "$rendered"
