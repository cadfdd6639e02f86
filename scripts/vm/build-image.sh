#!/bin/bash
# Build (or reuse) the Debian 12 VM image used by the Molecule scenarios.
#
# Output, in "$BULK_VM_CACHE" (default ~/.cache/bulk-molecule):
#   bookworm-<hash>/vmlinuz     kernel, passed to QEMU with -kernel
#   bookworm-<hash>/initrd.img  small initramfs (virtio + ext4 modules only)
#   bookworm-<hash>/root.qcow2  root filesystem (ext4, made with mke2fs -d:
#                               no loop mount needed); runs use an overlay
# <hash> is taken from this script and the files it installs, so editing them
# rebuilds the image; otherwise the cached one is reused. Prints the image
# directory.
#
# The image pre-installs the packages the bulk_* roles install, only to save
# time under emulation: the roles still install them on a real host.
# Needs root (debootstrap, chroot), debootstrap, e2fsprogs, qemu-utils and
# access to the Debian archive named in the host's apt sources.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${BULK_VM_CACHE:-$HOME/.cache/bulk-molecule}
hash=$(cat "$here/build-image.sh" "$here/bulk_vm_zipcache.py" | sha256sum | cut -c1-12)
out="$cache/bookworm-$hash"
suite=bookworm
root_size=4G

# Everything the roles install, plus what Ansible itself needs on the target
# (python3-apt for ansible.builtin.apt, acl for become_user).
packages=(
  systemd-sysv udev dbus kmod procps iproute2 netbase less
  openssh-server sudo ca-certificates
  python3 python3-venv python3-apt python3-packaging acl
  ethtool lvm2 xfsprogs cron tcpdump libpcap0.8 zstd libcap2-bin
  initramfs-tools
)

log() { printf 'build-image: %s\n' "$*" >&2; }

if [[ -s "$out/root.qcow2" && -s "$out/vmlinuz" && -s "$out/initrd.img" ]]; then
  echo "$out"
  exit 0
fi

[[ $(id -u) -eq 0 ]] || { log "must run as root (debootstrap, chroot)"; exit 1; }
for tool in debootstrap mke2fs qemu-img chroot; do
  command -v "$tool" >/dev/null || { log "missing $tool"; exit 1; }
done
mkdir -p "$cache"

# One builder at a time: a second caller waits, then reuses the result.
exec 9>"$cache/.build.lock"
flock 9
if [[ -s "$out/root.qcow2" ]]; then
  echo "$out"
  exit 0
fi

# The archive the host itself uses (first URI serving $suite), so no mirror
# name is written here; debootstrap's own default otherwise.
mirror=$(
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk -v s="$suite" '$1 == "deb" && $0 ~ " " s " " { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' || true
)
if [[ -z "$mirror" ]]; then
  mirror=$(
    cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
      awk -v s="$suite" '
        /^[ \t]*$/ { if (suites ~ "(^| )" s "( |$)" && uri != "") { print uri; done = 1; exit } uri = ""; suites = "" }
        /^URIs:/ { uri = $2 }
        /^Suites:/ { suites = ""; for (i = 2; i <= NF; i++) suites = suites " " $i; sub(/^ /, "", suites) }
        END { if (!done && suites ~ "(^| )" s "( |$)" && uri != "") print uri }' || true
  )
fi

work=$(mktemp -d "$cache/.build.XXXXXX")
rootfs="$work/rootfs"
cleanup() {
  local rc=$?
  for m in proc sys dev/pts; do
    mountpoint -q "$rootfs/$m" 2>/dev/null && umount -l "$rootfs/$m"
  done
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

log "debootstrap $suite from ${mirror:-debootstrap default} into $work"
include=$(IFS=,; echo "${packages[*]}")
debootstrap --variant=minbase --include="$include" "$suite" "$rootfs" ${mirror:+"$mirror"} >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2
  [[ -f "$rootfs/debootstrap/debootstrap.log" ]] && tail -n 30 "$rootfs/debootstrap/debootstrap.log" >&2
  exit 1
}

# --- apt, certificates: the guest reaches the archive like the host does ---
rm -f "$rootfs/etc/apt/sources.list"
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [[ -f "$f" ]] && cp "$f" "$rootfs$f"
done
for f in /etc/apt/apt.conf.d/*; do
  # Only the host's Acquire settings (proxy, validity), not its hooks.
  [[ -f "$f" ]] && grep -q '^Acquire::' "$f" && ! grep -q 'Invoke' "$f" && cp "$f" "$rootfs$f"
done
cat >"$rootfs/etc/apt/apt.conf.d/90bulk-vm" <<'CONF'
// Test VM: no recommends pulled in behind the roles' back, no translations.
APT::Install-Recommends "false";
Acquire::Languages "none";
CONF
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
fi

mount -t proc proc "$rootfs/proc"
mount -t sysfs sys "$rootfs/sys"
in_root() { LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive chroot "$rootfs" "$@"; }
in_root update-ca-certificates >/dev/null

# --- kernel and a small initramfs (virtio + ext4 only) ---
cat >"$rootfs/etc/initramfs-tools/conf.d/bulk-vm.conf" <<'CONF'
MODULES=list
COMPRESS=zstd
RESUME=none
CONF
printf '%s\n' virtio_pci virtio_blk ext4 >>"$rootfs/etc/initramfs-tools/modules"
log "apt-get update + linux-image-amd64"
in_root apt-get -q update >"$work/apt.log" 2>&1 || { tail -n 20 "$work/apt.log" >&2; exit 1; }
in_root apt-get -q -y install --no-install-recommends linux-image-amd64 >>"$work/apt.log" 2>&1 ||
  { tail -n 20 "$work/apt.log" >&2; exit 1; }
in_root apt-get clean
# apt-get clean also drops apt's binary caches: made again here, or the first
# apt task of the roles rebuilds them from the package lists (seconds under
# emulation).
in_root apt-cache gencaches >/dev/null

# bulk_install's virtualenv, still empty, made as the role makes it
# (python3 -m venv): its ensurepip step alone takes about 45 s under
# emulation. The role still creates it where it is missing; it installs bulk
# and the wheels of its dependencies into it either way.
in_root python3 -m venv /opt/bulk

# --- system configuration ---
echo bulk-vm >"$rootfs/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tbulk-vm\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$rootfs/etc/hosts"
printf '/dev/vda\t/\text4\tdefaults,noatime\t0\t1\n' >"$rootfs/etc/fstab"
echo 'nameserver 10.0.2.3' >"$rootfs/etc/resolv.conf"

# Management NIC: DHCP from QEMU user networking, matched by the MAC that
# scripts/vm/boot.sh gives it. The capture NIC is left unmanaged.
cat >"$rootfs/etc/systemd/network/10-mgmt.network" <<'CONF'
[Match]
MACAddress=52:54:00:b0:00:01

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
CONF
mkdir -p "$rootfs/etc/systemd/system/systemd-networkd-wait-online.service.d"
cat >"$rootfs/etc/systemd/system/systemd-networkd-wait-online.service.d/bulk-vm.conf" <<'CONF'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=20
CONF

mkdir -p "$rootfs/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=32M\n' >"$rootfs/etc/systemd/journald.conf.d/bulk-vm.conf"

# The login user Molecule uses (ansible, passwordless sudo) and root (for
# inventory/lab) take the key given per run on the kernel command line
# (bulk_vm.ssh_key=<base64 of the public key line>), so the cached image
# holds no credential.
in_root useradd --create-home --shell /bin/bash ansible
echo 'ansible ALL=(ALL) NOPASSWD: ALL' >"$rootfs/etc/sudoers.d/ansible"
chmod 0440 "$rootfs/etc/sudoers.d/ansible"
cat >"$rootfs/usr/local/sbin/bulk-vm-ssh-key" <<'SH'
#!/bin/sh
# Install the per-run public key given on the kernel command line.
set -eu
for word in $(cat /proc/cmdline); do
  case "$word" in
    bulk_vm.ssh_key=*) key=$(printf '%s' "${word#bulk_vm.ssh_key=}" | base64 -d) ;;
  esac
done
[ -n "${key:-}" ] || exit 0
for home in /home/ansible /root; do
  owner=$(stat -c %U "$home")
  install -d -m 0700 -o "$owner" -g "$owner" "$home/.ssh"
  printf '%s\n' "$key" >"$home/.ssh/authorized_keys"
  chown "$owner:$owner" "$home/.ssh/authorized_keys"
  chmod 0600 "$home/.ssh/authorized_keys"
done
SH
chmod 0755 "$rootfs/usr/local/sbin/bulk-vm-ssh-key"
cat >"$rootfs/etc/systemd/system/bulk-vm-ssh-key.service" <<'UNIT'
[Unit]
Description=Install the test VM's per-run ssh key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/bulk-vm-ssh-key

[Install]
WantedBy=multi-user.target
UNIT
cat >"$rootfs/etc/ssh/sshd_config.d/bulk-vm.conf" <<'CONF'
PasswordAuthentication no
PermitRootLogin prohibit-password
UseDNS no
CONF

# Ansible runs each task from a zip payload whose code Python never caches:
# under emulation recompiling ansible.module_utils costs seconds per task.
# A .pth hook in the system Python (not in the roles' virtualenv) keeps the
# compiled code (scripts/vm/bulk_vm_zipcache.py explains it).
install -m 0644 "$here/bulk_vm_zipcache.py" "$rootfs/usr/lib/python3/dist-packages/bulk_vm_zipcache.py"
echo 'import bulk_vm_zipcache' >"$rootfs/usr/lib/python3/dist-packages/zz-bulk-vm-zipcache.pth"
install -d -m 1777 "$rootfs/var/cache/bulk-vm-zipcache"

in_root systemctl enable systemd-networkd.service bulk-vm-ssh-key.service >/dev/null 2>&1
in_root systemctl set-default multi-user.target >/dev/null 2>&1
# Nothing may hold the dpkg lock or the CPU behind the test's back.
in_root systemctl mask apt-daily.timer apt-daily-upgrade.timer apt-daily.service \
  apt-daily-upgrade.service man-db.timer e2scrub_all.timer e2scrub_reap.service \
  fstrim.timer >/dev/null 2>&1

for m in sys proc; do umount "$rootfs/$m"; done

# --- artefacts ---
mkdir -p "$work/out"
cp -L "$rootfs/vmlinuz" "$work/out/vmlinuz"
cp -L "$rootfs/initrd.img" "$work/out/initrd.img"
rm -rf "$rootfs"/var/log/*.log
log "mke2fs -d ($(du -sh "$rootfs" | cut -f1))"
mke2fs -q -t ext4 -L bulk-root -d "$rootfs" "$work/root.raw" "$root_size" >&2
qemu-img convert -f raw -O qcow2 "$work/root.raw" "$work/out/root.qcow2"
rm -f "$work/root.raw"
mv "$work/out" "$out"
# Images of older versions of this script, unused for a day, go.
find "$cache" -maxdepth 1 -name 'bookworm-*' ! -path "$out" -mtime +0 -exec rm -rf {} + 2>/dev/null || true
log "image ready in $out"
echo "$out"
