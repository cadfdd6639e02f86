#!/usr/bin/env bash
# The self-contained demo: a sensor in miniature, no real NIC and no network.
#
# Two network namespaces joined by a veth pair (made here, no addresses, IPv6
# off so the link is quiet) stand in for a tap and a sensor NIC. bulk capture
# records one end with rotation while tcpreplay plays bundled real traces into
# the other; then the archive is rotated, compressed and questioned offline.
# Run by `scripts/dev.sh demo` after installation, as root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PWD/.venv/bin:$PATH"
out=${BULK_DEMO_DIR:-$PWD/demo-out}
traces=$out/traces
tag=$$
tap_ns=bulkdemoT$tag cap_ns=bulkdemoC$tag tap_dev=bdt$tag cap_dev=bdc$tag
# Real Ethernet traces: ssh on port 80 (a backdoor), http on 5432, an FTP
# session, IRC with a DCC transfer, telnet.
replay=(tests/data/ssh-on-port-80.pcap tests/data/http-on-port-5432.pcap
        tests/data/zeek-ftp-retr.pcap tests/data/irc-dcc-send.pcapng
        tests/data/suricata-telnet.pcap tests/data/zeek-http-get.pcap)

capture_pid=
cleanup() {
    if [ -n "$capture_pid" ] && kill -0 "$capture_pid" 2>/dev/null; then
        kill -TERM "$capture_pid" 2>/dev/null || true
        wait "$capture_pid" 2>/dev/null || true
    fi
    ip netns del "$tap_ns" 2>/dev/null || true
    ip netns del "$cap_ns" 2>/dev/null || true
}
trap cleanup EXIT

say() { printf '\n### %s\n' "$*"; }
step() { printf '\n### %s\n$ %s\n' "$1" "${*:2}"; "${@:2}"; }

rm -rf "$out"
mkdir -p "$traces"

say "A quiet link: namespaces $tap_ns and $cap_ns joined by veth $tap_dev <-> $cap_dev"
ip netns add "$tap_ns"
ip netns add "$cap_ns"
ip link add "$tap_dev" netns "$tap_ns" type veth peer name "$cap_dev" netns "$cap_ns"
for pair in "$tap_ns:$tap_dev" "$cap_ns:$cap_dev"; do
    ns=${pair%%:*} dev=${pair#*:}
    ip netns exec "$ns" sysctl -qw "net.ipv6.conf.$dev.disable_ipv6=1"
    ip netns exec "$ns" ip link set "$dev" mtu 9000 up
done

say "bulk capture on $cap_dev, a new file every 256 KiB"
ip netns exec "$cap_ns" bulk capture -i "$cap_dev" --dir "$traces" --rotate-bytes 256K \
    >"$out/capture.log" 2>&1 &
capture_pid=$!
for _ in $(seq 100); do
    [ -e "$traces/.bulk/capture-$cap_dev.w0.json" ] && break
    sleep 0.1
done

step "Replay real traffic into the tap side (tcpreplay, 2000 packets/s)" \
    ip netns exec "$tap_ns" tcpreplay -q --pps 2000 -i "$tap_dev" "${replay[@]}"
sleep 3  # let the capture's live figures catch up

step "Capture status while it runs" bulk status --dir "$traces"
step "Rotate now (what cron runs every hour)" bulk rotate -i "$cap_dev" --dir "$traces"
sleep 1

say "Stop the capture (SIGTERM: drain, close, finalise)"
kill -TERM "$capture_pid"
wait "$capture_pid" || true
capture_pid=
tail -n 5 "$out/capture.log"

sent=$(for f in "${replay[@]}"; do tcpdump -r "$f" -nn 2>/dev/null | wc -l; done | awk '{s += $1} END {print s}')
got=$(bulk info --json "$traces" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"]["packets"])')
say "Packets sent: $sent; packets in the archive: $got"
[ "$sent" -eq "$got" ] || { echo "demo: packets were lost" >&2; exit 1; }

step "Compress every closed trace (seekable zstd) within a 90% disk budget" \
    bulk compress --dir "$traces" --older-than 0 --max-disk 90%
step "The archive now" bulk info "$traces"

step "A 2-second window from the compressed archive (tcpslice-style +N spec)" \
    bulk slice +0 +2 --dir "$traces" -w "$out/window.pcap"
step "What the window holds" bulk info "$out/window.pcap"
step "BPF extraction across the archive: the FTP server" \
    bulk extract --dir "$traces" -w "$out/ftp.pcap" 'host 141.142.192.162 and tcp'
tcpdump -nn -r "$out/ftp.pcap" 2>/dev/null | head -5 || true
step "Services on non-standard ports (by payload, not by port)" bulk backdoor --dir "$traces"
step "Each connection's bytes, for the http server on 5432" \
    bulk contents --dir "$traces" -f 'tcp port 5432' -o "$out/contents"
ls "$out/contents" | head || true
echo
echo "demo finished; everything is under $out"
