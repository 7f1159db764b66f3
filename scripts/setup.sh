#!/usr/bin/env bash
# Installs everything zoneslice needs on a Debian bookworm machine (as root):
# Debian packages (reference servers, clients, bcc), kernel headers linked for
# the running kernel, and a virtualenv in .venv that also sees Debian's bcc.
# Idempotent: a second run installs nothing and finishes in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(
  python3 python3-venv python3-dev python3-bpfcc bpfcc-tools libbpf1
  linux-headers-amd64
  nsd knot knot-dnsutils bind9 bind9-utils bind9-dnsutils dnsperf ldnsutils
  pdns-server pdns-backend-sqlite3
  iproute2 openssh-server openssh-client tshark sqlite3 procps psmisc
  zstd xz-utils
  ethtool
)

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -q
  # Reference servers must not start as system services: tests start their own.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  rm -f /usr/sbin/policy-rc.d
fi
# Packages may have started daemons anyway (systemd-less images ignore policy-rc.d
# only in odd cases); the tests need port 53 in their namespaces only, so leave them.

# bcc needs /lib/modules/$(uname -r)/{build,source}; this kernel ships none.
kver=$(uname -r)
moddir=/lib/modules/$kver
if [ ! -e "$moddir/build/Makefile" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -n1)
  common=$(ls -d /usr/src/linux-headers-*-common | sort -V | tail -n1)
  mkdir -p "$moddir"
  ln -sfn "$hdr" "$moddir/build"
  ln -sfn "$common" "$moddir/source"
  echo "setup: linked $moddir/build -> $hdr, source -> $common"
fi

# The virtualenv uses Debian's python so Debian's bcc (dist-packages) is importable.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.requirements.sha
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.txt
  .venv/bin/pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi
echo "setup: ready (.venv, $(.venv/bin/python --version))"
