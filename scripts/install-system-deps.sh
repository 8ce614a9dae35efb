#!/bin/sh
# Installs the Debian packages the test suite talks to, only when they are missing:
#   radclient (freeradius-utils)  a real RADIUS client for interop tests
#   chromium                       a real browser for the card-holder portal tests
# Extra package names given as arguments are installed too when missing (e.g. freeradius for
# bench/compare).
set -eu
missing=""
for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
command -v radclient >/dev/null 2>&1 || missing="$missing freeradius-utils"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi
echo "installing system packages:$missing"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
