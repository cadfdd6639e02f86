#!/usr/bin/env bash
# The self-contained demo: needs no real NIC and no network. Run by
# `scripts/dev.sh demo` after installation, as root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PWD/.venv/bin:$PATH"
out=${BULK_DEMO_DIR:-$PWD/demo-out}
rm -rf "$out"
mkdir -p "$out"

step() { printf '\n### %s\n$ %s\n' "$1" "${*:2}"; "${@:2}"; }

step "What some bundled real traces hold, with a total" \
    bulk info tests/data/ssh-on-port-80.pcap tests/data/zeek-http-get.pcap tests/data/irc-dcc-send.pcapng
step "One trace, as JSON for machines" bulk info --json tests/data/ssh-on-port-80.pcap
echo
echo "demo finished: output in $out"
