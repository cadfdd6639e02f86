#!/usr/bin/env bash
# bulk developer entry point: installs everything bulk needs on Debian 12, then
#   dev.sh demo   runs the self-contained demo (no real NIC needed)
#   dev.sh test   runs every check: ruff, mypy, ansible-lint, yamllint, pytest
#                 (unit, integration with network namespaces, faults and fuzz,
#                 and the Molecule VM scenario in tests/vm, about 5 minutes
#                 under TCG emulation: docs/molecule.md); BULK_VM=0 leaves the
#                 VM scenario out
#   dev.sh install  only installs (apt packages + virtualenv in .venv)
# Idempotent: a second run skips what is already installed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

if [ "$(id -u)" -ne 0 ]; then
    # Capture, network namespaces and the VM need root.
    exec sudo -E bash "$0" "$@"
fi

APT_PACKAGES=(
    python3 python3-venv python3-dev gcc libpcap-dev
    tcpdump tcpslice tcpflow tcpreplay wireshark-common zstd
    iproute2 ethtool procps psmisc
    qemu-system-x86 qemu-utils debootstrap e2fsprogs xfsprogs lvm2 openssh-client
    openssh-server busybox curl
    libndpi-bin netsniff-ng vsftpd
)

log() { printf '\n== %s\n' "$*" >&2; }

install_apt() {
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

install_venv() {
    local stamp=.venv/.bulk-installed
    if [ ! -x .venv/bin/python ]; then
        log "creating virtualenv .venv"
        python3 -m venv .venv
    fi
    # Reinstalled when the dependencies or the C accelerators (csrc/) changed.
    local newer
    newer=$(find pyproject.toml setup.py csrc -newer "$stamp" 2>/dev/null | head -n 1 || true)
    if [ ! -f "$stamp" ] || [ -n "$newer" ]; then
        log "pip install -e .[dev,deploy]"
        .venv/bin/python -m pip install -q --upgrade pip
        .venv/bin/python -m pip install -q -e '.[dev,deploy]'
        touch "$stamp"
    fi
}

run_tests() {
    local py=.venv/bin
    log "ruff"
    "$py/ruff" check bulk tests bench
    "$py/ruff" format --check bulk tests bench
    log "mypy"
    "$py/mypy"
    log "pytest"
    set +e
    local select=()
    [ "${BULK_VM:-1}" = 0 ] && select=(-m "not vm")
    # The C accelerators (csrc/) must have been built: no silent Python fallback.
    export BULK_REQUIRE_NATIVE=1
    "$py/pytest" -p no:cacheprovider "${select[@]}" "$@"
    local rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then
        echo "pytest collected no tests: that is a failure" >&2
        return 1
    fi
    return "$rc"
}

cmd=${1:-test}
shift || true
case "$cmd" in
    install) install_apt; install_venv ;;
    demo) install_apt; install_venv; exec bash scripts/demo.sh "$@" ;;
    test) install_apt; install_venv; run_tests "$@" ;;
    *) echo "usage: $0 demo|test|install [pytest args]" >&2; exit 2 ;;
esac
