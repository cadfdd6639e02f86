#!/bin/sh
# Where can a running service write? Run as root on the sensor:
#   probe-capture-sandbox.sh UNIT STORE_DIR...
# Inside the service's own mount namespace and as its user, list every
# directory a write is allowed in (find -writable asks access(2), which sees
# both permissions and read-only mounts), write a probe file into each, and
# look for it from the host's side. Prints one line per directory:
#   store DIR     in a STORE_DIR, and the host sees the probe (expected)
#   escaped DIR   outside the STOREs, and the host sees the probe: the
#                 service can write there
#   private DIR   written inside, invisible to the host (PrivateTmp and the like)
#   denied DIR    the write failed after all
# The probes are removed afterwards.
set -eu
unit=$1
shift
pid=$(systemctl show --property=MainPID --value "$unit")
[ "${pid:-0}" -gt 0 ] || { echo "$unit is not running" >&2; exit 1; }
user=$(systemctl show --property=User --value "$unit")
[ -n "$user" ] || { echo "$unit sets no User=" >&2; exit 1; }
as_service() {
  nsenter --target "$pid" --mount --setuid "$(id -u "$user")" --setgid "$(id -g "$user")" -- "$@"
}
probe=.bulk-sandbox-probe.$$
in_store() {
  for store in "$@"; do
    case "$dir/" in "${store%/}/"*) return 0 ;; esac
  done
  return 1
}
as_service find / \( -path /proc -o -path /sys \) -prune -o -type d -writable -print 2>/dev/null |
  sort >"/tmp/$probe.dirs"
while IFS= read -r dir; do
  if ! as_service sh -c ': >"$1"' sh "$dir/$probe" 2>/dev/null; then
    echo "denied $dir"
  elif [ -e "$dir/$probe" ]; then
    if in_store "$@"; then echo "store $dir"; else echo "escaped $dir"; fi
  else
    echo "private $dir"
  fi
  as_service rm -f "$dir/$probe" 2>/dev/null || true
done <"/tmp/$probe.dirs"
rm -f "/tmp/$probe.dirs"
