#!/usr/bin/env bash
# Installs every Debian package Troupe needs. Fast (a dpkg query) when all are present.
set -euo pipefail
pkgs=(build-essential cmake pkg-config
      libcaf-dev libboost-dev libucx-dev ucx-utils
      libprotobuf-dev protobuf-compiler doctest-dev libopenblas-dev libdnnl-dev zlib1g-dev
      libssl-dev openssl iproute2 python3 clang-14 libclang-rt-14-dev openmpi-bin libopenmpi-dev
      dataset-fashion-mnist fortunes fortunes-min)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
echo "setup: installing ${missing[*]}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
