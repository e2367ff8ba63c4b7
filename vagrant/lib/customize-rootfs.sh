#!/bin/bash
# Turn the root filesystem that mmdebstrap just installed into a bootable,
# offline Vagrant guest. build-box runs this as mmdebstrap's --customize-hook,
# so /proc, /sys and /dev are mounted inside ROOTFS while it runs.
#
# Usage: customize-rootfs.sh ROOTFS BUILD_DIR
#   BUILD_DIR/wheelhouse/   wheels for the project's Python dependencies
#   BUILD_DIR/vagrant_ssh_key.pub   key that vagrant and run-suite log in with
set -euo pipefail

ROOTFS=$1
BUILD=$2
VAGRANT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO_ROOT=$(cd "$VAGRANT_DIR/.." && pwd)
# build-box formats the root filesystem with this label; GRUB and fstab use it.
ROOT_LABEL=oomtrace-root

in_root() { chroot "$ROOTFS" "$@"; }

# --- identity -----------------------------------------------------------------
echo oomtrace-vm >"$ROOTFS/etc/hostname"
cat >"$ROOTFS/etc/hosts" <<'EOF'
127.0.0.1	localhost
127.0.1.1	oomtrace-vm
::1		localhost ip6-localhost ip6-loopback
EOF
# A fixed machine-id: with an empty one every boot of a fresh VM is a "first
# boot" and systemd re-applies unit presets (re-enabling what we disabled).
rm -f "$ROOTFS/etc/machine-id"
in_root systemd-machine-id-setup >/dev/null

cat >"$ROOTFS/etc/fstab" <<EOF
LABEL=$ROOT_LABEL  /  ext4  errors=remount-ro  0  1
EOF

# --- network: only qemu's user-mode network ----------------------------------
# run-suite gives the VM one NIC on qemu's restricted user-mode network, whose
# fixed guest address is 10.0.2.15; the host's sshd forward arrives from
# 10.0.2.2 on the same subnet. No gateway and no DNS on purpose: the guest has
# no route anywhere else.
mkdir -p "$ROOTFS/etc/systemd/network"
cat >"$ROOTFS/etc/systemd/network/10-qemu-user.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
Address=10.0.2.15/24
LinkLocalAddressing=no
IPv6AcceptRA=no
EOF
in_root systemctl enable systemd-networkd.service >/dev/null 2>&1
# Nothing waits for "online" (there is no online); do not let a unit stall on it.
in_root systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1
# Periodic jobs that would only burn emulated CPU time in a VM without network.
for t in apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer fstrim.timer; do
  in_root systemctl mask "$t" >/dev/null 2>&1 || true
done

# Drivers that udev would load for qemu's emulated hardware but that nothing
# here uses; each costs boot time under software emulation (nested KVM
# on an emulated CPU, the floppy controller probe).
cat >"$ROOTFS/etc/modprobe.d/oomtrace-vm.conf" <<'EOF'
blacklist kvm_amd
blacklist kvm_intel
blacklist kvm
blacklist floppy
blacklist pcspkr
EOF

# --- sshd ---------------------------------------------------------------------
mkdir -p "$ROOTFS/etc/ssh/sshd_config.d"
cat >"$ROOTFS/etc/ssh/sshd_config.d/oomtrace.conf" <<'EOF'
# Key login only (vagrant's key from the box cache); no DNS lookups of clients.
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UseDNS no
EOF

# --- the shared provisioning, with the wheelhouse baked in -------------------
# provision.sh wants the repository layout under its SRC argument.
stage=$ROOTFS/opt/oomtrace-provision
mkdir -p "$stage/vagrant/lib"
cp "$REPO_ROOT/pyproject.toml" "$stage/"
cp "$VAGRANT_DIR/provision.sh" "$VAGRANT_DIR/guest-packages.txt" "$stage/vagrant/"
cp "$VAGRANT_DIR/lib/requirements.py" "$stage/vagrant/lib/"
rm -rf "$ROOTFS/opt/oomtrace-wheelhouse"
cp -r "$BUILD/wheelhouse" "$ROOTFS/opt/oomtrace-wheelhouse"
# A clean environment: the host's PIP_*, proxy or locale settings mean nothing
# inside the image (and the host's pip find-links paths do not exist there).
in_root env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
  OOMTRACE_PROVISION_CONTEXT=image \
  bash /opt/oomtrace-provision/vagrant/provision.sh /opt/oomtrace-provision
rm -rf "$stage"

# --- vagrant's login key --------------------------------------------------------
uid=$(in_root id -u vagrant) gid=$(in_root id -g vagrant)
install -d -m 0700 -o "$uid" -g "$gid" "$ROOTFS/home/vagrant/.ssh"
install -m 0600 -o "$uid" -g "$gid" "$BUILD/vagrant_ssh_key.pub" "$ROOTFS/home/vagrant/.ssh/authorized_keys"

# --- boot loader files ------------------------------------------------------------
# GRUB's boot sector and core image are written to the disk by build-box; the
# modules and the menu live here. Exactly one kernel is installed.
kernels=("$ROOTFS"/boot/vmlinuz-*)
[[ ${#kernels[@]} -eq 1 && -f ${kernels[0]} ]] || { echo "expected one kernel, found: ${kernels[*]}" >&2; exit 1; }
kver=${kernels[0]##*/vmlinuz-}
[[ -f $ROOTFS/boot/initrd.img-$kver ]] || { echo "no initrd for $kver" >&2; exit 1; }
mkdir -p "$ROOTFS/boot/grub/i386-pc"
cp /usr/lib/grub/i386-pc/*.mod /usr/lib/grub/i386-pc/*.lst "$ROOTFS/boot/grub/i386-pc/"
cat >"$ROOTFS/boot/grub/grub.cfg" <<EOF
# Written by oomtrace's vagrant/lib/customize-rootfs.sh (no update-grub here).
set default=0
set timeout=0
menuentry 'Debian GNU/Linux, $kver' {
	linux /boot/vmlinuz-$kver root=LABEL=$ROOT_LABEL ro console=ttyS0,115200
	initrd /boot/initrd.img-$kver
}
EOF
echo "$kver" >"$BUILD/kernel-version"
