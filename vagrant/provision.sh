#!/bin/bash
# Provision a Debian 12 system as an oomtrace test node. Runs as root, in three
# places, so that every VM the project uses is set up by this one script:
#   1. build-box, chrooted into the offline image while it is being built
#      (OOMTRACE_PROVISION_CONTEXT=image): everything is installed there, at
#      native speed, with no network;
#   2. `vagrant up` with a public box (debian/bookworm64) on a developer's
#      machine with internet: apt-get and pip fetch what is missing;
#   3. `vagrant up` with the offline box (vagrant/run-suite): everything is
#      already there, so it only checks and returns within seconds.
#
# Usage: provision.sh [SRC]   SRC holds the repository layout (default /oomtrace):
#   SRC/pyproject.toml, SRC/vagrant/guest-packages.txt, SRC/vagrant/lib/requirements.py
set -euo pipefail

SRC=${1:-/oomtrace}
CONTEXT=${OOMTRACE_PROVISION_CONTEXT:-vm}
VENV=/opt/oomtrace-venv
# build-box puts the wheels for the project's Python dependencies here; the
# guest has no network, so pip installs from this directory only.
WHEELHOUSE=/opt/oomtrace-wheelhouse

export DEBIAN_FRONTEND=noninteractive
say() { printf '[provision] %s\n' "$*"; }

for f in pyproject.toml vagrant/guest-packages.txt vagrant/lib/requirements.py; do
  [[ -f $SRC/$f ]] || { say "missing $SRC/$f (is the repository synced to $SRC?)"; exit 1; }
done

# --- Debian packages ---------------------------------------------------------
mapfile -t packages < <(sed -e 's/#.*//' "$SRC/vagrant/guest-packages.txt" | tr -s ' \t' '\n' | sed '/^$/d')
# One dpkg-query for all of them: under software emulation every process
# start costs, and this runs at each `vagrant up`.
mapfile -t installed < <(dpkg-query -W -f='${db:Status-Status} ${Package}\n' "${packages[@]}" 2>/dev/null |
  awk '$1 == "installed" { print $2 }')
missing=()
for p in "${packages[@]}"; do
  [[ " ${installed[*]} " == *" $p "* ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $CONTEXT == image ]]; then
    # build-box passes the same list to mmdebstrap: a gap here is a bug there.
    say "packages missing from the image: ${missing[*]}"
    exit 1
  fi
  say "installing ${missing[*]}"
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [[ $CONTEXT != image ]]; then
  # bcc compiles against the headers of the *running* kernel. A public box may
  # run an older kernel than the linux-image-amd64 just installed.
  kver=$(uname -r)
  if [[ ! -e /lib/modules/$kver/build ]]; then
    if apt-cache show "linux-headers-$kver" >/dev/null 2>&1; then
      apt-get install -y -q --no-install-recommends "linux-headers-$kver"
    else
      say "WARNING: no headers for the running kernel $kver; run 'vagrant reload' to boot the newer kernel"
    fi
  fi
fi

# --- the vagrant user ---------------------------------------------------------
# Public boxes have it; the offline image gets it here. Passwordless sudo is
# how vagrant (and run-suite) become root.
if ! id vagrant >/dev/null 2>&1; then
  useradd --create-home --shell /bin/bash vagrant
fi
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' >/etc/sudoers.d/vagrant
chmod 0440 /etc/sudoers.d/vagrant

# --- services -----------------------------------------------------------------
# earlyoom and systemd-oomd kill when memory runs low or under pressure, which
# would race the kernel OOM killer that the tests provoke. Tests that want one
# as a peer start it themselves.
for killer in earlyoom systemd-oomd; do
  if systemctl is-enabled "$killer" >/dev/null 2>&1; then
    systemctl disable "$killer" 2>/dev/null
  fi
  if [[ $CONTEXT != image ]] && systemctl is-active "$killer" >/dev/null 2>&1; then
    systemctl stop "$killer"
  fi
done

# --- Python venv ----------------------------------------------------------------
# bcc comes from Debian's python3-bpfcc, so the venv is made from Debian's
# /usr/bin/python3 with --system-site-packages; everything else comes from
# pyproject.toml (dependencies + the dev extra + the build backend).
requirements=$(python3 "$SRC/vagrant/lib/requirements.py" --build-system "$SRC/pyproject.toml")
stamp=$(
  {
    printf '%s\n' "$requirements"
    /usr/bin/python3 --version
    if [[ -d $WHEELHOUSE ]]; then ls "$WHEELHOUSE"; fi
  } | sha256sum | cut -d' ' -f1
)
if [[ -f $VENV/.provisioned && $(cat "$VENV/.provisioned") == "$stamp" ]]; then
  say "venv $VENV is up to date"
else
  say "creating $VENV"
  rm -rf "$VENV"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
  reqfile=$(mktemp)
  printf '%s\n' "$requirements" >"$reqfile"
  if [[ -d $WHEELHOUSE ]]; then
    "$VENV/bin/pip" install -q --no-index --find-links "$WHEELHOUSE" -r "$reqfile"
  else
    "$VENV/bin/pip" install -q -r "$reqfile"
  fi
  rm -f "$reqfile"
  # A self-check of what the tests rely on, before the venv counts as done.
  "$VENV/bin/python" -c 'import bcc, structlog, orjson, grpc, pyroute2, pytest'
  echo "$stamp" >"$VENV/.provisioned"
fi
if [[ $CONTEXT != image ]]; then
  [[ -e /lib/modules/$(uname -r)/build ]] || say "WARNING: /lib/modules/$(uname -r)/build is missing"
fi
say "done"
