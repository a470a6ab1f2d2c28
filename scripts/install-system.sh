#!/usr/bin/env bash
# Debian packages for the built-in corpus (voices) and, with --test, for the tests (Chromium for the listening
# page). Idempotent: installs only what is missing.
# MBROLA voices live in Debian contrib/non-free; this machine's apt lists only `main`, so a private
# apt configuration (its own sources and lists under a cache dir) installs them without touching
# the system's sources.
set -euo pipefail
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
MAIN_PKGS="espeak-ng festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts libsndfile1 sox"
[ "${1:-}" = "--test" ] && MAIN_PKGS="$MAIN_PKGS chromium"
NONFREE_PKGS="mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1"

missing() { for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || echo "$p"; done; }

need=$(missing $MAIN_PKGS)
if [ -n "$need" ]; then
  echo "[install-system] apt-get install $need"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null
fi

need=$(missing $NONFREE_PKGS)
if [ -n "$need" ]; then
  echo "[install-system] apt-get install (contrib/non-free) $need"
  dir=/var/cache/sa-ray-apt; $SUDO mkdir -p "$dir/lists/partial"
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  echo "deb http://deb.debian.org/debian $codename main contrib non-free" | $SUDO tee "$dir/sources.list" >/dev/null
  opts=(-o "Dir::Etc::SourceList=$dir/sources.list" -o "Dir::Etc::SourceParts=-" -o "Dir::State::Lists=$dir/lists")
  $SUDO apt-get "${opts[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get "${opts[@]}" install -y -qq --no-install-recommends $need >/dev/null
fi
