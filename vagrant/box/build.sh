#!/usr/bin/env bash
# vagrant/box/build.sh [--hash|--path]
#
# Builds the Vagrant box castellan/debian12 (libvirt provider, qcow2) from
# Debian's mirror with debootstrap, and caches it outside the repository:
#
#   ${CASTELLAN_CACHE:-$HOME/.cache/castellan}/box/<recipe hash>/castellan-debian12.box
#
# The recipe hash covers every file under vagrant/box/ (this script and
# files/), so the box is built once per machine and again only when the recipe
# changes. The debootstrap result is cached too (box/rootfs-<hash>.tar.zst,
# keyed by the suite and package list), so a change to the configuration
# files alone rebuilds in about a minute.
#
#   --hash   print the recipe hash and exit
#   --path   print where the box for this recipe lives (built or not) and exit
#
# Without options: build the box if it is not cached, then print its path as
# the last line of stdout. Needs root (debootstrap, a loop device, mount).
# Safe to rerun after a failure: work happens in a scratch directory that is
# removed on exit, and results are moved into place only when complete.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${CASTELLAN_CACHE:-$HOME/.cache/castellan}
suite=bookworm
box_name=castellan-debian12
disk_size_gib=20
# Debian packages in the guest (debootstrap --include, on top of minbase).
guest_packages=(
	systemd systemd-sysv systemd-resolved dbus udev kmod procps
	linux-image-amd64 openssh-server sudo ca-certificates
	iproute2 iputils-ping nftables wireguard-tools
	cryptsetup tpm2-tools
)
# Host tools this script needs.
host_packages=(debootstrap debian-archive-keyring extlinux syslinux-common parted qemu-utils e2fsprogs zstd mount)

log() { printf 'box: %s\n' "$*" >&2; }
die() {
	printf 'box: error: %s\n' "$*" >&2
	exit 1
}

recipe_hash() {
	(
		cd "$here"
		find . -type f ! -name '*.md' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
	) | sha256sum | cut -c1-16
}

hash=$(recipe_hash)
out_dir=$cache/box/$hash
box_file=$out_dir/$box_name.box

case ${1:-} in
--hash)
	echo "$hash"
	exit 0
	;;
--path)
	echo "$box_file"
	exit 0
	;;
"") ;;
*) die "usage: $0 [--hash|--path]" ;;
esac

if [[ -f $box_file ]]; then
	log "cached: $box_file"
	echo "$box_file"
	exit 0
fi

[[ $(id -u) -eq 0 ]] || die "building the box needs root (debootstrap, losetup, mount); rerun as root"

# The Debian mirror this host already uses (the only one reachable here).
debian_mirror() {
	if [[ -n ${CASTELLAN_DEBIAN_MIRROR:-} ]]; then
		echo "$CASTELLAN_DEBIAN_MIRROR"
		return
	fi
	local f uri
	for f in /etc/apt/sources.list.d/*.sources; do
		[[ -f $f ]] || continue
		# deb822: the first URIs of a stanza whose Suites name the suite itself.
		uri=$(awk -v suite="$suite" '
			BEGIN { RS = ""; FS = "\n" }
			{
				uris = ""; ok = 0
				for (i = 1; i <= NF; i++) {
					if ($i ~ /^URIs:/) { split($i, a, /[ \t]+/); uris = a[2] }
					if ($i ~ /^Suites:/) { n = split($i, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == suite) ok = 1 }
				}
				if (ok && uris != "") { print uris; exit }
			}' "$f")
		if [[ -n $uri ]]; then
			echo "$uri"
			return
		fi
	done
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[[ -f $f ]] || continue
		uri=$(awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2; exit }' "$f")
		if [[ -n $uri ]]; then
			echo "$uri"
			return
		fi
	done
	die "no Debian mirror for '$suite' in /etc/apt/sources.list{,.d}; set CASTELLAN_DEBIAN_MIRROR=URL"
}

"$repo/vagrant/scripts/ensure-packages.sh" "${host_packages[@]}"
mirror=$(debian_mirror)
mkdir -p "$cache/box"

# One build at a time per cache.
exec 9>"$cache/box/.lock"
flock -n 9 || {
	log "another build holds $cache/box/.lock; waiting"
	flock 9
}
if [[ -f $box_file ]]; then # built by whoever held the lock
	echo "$box_file"
	exit 0
fi

work=$(mktemp -d "$cache/box/.build.XXXXXX")
mnt=$work/mnt
loopdev=
cleanup() {
	set +e
	if mountpoint -q "$mnt" 2>/dev/null; then umount "$mnt"; fi
	for m in proc sys dev/pts dev; do
		if mountpoint -q "$work/rootfs/$m" 2>/dev/null; then umount -l "$work/rootfs/$m"; fi
	done
	[[ -n $loopdev ]] && losetup -d "$loopdev"
	rm -rf --one-file-system "$work"
}
trap cleanup EXIT

start=$SECONDS
rootfs=$work/rootfs

# 1. debootstrap (cached by suite and package list).
rootfs_key=$(printf '%s\n' "$suite" minbase "${guest_packages[@]}" | sha256sum | cut -c1-16)
rootfs_tar=$cache/box/rootfs-$rootfs_key.tar.zst
if [[ -f $rootfs_tar ]]; then
	log "using cached debootstrap result $rootfs_tar"
	mkdir -p "$rootfs"
	tar --zstd -xpf "$rootfs_tar" --numeric-owner --xattrs --xattrs-include='*' -C "$rootfs"
else
	log "debootstrap $suite from $mirror (several minutes)"
	t=$SECONDS
	include=$(
		IFS=,
		echo "${guest_packages[*]}"
	)
	if ! debootstrap --variant=minbase --include="$include" "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
		tail -n 30 "$work/debootstrap.log" >&2
		die "debootstrap failed (log above; full log in $rootfs/debootstrap/debootstrap.log while this runs)"
	fi
	log "debootstrap took $((SECONDS - t)) s"
	tar --zstd -cpf "$rootfs_tar.tmp" --numeric-owner --xattrs --xattrs-include='*' -C "$rootfs" .
	mv "$rootfs_tar.tmp" "$rootfs_tar"
	# Drop debootstrap results of older package lists.
	find "$cache/box" -maxdepth 1 -name 'rootfs-*.tar.zst' ! -name "rootfs-$rootfs_key.tar.zst" -delete
fi

# 2. Configure the guest.
log "configuring the guest"
files=$here/files
(cd "$files/rootfs" && find . -type f) | while read -r f; do
	f=${f#./}
	mode=0644
	case $f in
	usr/local/sbin/*) mode=0755 ;;
	etc/sudoers.d/*) mode=0440 ;;
	esac
	install -D -o root -g root -m "$mode" "$files/rootfs/$f" "$rootfs/$f"
done
in_root() { chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C "$@"; }

echo castellan >"$rootfs/etc/hostname"
cat >"$rootfs/etc/hosts" <<'EOF'
127.0.0.1	localhost
127.0.1.1	castellan
::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters
EOF
cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
EOF

if ! in_root id vagrant >/dev/null 2>&1; then
	# '*': no password, but not locked (sshd refuses locked accounts without PAM).
	in_root useradd --create-home --shell /bin/bash --user-group --password '*' vagrant
fi
install -d -o 1000 -g 1000 -m 0700 "$rootfs/home/vagrant/.ssh"
install -o 1000 -g 1000 -m 0600 "$files/vagrant.pub" "$rootfs/home/vagrant/.ssh/authorized_keys"
[[ $(in_root id -u vagrant) == 1000 ]] || die "the vagrant user did not get uid 1000"
in_root passwd --lock root >/dev/null
in_root visudo -c -q -f /etc/sudoers.d/vagrant || die "sudoers.d/vagrant does not parse"

in_root systemctl enable --quiet systemd-networkd.service systemd-resolved.service \
	castellan-ssh-hostkeys.service castellan-console-hostkeys.service
# No network wait at boot: the management NIC comes up by itself and Vagrant
# configures the private one after boot.
in_root systemctl disable --quiet systemd-networkd-wait-online.service 2>/dev/null || true
ln -sfn ../run/systemd/resolve/stub-resolv.conf "$rootfs/etc/resolv.conf"

# Every clone must be its own machine: no host keys, no machine-id, no seed.
rm -f "$rootfs"/etc/ssh/ssh_host_*
: >"$rootfs/etc/machine-id"
if [[ -e $rootfs/var/lib/dbus/machine-id || -L $rootfs/var/lib/dbus/machine-id ]]; then
	ln -sfn /etc/machine-id "$rootfs/var/lib/dbus/machine-id"
fi
rm -f "$rootfs/var/lib/systemd/random-seed"

# Trim: package caches and logs.
rm -rf "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
	"$rootfs/debootstrap" "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/tmp/* "$rootfs"/var/tmp/*
[[ -e $rootfs/vmlinuz && -e $rootfs/initrd.img ]] || die "no /vmlinuz or /initrd.img in the guest (kernel package did not install?)"

# 3. Bootable disk: MBR + one ext4 partition + extlinux.
log "making the disk"
raw=$work/disk.raw
offset=$((1024 * 1024))
truncate -s "${disk_size_gib}G" "$raw"
# parted calls udevadm, which this host may not have: drop that noise only.
parted -s "$raw" mklabel msdos mkpart primary ext4 1MiB 100% set 1 boot on 2> >(grep -v 'udevadm: not found' >&2)
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none
part_bytes=$(($(stat -c %s "$raw") - offset))
mkfs.ext4 -q -F -L root -E offset=$offset -d "$rootfs" "$raw" "$((part_bytes / 1024))k"
loopdev=$(losetup --find --show --offset "$offset" --sizelimit "$part_bytes" "$raw")
mkdir -p "$mnt"
mount "$loopdev" "$mnt"
extlinux --install "$mnt/boot/extlinux" >/dev/null 2>&1 || die "extlinux --install failed"
umount "$mnt"
losetup -d "$loopdev"
loopdev=

# 4. The box: qcow2 image, metadata, box Vagrantfile, recipe marker.
log "converting to qcow2"
boxdir=$work/box
mkdir -p "$boxdir"
qemu-img convert -O qcow2 "$raw" "$boxdir/box.img"
rm -f "$raw"
printf '{"provider":"libvirt","format":"qcow2","virtual_size":%d}\n' "$disk_size_gib" >"$boxdir/metadata.json"
install -m 0644 "$files/box/Vagrantfile" "$boxdir/Vagrantfile"
echo "$hash" >"$boxdir/castellan-recipe"
mkdir -p "$out_dir"
# The guest kernel beside the box: vagrant/lab.sh boots it for a moment to
# find out whether KVM really works on this host.
cp "$(readlink -f "$rootfs/vmlinuz")" "$out_dir/vmlinuz"
tar -cf "$work/$box_name.box" -C "$boxdir" metadata.json Vagrantfile castellan-recipe box.img
mv "$work/$box_name.box" "$box_file"
# Drop boxes of older recipes.
find "$cache/box" -mindepth 1 -maxdepth 1 -type d ! -name "$hash" ! -name '.build.*' -exec rm -rf {} +

log "box build took $((SECONDS - start)) s: $box_file ($(du -h "$box_file" | cut -f1))"
echo "$box_file"
