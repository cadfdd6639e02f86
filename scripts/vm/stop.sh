#!/bin/bash
# Stop a VM started by scripts/vm/boot.sh and remove what it made:
#   scripts/vm/stop.sh RUN_DIR
# Kills QEMU by its pid file (only if that pid is still a QEMU), deletes the
# capture tap, the overlay, the store disk and the run's ssh key. Safe to run
# twice or on a half-created VM.
set -uo pipefail

run_dir=${1:?usage: stop.sh RUN_DIR}
[[ -d "$run_dir" ]] || exit 0

if [[ -s "$run_dir/qemu.pid" ]]; then
  pid=$(cat "$run_dir/qemu.pid")
  if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == qemu-system-* ]]; then
    kill -TERM "$pid"
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
fi
if [[ -s "$run_dir/tap" ]]; then
  tap=$(cat "$run_dir/tap")
  ip link show dev "$tap" >/dev/null 2>&1 && ip link del dev "$tap"
fi
rm -f "$run_dir"/{root.qcow2,store.qcow2,id_ed25519,id_ed25519.pub,qemu.pid,tap,instance.json,qemu.err}
exit 0
