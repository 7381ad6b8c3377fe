#!/usr/bin/env bash
# vagrant/box/build.sh [--hash|--path|--name]
#
# Builds the Vagrant box castellan/debian12 (libvirt provider, qcow2) from
# Debian's mirror with debootstrap, and caches it outside the repository:
#
#   ${CASTELLAN_CACHE:-$HOME/.cache/castellan}/box/<firmware>-<recipe hash>/castellan-debian12[-bios].box
#
# CASTELLAN_BOX_FIRMWARE chooses the image:
#   uefi (default)  GPT; an EFI system partition with Debian's signed shim as the
#                   removable-media boot loader (EFI/BOOT/BOOTX64.EFI) and
#                   Debian's signed grub beside it; Debian's signed kernel. Boots
#                   with OVMF's Secure Boot firmware and Microsoft's keys
#                   (vagrant/Vagrantfile): Secure Boot on, measured boot.
#   bios            MBR, extlinux: SeaBIOS, no Secure Boot, nothing measured
#                   after the MBR. Box castellan/debian12-bios.
#
# The recipe hash covers the firmware and every file under vagrant/box/ (this
# script and files/), so each box is built once per machine and again only when
# the recipe changes. The debootstrap result is cached too, shared by both
# images (box/rootfs-<hash>.tar.zst, keyed by the suite and package list), so a
# change to the configuration files alone rebuilds in seconds.
#
#   --hash   print the recipe hash and exit
#   --path   print where the box for this recipe lives (built or not) and exit
#   --name   print the box's name for Vagrant and exit
#
# Without options: build the box if it is not cached, then print its path as
# the last line of stdout. Needs root (debootstrap, a loop device, mount).
# Safe to rerun after a failure: work happens in a scratch directory that is
# removed on exit, and results are moved into place only when complete.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${CASTELLAN_CACHE:-$HOME/.cache/castellan}
log() { printf 'box: %s\n' "$*" >&2; }
die() {
	printf 'box: error: %s\n' "$*" >&2
	exit 1
}

suite=bookworm
firmware=${CASTELLAN_BOX_FIRMWARE:-uefi}
case $firmware in
uefi)
	box_name=castellan-debian12
	vagrant_name=castellan/debian12
	;;
bios)
	box_name=castellan-debian12-bios
	vagrant_name=castellan/debian12-bios
	;;
*)
	die "CASTELLAN_BOX_FIRMWARE must be uefi or bios, not '$firmware'"
	;;
esac
disk_size_gib=20
esp_mib=128 # the EFI system partition (uefi): 1 MiB .. 129 MiB
# Debian packages in the guest (debootstrap --include, on top of minbase). Both
# images share them: the bios image carries the signed shim and grub unused.
guest_packages=(
	systemd systemd-sysv systemd-resolved dbus udev kmod procps
	linux-image-amd64 openssh-server sudo ca-certificates
	iproute2 iputils-ping nftables wireguard-tools
	cryptsetup tpm2-tools
	shim-signed grub-efi-amd64-signed
	zstd # initramfs-tools recommends it: a zstd initrd unpacks faster than gzip's fallback
)
# Host tools this script needs.
host_packages=(
	debootstrap debian-archive-keyring parted qemu-utils e2fsprogs zstd mount
	extlinux syslinux-common # bios
	dosfstools mtools        # uefi: the EFI system partition
)

recipe_hash() {
	(
		echo "firmware=$firmware"
		cd "$here"
		find . -type f ! -name '*.md' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
	) | sha256sum | cut -c1-16
}

hash=$(recipe_hash)
out_dir=$cache/box/$firmware-$hash
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
--name)
	echo "$vagrant_name"
	exit 0
	;;
"") ;;
*) die "usage: $0 [--hash|--path|--name]" ;;
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
# The files both images share, then this image's own (boot loader config, fstab).
for tree in rootfs "rootfs-$firmware"; do
	(cd "$files/$tree" && find . -type f) | while read -r f; do
		f=${f#./}
		mode=0644
		case $f in
		usr/local/sbin/*) mode=0755 ;;
		etc/sudoers.d/*) mode=0440 ;;
		esac
		install -D -o root -g root -m "$mode" "$files/$tree/$f" "$rootfs/$f"
	done
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
if [[ $firmware == uefi ]]; then
	kernel_version=$(basename "$(readlink "$rootfs/vmlinuz")")
	kernel_version=${kernel_version#vmlinuz-}
	[[ -f $rootfs/boot/vmlinuz-$kernel_version && -f $rootfs/boot/initrd.img-$kernel_version ]] ||
		die "no /boot/vmlinuz-$kernel_version or its initrd in the guest"
	sed -i "s/@KERNEL_VERSION@/$kernel_version/g" "$rootfs/boot/grub/grub.cfg"
fi

# 3. The bootable disk.
log "making the disk ($firmware)"
raw=$work/disk.raw
truncate -s "${disk_size_gib}G" "$raw"
# parted calls udevadm, which this host may not have: drop that noise only.
parted_quiet() { parted -s "$raw" "$@" 2> >(grep -v 'udevadm: not found' >&2); }
# part_bytes N: the start and size of partition N in bytes.
part_bytes() {
	parted -s -m "$raw" unit B print 2>/dev/null | awk -F: -v n="$1" '$1 == n { sub(/B$/, "", $2); sub(/B$/, "", $4); print $2, $4 }'
}
if [[ $firmware == uefi ]]; then
	# GPT: the EFI system partition, then the root file system. The ESP holds
	# what `grub-install --removable` would put there, from the guest's own
	# packages: Debian's shim (signed by Microsoft's UEFI CA) as the
	# removable-media boot loader, which loads Debian's grub from beside it
	# (both signed by Debian, checked by shim), and MokManager; grub reads
	# EFI/debian/grub.cfg (its built-in prefix), then /boot/grub/grub.cfg.
	shim=$rootfs/usr/lib/shim/shimx64.efi.signed
	mokmanager=$rootfs/usr/lib/shim/mmx64.efi.signed
	grub=$rootfs/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed
	for f in "$shim" "$mokmanager" "$grub"; do
		[[ -f $f ]] || die "no ${f#"$rootfs"} in the guest (shim-signed, shim-helpers-amd64-signed or grub-efi-amd64-signed did not install?)"
	done
	mkdir -p "$rootfs/boot/efi"
	parted_quiet mklabel gpt \
		mkpart esp fat32 1MiB "$((1 + esp_mib))MiB" set 1 esp on \
		mkpart root ext4 "$((1 + esp_mib))MiB" 100%
	esp=$work/esp.img
	mkfs.fat -F 32 -n EFI -C "$esp" "$((esp_mib * 1024))" >/dev/null
	mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/EFI/debian
	mcopy -i "$esp" "$shim" ::/EFI/BOOT/BOOTX64.EFI
	mcopy -i "$esp" "$grub" ::/EFI/BOOT/grubx64.efi
	mcopy -i "$esp" "$mokmanager" ::/EFI/BOOT/mmx64.efi
	mcopy -i "$esp" "$files/esp/EFI/debian/grub.cfg" ::/EFI/debian/grub.cfg
	read -r esp_start esp_size < <(part_bytes 1)
	[[ $esp_size -eq $(stat -c %s "$esp") ]] || die "ESP partition is $esp_size bytes, its image $(stat -c %s "$esp")"
	dd if="$esp" of="$raw" bs=1M seek="$((esp_start / 1048576))" conv=notrunc,sparse status=none
	rm -f "$esp"
	read -r root_start root_size < <(part_bytes 2)
	mkfs.ext4 -q -F -L root -E offset="$root_start" -d "$rootfs" "$raw" "$((root_size / 1024))k"
else
	# MBR: syslinux's boot code, one ext4 partition, extlinux.
	parted_quiet mklabel msdos mkpart primary ext4 1MiB 100% set 1 boot on
	dd if=/usr/lib/syslinux/mbr/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none
	read -r root_start root_size < <(part_bytes 1)
	mkfs.ext4 -q -F -L root -E offset="$root_start" -d "$rootfs" "$raw" "$((root_size / 1024))k"
	loopdev=$(losetup --find --show --offset "$root_start" --sizelimit "$root_size" "$raw")
	mkdir -p "$mnt"
	mount "$loopdev" "$mnt"
	extlinux --install "$mnt/boot/extlinux" >/dev/null 2>&1 || die "extlinux --install failed"
	umount "$mnt"
	losetup -d "$loopdev"
	loopdev=
fi

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
# Drop this image's boxes of older recipes (and boxes from before the
# firmware was part of the directory name); keep the other image's.
find "$cache/box" -mindepth 1 -maxdepth 1 -type d ! -name "$firmware-$hash" ! -name '.build.*' \
	\( -name "$firmware-*" -o -regextype posix-extended -regex '.*/[0-9a-f]{16}' \) -exec rm -rf {} +

log "box build took $((SECONDS - start)) s: $box_file ($(du -h "$box_file" | cut -f1))"
echo "$box_file"
