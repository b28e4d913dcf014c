#!/usr/bin/env bash
# `make node-prereqs`: the Debian packages the real node needs (containerd, runc, CNI plugins,
# iptables, debootstrap, Debian's dockerd as the image builder). Installs only what is
# missing; needs root (CI here is root on Debian).
set -euo pipefail
need=()
for pair in containerd:containerd ctr:containerd runc:runc dockerd:docker.io \
            iptables:iptables ip:iproute2 debootstrap:debootstrap gcc:gcc; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
[ -x /usr/bin/docker ] || need+=(docker.io)
[ -e /usr/lib/cni/bridge ] || [ -e /opt/cni/bin/bridge ] || need+=(containernetworking-plugins)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ -e /usr/lib/aarch64-linux-gnu/libc.a ] || need+=(libc6-dev)
if [ ${#need[@]} -eq 0 ]; then
  echo "node-prereqs: all present"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "node-prereqs: missing ${need[*]}; run as root (apt-get install)" >&2
  exit 2
fi
echo "node-prereqs: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u)
