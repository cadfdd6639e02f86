#!/bin/sh
# Run a line of /etc/cron.d the way cron would: as the line's user, with only
# the environment cron gives (its own defaults plus the file's VAR=value
# lines), through /bin/sh. Extra arguments are appended to the command.
#   run-cron-entry.sh 'bulk rotate' [EXTRA ARGS...]
set -eu
pattern=$1
shift
EXTRA="$*"
file=$(grep -l -F -- "$pattern" /etc/cron.d/* | head -n 1)
[ -n "$file" ] || { echo "no /etc/cron.d entry runs '$pattern'" >&2; exit 1; }
line=$(grep -v '^[[:space:]]*#' "$file" | grep -F -- "$pattern" | head -n 1)
user=$(echo "$line" | awk '{print $6}')
command=$(echo "$line" | awk '{ for (i = 1; i <= 6; i++) $i = ""; sub(/^ +/, ""); print }')
# cron ends the command at the first bare % (the rest is its stdin) and reads
# \% as %: entries here never feed stdin, so refuse a bare % and unescape.
if printf '%s' "$command" | grep -Eq '(^|[^\\])%'; then
  echo "cron entry has a bare % (stdin data), not supported: $command" >&2
  exit 2
fi
command=$(printf '%s' "$command" | sed 's/\\%/%/g')
home=$(getent passwd "$user" | cut -d: -f6)
set -- env -i SHELL=/bin/sh PATH=/usr/bin:/bin HOME="$home" LOGNAME="$user"
# The file's own environment lines (PATH=..., MAILTO=...) override cron's.
for assignment in $(grep -E '^[A-Za-z_][A-Za-z0-9_]*=' "$file" | tr -d ' '); do
  set -- "$@" "$assignment"
done
echo "cron entry ($file, user $user): $command $EXTRA" >&2
rc=0
runuser -u "$user" -- "$@" /bin/sh -c "$command $EXTRA" || rc=$?
if [ "$rc" -ne 0 ]; then
  # Entries may send their output to the journal (systemd-cat -t TAG).
  tag=$(echo "$command" | sed -n 's/.*systemd-cat -t \([^ ]*\).*/\1/p')
  [ -n "$tag" ] && journalctl --no-pager -q -n 30 -t "$tag" >&2
  echo "exit status $rc" >&2
fi
exit "$rc"
