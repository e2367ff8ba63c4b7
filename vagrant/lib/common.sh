# Shared by run-suite and build-box (sourced, not executed).
# shellcheck shell=bash

VAGRANT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO_ROOT=$(cd "$VAGRANT_DIR/.." && pwd)

# Everything the harness keeps between runs lives here: one directory per box
# cache key, plus a small libvirt capabilities cache and the run lock.
CACHE_ROOT=${OOMTRACE_VM_CACHE:-/var/cache/oomtrace-vm}

# The name the offline box is added under. The Vagrantfile treats every box
# whose name starts with "oomtrace/" as a local box that must run in the netns.
LOCAL_BOX_NAME=oomtrace/debian12
BOX_FILE_NAME=oomtrace-debian12.box

# The network namespace the harness creates. One fixed name plus the run lock
# means a crashed run's leftovers are found and removed by the next run.
NETNS=oomtrace-vm

# Port that qemu's user-mode network forwards to the guest's sshd; it is bound
# on 127.0.0.1 inside the netns only, so any port is free there.
SSH_PORT=2222

# The files whose content decides what is inside the box. Changing any of them
# (or the project's dependency list) gives a new cache key and a fresh build.
BOX_INPUTS=(
  vagrant/build-box
  vagrant/provision.sh
  vagrant/guest-packages.txt
  vagrant/lib/common.sh
  vagrant/lib/apt_sources.py
  vagrant/lib/customize-rootfs.sh
  vagrant/lib/requirements.py
  pyproject.toml
)

log() { printf '[oomtrace-vm %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Hash of the box inputs: file names and contents, so a rename counts too.
# Of pyproject.toml only what reaches the box counts (the requirement list
# that lib/requirements.py reads from it): editing the linters' or pytest's
# settings there must not cost a box rebuild.
box_cache_key() {
  local f
  for f in "${BOX_INPUTS[@]}"; do
    [[ -f $REPO_ROOT/$f ]] || die "missing box input $f"
    printf '%s\0' "$f"
    if [[ $f == pyproject.toml ]]; then
      python3 "$VAGRANT_DIR/lib/requirements.py" --build-system "$REPO_ROOT/$f" | sha256sum
    else
      sha256sum <"$REPO_ROOT/$f"
    fi
  done | sha256sum | cut -c1-16
}

# The guest's Debian packages, without comments and blank lines.
guest_packages() {
  sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$VAGRANT_DIR/guest-packages.txt" | tr -s ' \t' '\n' | sed '/^$/d'
}

# Phase timing: `phase NAME` starts a phase (and ends the previous one);
# `phase_report` prints all of them. Used for the timings the harness reports.
declare -a PHASE_NAMES=() PHASE_SECONDS=()
_phase_name="" _phase_t0=""
_now() { date +%s.%N; }
phase_end() {
  if [[ -n $_phase_name ]]; then
    PHASE_NAMES+=("$_phase_name")
    PHASE_SECONDS+=("$(awk -v a="$_phase_t0" -v b="$(_now)" 'BEGIN { printf "%.1f", b - a }')")
    _phase_name=""
  fi
}
phase() {
  phase_end
  _phase_name=$1 _phase_t0=$(_now)
  log "== $1"
}
phase_report() {
  phase_end
  local i total=0
  printf '\n%-34s %8s\n' "phase" "seconds" >&2
  for i in "${!PHASE_NAMES[@]}"; do
    printf '%-34s %8s\n' "${PHASE_NAMES[$i]}" "${PHASE_SECONDS[$i]}" >&2
    total=$(awk -v a="$total" -v b="${PHASE_SECONDS[$i]}" 'BEGIN { printf "%.1f", a + b }')
  done
  printf '%-34s %8s\n' "total" "$total" >&2
}
