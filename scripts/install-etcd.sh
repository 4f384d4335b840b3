#!/usr/bin/env bash
# Install what the cluster crate needs when it is missing: etcd (server and etcdctl), whose
# tests start their own etcd on loopback ports, and protoc with protobuf's well-known .proto
# files (the etcd-client crate compiles etcd's .proto files in its build script; they import
# google/protobuf/descriptor.proto, which Debian ships in libprotobuf-dev). Debian/Ubuntu via apt-get; elsewhere, say what to
# install. Safe to run on every build: it does nothing when everything is there.
#
# The etcd-server package would start its own etcd on 127.0.0.1:2379 (a systemd unit, or the
# init script where there is no systemd). Nothing of ours uses that instance: a policy-rc.d
# that refuses every start keeps it from starting during the install, and where systemd runs
# the unit is then disabled, so the port stays free and no stray data dir appears.
set -euo pipefail

missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
[ -e /usr/include/google/protobuf/descriptor.proto ] || [ -n "${PROTOC_INCLUDE:-}" ] ||
  missing+=(libprotobuf-dev)
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "please install: ${missing[*]} (etcd 3.4 or newer and protoc, for the cluster crate)" >&2
  exit 1
fi

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

# Refuse service starts for the length of the install; put back whatever policy was there.
policy=/usr/sbin/policy-rc.d
saved=""
if [ -e "$policy" ]; then
  saved=$(mktemp)
  $SUDO cp -p "$policy" "$saved"
fi
restore_policy() {
  if [ -n "$saved" ]; then
    $SUDO cp -p "$saved" "$policy"
    rm -f "$saved"
  else
    $SUDO rm -f "$policy"
  fi
}
trap restore_policy EXIT
printf '#!/bin/sh\n# installed by hearth scripts/install-etcd.sh for the install only\nexit 101\n' |
  $SUDO tee "$policy" >/dev/null
$SUDO chmod 0755 "$policy"

echo "installing: ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
  "${missing[@]}" >/dev/null

# Where systemd runs, keep the packaged unit from starting at the next boot (or now).
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
fi

etcd --version | head -1 >&2
