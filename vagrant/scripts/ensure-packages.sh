#!/usr/bin/env bash
# ensure-packages.sh PKG...
#
# Installs the Debian packages among PKG that are not installed yet, and
# nothing else. Safe to rerun: when everything is present it only reads the
# dpkg database and prints nothing. apt-get update runs only when something is
# missing. Packages are installed noninteractively, quietly and without
# recommends (set ENSURE_PACKAGES_RECOMMENDS=1 to get them).
#
# Used by vagrant/lab.sh, vagrant/box/build.sh and the Makefile's test target.
set -euo pipefail

die() { printf 'ensure-packages: %s\n' "$*" >&2; exit 1; }

[[ $# -gt 0 ]] || die "usage: $0 PKG..."
command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: this script needs a Debian-based system"

missing=()
for pkg in "$@"; do
	[[ $pkg =~ ^[a-z0-9][a-z0-9+.:-]+$ ]] || die "not a package name: '$pkg'"
	status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
	if [[ $status != "ii "* ]]; then
		missing+=("$pkg")
	fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

sudo=()
if [[ $(id -u) -ne 0 ]]; then
	command -v sudo >/dev/null 2>&1 || die "need root to install: ${missing[*]} (run as root or install sudo)"
	sudo=(sudo --preserve-env=DEBIAN_FRONTEND)
fi

recommends=(--no-install-recommends)
[[ ${ENSURE_PACKAGES_RECOMMENDS:-0} == 1 ]] && recommends=()

export DEBIAN_FRONTEND=noninteractive
apt_opts=(-q -y -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=300)

printf 'ensure-packages: installing %s\n' "${missing[*]}" >&2
out=$(mktemp)
trap 'rm -f "$out"' EXIT
if ! "${sudo[@]}" apt-get "${apt_opts[@]}" update >"$out" 2>&1; then
	tail -n 20 "$out" >&2
	die "apt-get update failed (check the mirror in /etc/apt/sources.list.d/ and the network)"
fi
if ! "${sudo[@]}" apt-get "${apt_opts[@]}" "${recommends[@]}" install "${missing[@]}" >"$out" 2>&1; then
	tail -n 20 "$out" >&2
	die "apt-get install ${missing[*]} failed (output above)"
fi
