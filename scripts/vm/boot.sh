#!/bin/bash
# Boot one throw-away test VM from the cached image (scripts/vm/build-image.sh).
#
#   scripts/vm/boot.sh NAME RUN_DIR
#
# RUN_DIR receives everything that belongs to this VM and nothing else:
#   root.qcow2    copy-on-write overlay over the cached image
#   store.qcow2   the second disk (/dev/vdb in the guest), for the trace store
#   id_ed25519    the ssh key made for this run (public half on the kernel line)
#   qemu.pid, console.log, instance.json
# Networks: management over QEMU user networking, ssh forwarded from
# 127.0.0.1:<free port>; capture NIC = second virtio NIC (rx_queue_size=1024)
# on a new host tap device "bulktapN" with no address and IPv6 off, so the
# only traffic on it is what a test injects (tcpreplay -i bulktapN).
# Prints instance.json: {"instance","address","port","user","identity_file",
# "pid","tap","run_dir","console"} once ssh answers.
#
# Environment: BULK_VM_MEM (MiB, 1536), BULK_VM_CPUS (2), BULK_VM_STORE_SIZE (1G),
# BULK_VM_BOOT_TIMEOUT (seconds, 240), BULK_VM_ACCEL (auto|kvm|tcg),
# BULK_VM_CPU (the -cpu model under TCG, max), BULK_VM_SSH_PORT (a free one).
set -euo pipefail

name=${1:?usage: boot.sh NAME RUN_DIR}
run_dir=${2:?usage: boot.sh NAME RUN_DIR}
here=$(cd "$(dirname "$0")" && pwd)
mem=${BULK_VM_MEM:-1536}
cpus=${BULK_VM_CPUS:-2}
store_size=${BULK_VM_STORE_SIZE:-1G}
timeout=${BULK_VM_BOOT_TIMEOUT:-240}
accel=${BULK_VM_ACCEL:-auto}
user=ansible

log() { printf 'boot.sh[%s]: %s\n' "$name" "$*" >&2; }

image=$("$here/build-image.sh")
mkdir -p "$run_dir"
run_dir=$(cd "$run_dir" && pwd)
if [[ -s "$run_dir/qemu.pid" ]] && kill -0 "$(cat "$run_dir/qemu.pid")" 2>/dev/null; then
  log "already running (pid $(cat "$run_dir/qemu.pid")); stop it first with scripts/vm/stop.sh"
  exit 1
fi

rm -f "$run_dir/id_ed25519" "$run_dir/id_ed25519.pub"
ssh-keygen -q -t ed25519 -N '' -C "bulk-vm-$name" -f "$run_dir/id_ed25519"
key_b64=$(base64 -w0 <"$run_dir/id_ed25519.pub")
qemu-img create -q -f qcow2 -F qcow2 -b "$image/root.qcow2" "$run_dir/root.qcow2"
qemu-img create -q -f qcow2 "$run_dir/store.qcow2" "$store_size"

# Capture tap: first free bulktapN ("ip tuntap add" fails if it exists).
tap=""
for n in $(seq 0 63); do
  if ip tuntap add dev "bulktap$n" mode tap 2>/dev/null; then
    tap="bulktap$n"
    break
  fi
done
[[ -n "$tap" ]] || { log "no free bulktapN device name"; exit 1; }
echo "$tap" >"$run_dir/tap"
# No IPv6 (no link-local address, router solicitation or MLD), no IPv4:
# the host itself never sends a packet into the capture NIC.
echo 1 >"/proc/sys/net/ipv6/conf/$tap/disable_ipv6"
ip link set dev "$tap" up

case "$accel" in
  auto) if grep -qwE 'vmx|svm' /proc/cpuinfo && [[ -w /dev/kvm ]]; then accel=kvm; else accel=tcg; fi ;;
  kvm | tcg) ;;
  *) log "BULK_VM_ACCEL must be auto, kvm or tcg"; exit 2 ;;
esac
if [[ "$accel" == kvm ]]; then
  accel_args=(-accel kvm -cpu host)
else
  accel_args=(-accel tcg,thread=multi -cpu "${BULK_VM_CPU:-max}")
fi

# BULK_VM_SSH_PORT pins the forwarded port (inventory/lab expects 2222).
free_port() {
  if [[ -n "${BULK_VM_SSH_PORT:-}" ]]; then echo "$BULK_VM_SSH_PORT"; return; fi
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

started=""
for attempt in 1 2 3; do
  port=$(free_port)
  rm -f "$run_dir/qemu.pid"
  if qemu-system-x86_64 \
      -name "bulk-$name" -nodefaults -machine pc "${accel_args[@]}" -smp "$cpus" -m "$mem" \
      -display none -serial "file:$run_dir/console.log" -monitor none \
      -daemonize -pidfile "$run_dir/qemu.pid" \
      -kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
      -append "root=/dev/vda rw console=ttyS0 quiet mitigations=off bulk_vm.ssh_key=$key_b64" \
      -netdev "user,id=mgmt,hostfwd=tcp:127.0.0.1:$port-:22" \
      -device virtio-net-pci,netdev=mgmt,mac=52:54:00:b0:00:01,addr=0x3 \
      -netdev "tap,id=capture,ifname=$tap,script=no,downscript=no" \
      -device virtio-net-pci,netdev=capture,mac=52:54:00:b0:00:02,rx_queue_size=1024,addr=0x4 \
      -drive "if=none,id=root,file=$run_dir/root.qcow2,format=qcow2,cache=unsafe" \
      -device virtio-blk-pci,drive=root,addr=0x5 \
      -drive "if=none,id=store,file=$run_dir/store.qcow2,format=qcow2,cache=unsafe" \
      -device virtio-blk-pci,drive=store,serial=bulk-store,addr=0x6 \
      -device virtio-rng-pci 2>"$run_dir/qemu.err"; then
    started=yes
    break
  fi
  log "qemu failed to start (attempt $attempt): $(tr '\n' ' ' <"$run_dir/qemu.err")"
done
[[ -n "$started" ]] || { log "giving up"; exit 1; }
pid=$(cat "$run_dir/qemu.pid")

ssh_opts=(-o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
  -o LogLevel=ERROR -o ConnectTimeout=5 -i "$run_dir/id_ed25519" -p "$port")
t0=$SECONDS
until ssh "${ssh_opts[@]}" "$user@127.0.0.1" true 2>/dev/null; do
  if ! kill -0 "$pid" 2>/dev/null; then
    log "qemu exited during boot; console:"; tail -n 30 "$run_dir/console.log" >&2; exit 1
  fi
  if (( SECONDS - t0 > timeout )); then
    log "no ssh after ${timeout}s; console:"; tail -n 30 "$run_dir/console.log" >&2; exit 1
  fi
  sleep 2
done
log "ssh up on 127.0.0.1:$port after $((SECONDS - t0))s ($accel, pid $pid, capture tap $tap)"

python3 - "$name" "$port" "$user" "$run_dir" "$pid" "$tap" >"$run_dir/instance.json" <<'PY'
import json, sys
name, port, user, run_dir, pid, tap = sys.argv[1:]
print(json.dumps({
    "instance": name, "address": "127.0.0.1", "port": int(port), "user": user,
    "identity_file": f"{run_dir}/id_ed25519", "pid": int(pid), "tap": tap,
    "run_dir": run_dir, "console": f"{run_dir}/console.log",
}))
PY
cat "$run_dir/instance.json"
