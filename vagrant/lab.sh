#!/usr/bin/env bash
# vagrant/lab.sh up|down|status|check|exec CMD...|ssh NODE [CMD...]
#
# The castellan lab: Vagrant VMs (libvirt) run entirely inside one network
# namespace, castellan-lab, so that no lab address exists outside it. See
# vagrant/README.md.
#
#   up       install what is missing, build/add the box, start virtlogd and
#            libvirtd inside the namespace, bring the nodes up (reusing running
#            ones), pin their SSH host keys from the serial console, check that
#            every node booted as it should (below), and write the lab
#            directory (profile.yaml, id_ed25519, known_hosts)
#   down     destroy everything up created: VMs, volumes, libvirt networks, the
#            daemons it started, the namespace
#   status   show the namespace, daemons, VMs and addresses
#   check    check every node of the running lab again: login with the lab
#            key, data disk, TPM, and with UEFI firmware Secure Boot enabled
#            and a TPM event log (stops with a message saying what is wrong)
#   exec     run CMD inside the lab namespace (from the current directory)
#   ssh      ssh to a node (by name) inside the namespace with the lab's key and
#            pinned host keys
#
# Environment: CASTELLAN_CACHE (default ~/.cache/castellan), CASTELLAN_LAB_DIR
# (default $CASTELLAN_CACHE/lab), CASTELLAN_NODES (3), CASTELLAN_LIBVIRT_DRIVER
# (kvm|qemu; default: kvm when it works), CASTELLAN_MEMORY, CASTELLAN_CPUS,
# CASTELLAN_BOX_FIRMWARE (uefi|bios, default uefi; fixed while the lab is up),
# CASTELLAN_BOX (see vagrant/Vagrantfile), CASTELLAN_LAB_TOFU=1 (accept host
# keys from ssh-keyscan when the box does not print them on its console).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ns=castellan-lab
cache=${CASTELLAN_CACHE:-$HOME/.cache/castellan}
lab=${CASTELLAN_LAB_DIR:-$cache/lab}
state=/run/castellan-lab           # what this script started (pids, kvm permissions)
console_dir=/var/log/castellan-lab # serial console logs; qemu (libvirt-qemu) must reach it
vagrant_home=${VAGRANT_HOME:-$HOME/.vagrant.d}
libvirt_sock=/run/libvirt/libvirt-sock
export LIBVIRT_DEFAULT_URI=qemu:///system
export VAGRANT_DEFAULT_PROVIDER=libvirt

host_packages=(
	vagrant vagrant-libvirt libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils
	dnsmasq-base iptables swtpm swtpm-tools ipxe-qemu ovmf iproute2 openssh-client procps util-linux
)

log() { printf 'lab: %s\n' "$*" >&2; }
die() {
	printf 'lab: error: %s\n' "$*" >&2
	exit 1
}
need_root() { [[ $(id -u) -eq 0 ]] || die "the lab needs root (network namespace, libvirtd); rerun as root"; }
in_ns() { ip netns exec "$ns" "$@"; }
ns_exists() { [[ -e /run/netns/$ns ]] && ip netns list | awk '{print $1}' | grep -qx "$ns"; }

# Temporary files in the lab directory, removed however the script ends.
declare -a tmpfiles=()
cleanup_tmp() { [[ ${#tmpfiles[@]} -eq 0 ]] || rm -f "${tmpfiles[@]}"; }
trap cleanup_tmp EXIT

declare -a timings=()
timed() { # timed LABEL CMD...: runs CMD, records how long it took
	local label=$1 t=$SECONDS
	shift
	"$@"
	timings+=("$label: $((SECONDS - t)) s")
	log "$label took $((SECONDS - t)) s"
}

# --- nodes -----------------------------------------------------------------

node_count() {
	local n=${CASTELLAN_NODES:-}
	if [[ -z $n && -f $state/nodes ]]; then n=$(<"$state/nodes"); fi
	n=${n:-3}
	if ! [[ $n =~ ^[0-9]+$ ]] || ((n < 1 || n > 50)); then
		die "CASTELLAN_NODES must be a number from 1 to 50, not '$n'"
	fi
	echo "$n"
}
subnet=${CASTELLAN_SUBNET:-192.168.56}
node_names() {
	local i n
	n=$(node_count)
	for ((i = 1; i <= n; i++)); do
		if ((i == 1)); then echo server-1; else echo "agent-$((i - 1))"; fi
	done
}
node_address() { # NAME
	local i=0 name
	while read -r name; do
		i=$((i + 1))
		if [[ $name == "$1" ]]; then
			echo "$subnet.$((10 + i))"
			return
		fi
	done < <(node_names)
	die "no node named '$1' (nodes: $(node_names | tr '\n' ' '))"
}

# --- firmware --------------------------------------------------------------

# How the nodes boot: CASTELLAN_BOX_FIRMWARE, else what the running lab was
# brought up with, else uefi. A running lab keeps its firmware.
lab_firmware() {
	local want=${CASTELLAN_BOX_FIRMWARE:-} have=
	if [[ -f $state/firmware ]]; then have=$(<"$state/firmware"); fi
	if [[ -n $want && -n $have && $want != "$have" ]]; then
		die "the lab is up with $have firmware; CASTELLAN_BOX_FIRMWARE=$want needs it down first: $0 down"
	fi
	want=${want:-${have:-uefi}}
	[[ $want == uefi || $want == bios ]] || die "CASTELLAN_BOX_FIRMWARE must be uefi or bios, not '$want'"
	echo "$want"
}
firmware=
default_box=
box=
set_firmware() {
	firmware=$(lab_firmware)
	export CASTELLAN_BOX_FIRMWARE=$firmware
	default_box=$("$here/box/build.sh" --name)
	box=${CASTELLAN_BOX:-$default_box}
}

# --- daemons ---------------------------------------------------------------

pid_netns_is_ours() { [[ $(ip netns identify "$1" 2>/dev/null) == "$ns" ]]; }

# Pids of processes named exactly NAME.
pids_named() { pgrep -x "$1" || true; }

check_foreign_libvirtd() {
	local pid name
	# libvirtd, or the modular daemons that would answer qemu:///system instead.
	for name in libvirtd virtqemud virtnetworkd virtstoraged; do
		for pid in $(pids_named "$name"); do
			pid_netns_is_ours "$pid" && continue
			die "a $name (pid $pid) is already running outside the $ns namespace. libvirt's sockets under
  /run/libvirt are global (one libvirtd per machine), and VMs it starts would put lab addresses outside
  the namespace. Stop it (kill $pid, or systemctl stop $name) and rerun; lab.sh starts its own libvirtd
  inside the namespace."
		done
	done
}

# Start DAEMON (virtlogd|libvirtd) in the namespace unless one runs there already.
start_daemon() {
	local name=$1 pid
	for pid in $(pids_named "$name"); do
		if pid_netns_is_ours "$pid"; then
			log "$name already running in $ns (pid $pid)"
			return
		fi
		if [[ $name == virtlogd ]]; then
			log "reusing virtlogd pid $pid (outside $ns; it only writes logs)"
			return
		fi
	done
	rm -f "/run/$name.pid"
	in_ns "$name" -d 8>&- # the daemon must not inherit (and hold) our lock
	local i
	for ((i = 0; i < 100; i++)); do
		[[ -s /run/$name.pid ]] && break
		sleep 0.1
	done
	[[ -s /run/$name.pid ]] || die "$name did not start (no /run/$name.pid); try: ip netns exec $ns $name -v"
	pid=$(<"/run/$name.pid")
	echo "$pid" >"$state/$name.pid"
	log "started $name in $ns (pid $pid)"
}

wait_libvirt() {
	local i
	for ((i = 0; i < 150; i++)); do
		if virsh -q version >/dev/null 2>&1; then return; fi
		sleep 0.2
	done
	die "libvirtd does not answer on $libvirt_sock; see /var/log/libvirt/libvirtd.log or run: ip netns exec $ns libvirtd -v"
}

# /dev/kvm is root-only here (no udev). Give it udev's usual root:kvm 0660 so
# that qemu (user libvirt-qemu, group kvm) can open it; down restores it.
prepare_kvm() {
	[[ -c /dev/kvm ]] || return 0
	local mode group
	mode=$(stat -c %a /dev/kvm)
	group=$(stat -c %G /dev/kvm)
	if [[ $group != kvm || $((8#$mode & 8#060)) -ne $((8#060)) ]] && getent group kvm >/dev/null; then
		[[ -f $state/kvm-perm ]] || stat -c '%a %u %g' /dev/kvm >"$state/kvm-perm"
		chgrp kvm /dev/kvm
		chmod 0660 /dev/kvm
		log "made /dev/kvm root:kvm 0660 (was $mode, group $group) so qemu can use it"
	fi
}

# libvirt runs swtpm_setup as user tss (qemu.conf swtpm_user), which signs each
# vTPM's EK certificate with swtpm's local CA in /var/lib/swtpm-localca (owned
# by tss). A swtpm_setup --create-ek-cert run as root elsewhere leaves the CA's
# files, and its lock, owned by root: every vTPM then fails to start ("Need
# read/write rights on /var/lib/swtpm-localca/.lock.swtpm-localca for user tss").
# Give them back to tss.
prepare_swtpm_localca() {
	local dir=/var/lib/swtpm-localca
	[[ -d $dir ]] && getent passwd tss >/dev/null || return 0
	if [[ -n $(find "$dir" ! -user tss -print -quit) ]]; then
		chown -R tss "$dir"
		log "gave $dir back to user tss (files owned by another user stop libvirt's vTPMs from starting)"
	fi
}

# kvm when libvirt offers it and a guest really runs under it, else qemu (TCG).
choose_driver() {
	if [[ -n ${CASTELLAN_LIBVIRT_DRIVER:-} ]]; then
		echo "$CASTELLAN_LIBVIRT_DRIVER"
		return
	fi
	if [[ -f $state/driver ]]; then
		cat "$state/driver"
		return
	fi
	# The probe's answer is kept per host kernel in the cache: delete
	# $cache/kvm-probe (or set CASTELLAN_LIBVIRT_DRIVER) to ask again.
	local driver=qemu key
	key="$(uname -r) $([[ -c /dev/kvm ]] && echo kvm-dev || echo no-kvm-dev)"
	if [[ -f $cache/kvm-probe ]] && [[ $(sed -n 1p "$cache/kvm-probe") == "$key" ]]; then
		driver=$(sed -n 2p "$cache/kvm-probe")
		log "driver $driver from the last KVM probe on this kernel ($cache/kvm-probe)"
	else
		if [[ -c /dev/kvm ]] && virsh domcapabilities --virttype kvm >/dev/null 2>&1 && kvm_runs; then
			driver=kvm
		fi
		printf '%s\n%s\n' "$key" "$driver" >"$cache/kvm-probe"
	fi
	[[ $driver == kvm || $driver == qemu ]] || die "bad driver '$driver' in $cache/kvm-probe; delete that file"
	echo "$driver" >"$state/driver"
	echo "$driver"
}

# /dev/kvm can exist and still not work (nested virtualization that hangs or
# fails to emulate): boot the box's kernel under KVM for a moment and require it
# to get as far as its panic for want of a root disk (about 2 s with working
# KVM; under TCG 5 s). Without that kernel, trust libvirt's capabilities.
kvm_runs() {
	local kernel out
	kernel=$(dirname "$("$here/box/build.sh" --path)")/vmlinuz
	if [[ ! -f $kernel ]]; then
		log "no probe kernel ($kernel); trusting libvirt that KVM works"
		return 0
	fi
	out=$(timeout 20 qemu-system-x86_64 -accel kvm -cpu host -m 256 -nodefaults -nic none -display none \
		-serial stdio -no-reboot -kernel "$kernel" -append "console=ttyS0 panic=-1" 2>&1) || true
	if grep -aq 'Kernel panic' <<<"$out"; then
		return 0
	fi
	log "KVM does not work here: a probe kernel did not boot under it in 20 s$(grep -aq 'Linux version' <<<"$out" || echo ' (no output at all)')"
	return 1
}

# libvirt 9 could cap TCG's translation cache (<tcg><tb-cache>), but
# vagrant-libvirt 0.11 cannot say so; without a cap each TCG guest's qemu holds
# about 1 GiB of translated code on top of guest RAM. This wrapper, installed
# as the TCG guests' emulator, turns libvirt's "-accel tcg" into
# "-accel tcg,tb-size=N" and runs the real qemu.
tcg_mib=${CASTELLAN_TCG_TB_MIB:-256}
install_tcg_wrapper() {
	[[ $tcg_mib =~ ^[0-9]+$ ]] || die "CASTELLAN_TCG_TB_MIB must be a number of MiB, not '$tcg_mib'"
	local w=$state/qemu-system-x86_64-tcg qemu
	qemu=$(command -v qemu-system-x86_64) || die "qemu-system-x86_64 not found"
	cat >"$w.tmp" <<WRAPPER
#!/bin/bash
# Installed by castellan's vagrant/lab.sh: qemu with TCG's translation cache capped at $tcg_mib MiB.
args=()
prev=
for a in "\$@"; do
	if [[ \$prev == -accel && \$a == tcg ]]; then a=tcg,tb-size=$tcg_mib; fi
	args+=("\$a")
	prev=\$a
done
exec $qemu "\${args[@]}"
WRAPPER
	chmod 0755 "$w.tmp"
	mv "$w.tmp" "$w"
	echo "$w"
}

# --- box ---------------------------------------------------------------------

installed_box_recipe() {
	local f="$vagrant_home/boxes/${default_box//\//-VAGRANTSLASH-}/0/libvirt/castellan-recipe"
	[[ -f $f ]] && cat "$f"
	return 0
}

ensure_box() {
	[[ $box == "$default_box" ]] || {
		log "using box $box (CASTELLAN_BOX); Vagrant fetches it if needed"
		return 0
	}
	local box_file hash
	hash=$("$here/box/build.sh" --hash)
	box_file=$("$here/box/build.sh" --path)
	if [[ -f $box_file ]]; then
		log "box cached: $box_file"
		timings+=("box build: cached")
	else
		timed "box build" "$here/box/build.sh" >/dev/null
	fi
	if [[ $(installed_box_recipe) == "$hash" ]]; then
		log "box $default_box (recipe $hash) already added"
		timings+=("box add: already added")
		return 0
	fi
	if vagrant box list 2>/dev/null | grep -q "^$default_box "; then
		log "replacing $default_box: it is from another recipe"
		vagrant box remove --force --all "$default_box" >/dev/null
	fi
	# vagrant-libvirt keeps the box image as a volume; an old one would be reused.
	delete_box_volumes
	timed "box add" box_add "$box_file"
}

box_add() {
	if ! vagrant box add --force --name "$default_box" "$1" >"$state/box-add.log" 2>&1; then
		cat "$state/box-add.log" >&2
		die "vagrant box add $1 failed"
	fi
}

delete_box_volumes() {
	virsh -q version >/dev/null 2>&1 || return 0
	local pool vol
	for pool in $(virsh -q pool-list --all --name 2>/dev/null); do
		for vol in $(virsh -q vol-list "$pool" 2>/dev/null | awk '{print $1}'); do
			case $vol in
			"${default_box//\//-VAGRANTSLASH-}"_vagrant_box_image_*)
				virsh -q vol-delete --pool "$pool" "$vol" >/dev/null && log "deleted box volume $pool/$vol"
				;;
			esac
		done
	done
}

# --- keys --------------------------------------------------------------------

# The last complete host key block in a console log, as "type key" lines;
# each line must parse as an SSH public key.
console_keys() { # LOGFILE
	[[ -f $1 ]] || return 0
	tr -d '\r' <"$1" | awk '
		/-----BEGIN CASTELLAN SSH HOST KEYS-----/ { inblk = 1; blk = ""; next }
		/-----END CASTELLAN SSH HOST KEYS-----/ { if (inblk) last = blk; inblk = 0; next }
		inblk { blk = blk $0 "\n" }
		END { printf "%s", last }' | while read -r type key rest; do
		[[ -z $rest ]] || continue
		if printf '%s %s\n' "$type" "$key" | ssh-keygen -l -f - >/dev/null 2>&1; then
			printf '%s %s\n' "$type" "$key"
		fi
	done | LC_ALL=C sort -u
}

scanned_keys() { # ADDRESS
	in_ns ssh-keyscan -T 10 -t ed25519,ecdsa,rsa "$1" 2>/dev/null | awk '!/^#/ && NF >= 3 { print $2, $3 }' | LC_ALL=C sort -u
}

pin_keys() {
	local name addr logf want got i tmp line
	tmp=$(mktemp "$lab/.known_hosts.XXXXXX")
	tmpfiles+=("$tmp")
	while read -r name; do
		addr=$(node_address "$name")
		logf=$console_dir/$name.log
		want=
		for ((i = 0; i < 60; i++)); do
			want=$(console_keys "$logf")
			[[ -n $want ]] && break
			sleep 1
		done
		got=$(scanned_keys "$addr")
		[[ -n $got ]] || die "ssh-keyscan of $name ($addr) inside $ns returned no keys"
		if [[ -z $want ]]; then
			if [[ ${CASTELLAN_LAB_TOFU:-0} == 1 ]]; then
				log "WARNING: $name printed no host keys on its console ($logf); trusting ssh-keyscan (CASTELLAN_LAB_TOFU=1)"
				want=$got
			else
				die "$name printed no host keys on its serial console ($logf), so they cannot be pinned
  out of band. With a box other than castellan/debian12 set CASTELLAN_LAB_TOFU=1 to trust ssh-keyscan instead."
			fi
		fi
		if [[ $want != "$got" ]]; then
			printf 'console (%s):\n%s\nssh-keyscan (%s):\n%s\n' "$logf" "$want" "$addr" "$got" >&2
			die "host keys of $name seen over the network differ from those on its serial console: refusing to pin them"
		fi
		while read -r line; do printf '%s %s\n' "$addr" "$line"; done <<<"$want" >>"$tmp"
		log "pinned $(wc -l <<<"$want") host keys of $name ($addr) from its serial console; ssh-keyscan agrees"
	done < <(node_names)
	chmod 0644 "$tmp"
	mv "$tmp" "$lab/known_hosts"
}

lab_ssh() { # ADDRESS CMD...
	local addr=$1
	shift
	in_ns ssh -q -i "$lab/id_ed25519" -o IdentitiesOnly=yes -o UserKnownHostsFile="$lab/known_hosts" \
		-o StrictHostKeyChecking=yes -o BatchMode=yes -o ConnectTimeout=10 -o LogLevel=ERROR \
		"vagrant@$addr" "$@"
}

# --- checks on the nodes ----------------------------------------------------

# What a node says about how it booted, as key=value lines. SecureBoot and
# SetupMode are EFI global variables (GUID 8be4df61-93ca-11d2-aa0d-00e098032b8c):
# in efivarfs, 4 bytes of attributes, then the value (UEFI 2.10, 3.3).
# securityfs files report size 0: count the bytes that can be read.
# shellcheck disable=SC2016 # expanded on the node
boot_facts_script='
set -u
efivars=/sys/firmware/efi/efivars
global=8be4df61-93ca-11d2-aa0d-00e098032b8c
var() { if [ -r "$efivars/$1-$global" ]; then od -An -t u1 -j 4 -N 1 "$efivars/$1-$global" | tr -d " \n"; else echo absent; fi; }
if [ -d /sys/firmware/efi ]; then echo firmware=uefi; else echo firmware=bios; fi
echo "secureboot=$(var SecureBoot)"
echo "setupmode=$(var SetupMode)"
log=/sys/kernel/security/tpm0/binary_bios_measurements
if [ -r "$log" ]; then echo "eventlog=$(wc -c <"$log")"; else echo eventlog=absent; fi
if [ -c /dev/tpmrm0 ]; then echo tpm=yes; else echo tpm=no; fi
if [ -b /dev/vdb ]; then echo datadisk=yes; else echo datadisk=no; fi
lockdown=$(sed -n "s/.*\[\(.*\)\].*/\1/p" /sys/kernel/security/lockdown 2>/dev/null)
echo "lockdown=${lockdown:-unknown}"
'

# check_node NAME: log in with the lab key and check the data disk, the TPM,
# and with UEFI firmware that Secure Boot is enabled and the TPM event log
# exists. Stops the script with what is wrong.
check_node() {
	local name=$1 addr facts fw sb setup evlog tpm disk lockdown nvram try rc
	addr=$(node_address "$name")
	# ssh exits with 255 when it cannot connect or log in: a TCG guest on a
	# busy host can miss ssh's 10 s connect timeout, so try a few times.
	for ((try = 1; ; try++)); do
		rc=0
		facts=$(lab_ssh "$addr" sudo sh -s <<<"$boot_facts_script") || rc=$?
		((rc == 255 && try < 5)) || break
		log "$name ($addr): ssh failed (try $try of 5); trying again in 5 s"
		sleep 5
	done
	((rc == 0)) || die "$name ($addr): login with the lab key failed, or sudo sh on the node did (exit $rc)"
	kv() { sed -n "s/^$1=//p" <<<"$facts"; }
	fw=$(kv firmware) sb=$(kv secureboot) setup=$(kv setupmode) evlog=$(kv eventlog)
	tpm=$(kv tpm) disk=$(kv datadisk) lockdown=$(kv lockdown)
	[[ $disk == yes ]] || die "$name: the data disk /dev/vdb is missing"
	[[ $tpm == yes ]] || die "$name: no TPM (/dev/tpmrm0 is missing): is swtpm installed, and the domain's <tpm> there (virsh dumpxml castellan-$name)?"
	if [[ $firmware == bios ]]; then
		log "$name: $fw firmware (CASTELLAN_BOX_FIRMWARE=bios): no Secure Boot, no measured boot after the MBR; TPM present, event log: $evlog"
		return 0
	fi
	nvram=${CASTELLAN_NVRAM_DIR:-/var/lib/libvirt/qemu/nvram}/castellan-${name}_VARS.fd
	[[ $fw == uefi ]] ||
		die "$name booted with BIOS firmware, not UEFI: the lab must boot like production (UEFI, Secure Boot,
  measured boot). Its domain has no OVMF loader (virsh dumpxml castellan-$name); is the box $box a UEFI
  box? (CASTELLAN_BOX_FIRMWARE=bios runs the BIOS variant on purpose.)"
	[[ $sb == 1 && $setup == 0 ]] ||
		die "$name: Secure Boot is not enabled (SecureBoot=$sb, SetupMode=$setup). The lab must boot like
  production. The node's NVRAM ($nvram) must start as a copy of OVMF_VARS_4M.ms.fd (Microsoft's keys
  enrolled) and the firmware be OVMF_CODE_4M.secboot.fd: $0 down, then up, gives every node a fresh copy."
	[[ $evlog =~ ^[0-9]+$ && $evlog -gt 0 ]] ||
		die "$name: no TPM event log (/sys/kernel/security/tpm0/binary_bios_measurements: $evlog): the firmware
  did not hand the kernel a TCG2 event log, so nothing can check the PCRs against what was measured"
	log "$name: UEFI, Secure Boot enabled, TPM event log $evlog bytes, kernel lockdown $lockdown"
}

check_nodes() {
	local name
	while read -r name; do check_node "$name"; done < <(node_names)
}

# --- up ----------------------------------------------------------------------

write_profile() {
	local tmp name role
	tmp=$(mktemp "$lab/.profile.XXXXXX")
	tmpfiles+=("$tmp")
	{
		cat <<'EOF'
apiVersion: castellan/v1alpha1
kind: Cluster
metadata:
  name: lab
spec:
  ssh:
    user: vagrant
    keyFile: id_ed25519
    knownHosts: known_hosts
  nodes:
EOF
		while read -r name; do
			role=agent
			[[ $name == server-* ]] && role=server
			cat <<EOF
    - name: $name
      address: $(node_address "$name")
      role: $role
      dataDisks:
        - device: /dev/vdb
EOF
		done < <(node_names)
		cat <<'EOF'
  state:
    repo: state
EOF
	} >"$tmp"
	chmod 0644 "$tmp"
	mv "$tmp" "$lab/profile.yaml"
}

cmd_up() {
	need_root
	local t0=$SECONDS driver name addr
	[[ -x $here/scripts/ensure-packages.sh ]] || die "missing $here/scripts/ensure-packages.sh"
	timed "packages" "$here/scripts/ensure-packages.sh" "${host_packages[@]}"
	mkdir -p "$state" "$console_dir" "$lab"
	chmod 0700 "$lab"
	exec 8>"$state/lock"
	flock -n 8 || die "another lab.sh up/down is running (lock $state/lock)"

	check_foreign_libvirtd
	if ! ns_exists; then
		ip netns add "$ns"
		log "created network namespace $ns"
	fi
	in_ns ip link set lo up
	in_ns sysctl -qw net.ipv4.ip_forward=0
	prepare_kvm
	prepare_swtpm_localca
	start_daemon virtlogd
	start_daemon libvirtd
	wait_libvirt
	# libvirt's autostarted "default" NAT network would only live in the
	# namespace; the lab does not use it.
	if virsh -q net-list --name 2>/dev/null | grep -qx "default *"; then
		virsh -q net-destroy default >/dev/null && log "stopped libvirt's default network (not used by the lab)"
	fi

	# vagrant-libvirt defines the storage pool "default" when it is missing;
	# then down removes it again. (A transient one is left over from a
	# libvirtd of ours that stopped with the pool active: libvirt restores
	# active pools from /run/libvirt/storage.)
	if ! virsh -q pool-info default >/dev/null 2>&1 ||
		virsh -q pool-list --all --transient --name | grep -qx "default *"; then
		touch "$state/pool-created"
	fi

	set_firmware
	echo "$firmware" >"$state/firmware"
	log "firmware: $firmware, box $box"
	ensure_box
	driver=$(choose_driver)
	log "libvirt driver: $driver$([[ $driver == qemu ]] && echo ' (TCG: software emulation, slow)')"
	node_count >"$state/nodes"

	if [[ ! -f $lab/id_ed25519 ]]; then
		ssh-keygen -q -t ed25519 -N '' -C castellan-lab -f "$lab/id_ed25519"
	fi
	chmod 0600 "$lab/id_ed25519"

	local emulator=
	[[ $driver == qemu ]] && emulator=$(install_tcg_wrapper)

	# A domain Vagrant does not know (left by a lab brought up from another
	# checkout, whose .vagrant/ holds its id) makes `vagrant up` fail with
	# "Name ... is already taken": say what to do instead.
	local name
	while read -r name; do
		if virsh -q dominfo "castellan-$name" >/dev/null 2>&1 && [[ ! -s $here/.vagrant/machines/$name/libvirt/id ]]; then
			die "the VM castellan-$name exists but this checkout's Vagrant ($here/.vagrant) does not know it:
  it was left by a lab brought up from another checkout or interrupted. $0 down removes it (and
  every castellan-* VM of the lab); then $0 up again"
		fi
	done < <(node_names)

	log "vagrant up: $(node_names | tr '\n' ' ')(output in $lab/vagrant-up.log)"
	local t=$SECONDS
	if ! (cd "$here" && in_ns env CASTELLAN_NODES="$(node_count)" CASTELLAN_LIBVIRT_DRIVER="$driver" \
		CASTELLAN_QEMU_EMULATOR="$emulator" \
		CASTELLAN_CONSOLE_DIR="$console_dir" CASTELLAN_LAB_KEY="$lab/id_ed25519" \
		vagrant up --provider=libvirt) >"$lab/vagrant-up.log" 2>&1; then
		tail -n 25 "$lab/vagrant-up.log" >&2
		die "vagrant up failed (full output: $lab/vagrant-up.log); fix and rerun, running VMs are reused"
	fi
	timings+=("vagrant up ($driver): $((SECONDS - t)) s")
	log "vagrant up took $((SECONDS - t)) s"

	t=$SECONDS
	pin_keys
	timings+=("keys: $((SECONDS - t)) s")

	# Check that the lab answers as castellan will see it, and booted as it should.
	t=$SECONDS
	check_nodes
	timings+=("checks: $((SECONDS - t)) s")
	write_profile

	printf '\nlab is up (%s, %s): %s\n' "$driver" "$firmware" "$lab/profile.yaml"
	printf '  %s\n' "${timings[@]}" "total: $((SECONDS - t0)) s"
	printf '  run castellan inside the namespace: %s exec ./bin/castellan apply -f %s --yes\n' "$0" "$lab/profile.yaml"
}

# --- down --------------------------------------------------------------------

stop_pid() { # PID NAME
	local pid=$1 name=$2 i
	[[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]] || return 0
	kill "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || {
			log "stopped $name (pid $pid)"
			return 0
		}
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	log "killed $name (pid $pid)"
}

cmd_down() {
	need_root
	mkdir -p "$state"
	exec 8>"$state/lock"
	flock -n 8 || die "another lab.sh up/down is running (lock $state/lock)"
	local t0=$SECONDS dom net pool vol pid name fw=${CASTELLAN_BOX_FIRMWARE:-uefi}
	if [[ -f $state/firmware ]]; then fw=$(<"$state/firmware"); fi

	if virsh -q version >/dev/null 2>&1 && ns_exists; then
		# Vagrant first (it also forgets the machines), then sweep what is left.
		local t=$SECONDS
		(cd "$here" && in_ns env CASTELLAN_NODES="$(node_count)" CASTELLAN_BOX_FIRMWARE="$fw" vagrant destroy -f) >"$state/vagrant-destroy.log" 2>&1 ||
			log "vagrant destroy failed (see $state/vagrant-destroy.log); removing the VMs with virsh"
		for dom in $(virsh -q list --all --name | grep '^castellan-' || true); do
			virsh -q destroy "$dom" >/dev/null 2>&1 || true
			virsh -q undefine "$dom" --remove-all-storage --nvram --tpm >/dev/null 2>&1 ||
				virsh -q undefine "$dom" --remove-all-storage >/dev/null
			log "removed leftover VM $dom"
		done
		for net in castellan-private castellan-mgmt; do
			if virsh -q net-info "$net" >/dev/null 2>&1; then
				virsh -q net-destroy "$net" >/dev/null 2>&1 || true
				virsh -q net-undefine "$net" >/dev/null 2>&1 || true
				log "removed network $net"
			fi
		done
		for pool in $(virsh -q pool-list --all --name); do
			for vol in $(virsh -q vol-list "$pool" 2>/dev/null | awk '{print $1}'); do
				case $vol in
				castellan-*) virsh -q vol-delete --pool "$pool" "$vol" >/dev/null && log "deleted volume $pool/$vol" ;;
				esac
			done
		done
		# The pool "default" if the lab made it (or it is transient: then only a
		# libvirtd of ours can have made it), once it is empty.
		local persistent=1
		virsh -q pool-list --all --transient --name 2>/dev/null | grep -qx "default *" && persistent=0
		if { [[ -f $state/pool-created ]] || ((!persistent)); } && virsh -q pool-info default >/dev/null 2>&1 &&
			[[ -z $(virsh -q vol-list default 2>/dev/null) ]]; then
			virsh -q pool-destroy default >/dev/null 2>&1 || true
			if ((persistent)); then virsh -q pool-undefine default >/dev/null || true; fi
			log "removed storage pool default (made for the lab)"
		fi
		timings+=("destroy: $((SECONDS - t)) s")
	elif virsh -q version >/dev/null 2>&1; then
		die "libvirtd answers but the $ns namespace is gone: it is not the lab's; stop it by hand"
	fi

	# The daemons this script started, then anything else left in the namespace
	# (dnsmasq, swtpm and qemu are children of our libvirtd).
	for name in libvirtd virtlogd; do
		if [[ -f $state/$name.pid ]]; then
			pid=$(<"$state/$name.pid")
			stop_pid "$pid" "$name"
			rm -f "$state/$name.pid"
		fi
	done
	if ns_exists; then
		for pid in $(ip netns pids "$ns"); do
			name=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
			log "stopping $name (pid $pid), left in $ns"
			stop_pid "$pid" "$name"
		done
		ip netns delete "$ns"
		log "deleted network namespace $ns"
	fi

	if [[ -f $state/kvm-perm ]]; then
		read -r mode uid gid <"$state/kvm-perm"
		chown "$uid:$gid" /dev/kvm && chmod "$mode" /dev/kvm && log "restored /dev/kvm to $mode"
	fi
	rm -rf "$console_dir"
	# The nodes' UEFI variable stores (vagrant-libvirt keeps them on destroy).
	rm -f "${CASTELLAN_NVRAM_DIR:-/var/lib/libvirt/qemu/nvram}"/castellan-*_VARS.fd{,.tmp}
	# Logs and runtime files libvirt keeps per domain and network.
	rm -rf /var/log/libvirt/qemu/castellan-*.log /var/log/swtpm/libvirt/qemu/castellan-*.log \
		/run/libvirt/network/castellan-* /var/lib/libvirt/dnsmasq/castellan-*
	rm -f "$lab/profile.yaml" "$lab/known_hosts" "$lab/id_ed25519" "$lab/id_ed25519.pub" "$lab/vagrant-up.log"
	rm -rf "$state"
	rm -rf "$here/.vagrant/machines"
	printf 'lab is down (%s s)\n' "$((SECONDS - t0))"
	local kept
	kept=$(find "$lab" -mindepth 1 -maxdepth 1 -printf '%f ' 2>/dev/null || true)
	if [[ -n $kept ]]; then printf '  kept in %s: %s\n' "$lab" "$kept"; fi
}

# --- status, exec, ssh ---------------------------------------------------------

cmd_status() {
	local name pid
	if ns_exists; then echo "namespace: $ns exists"; else echo "namespace: $ns absent"; fi
	for name in libvirtd virtlogd; do
		for pid in $(pids_named "$name"); do
			if pid_netns_is_ours "$pid"; then echo "$name: pid $pid (in $ns)"; else echo "$name: pid $pid (OUTSIDE $ns)"; fi
		done
	done
	if [[ -f $state/driver ]]; then echo "driver: $(<"$state/driver")"; fi
	if [[ -f $state/firmware ]]; then echo "firmware: $(<"$state/firmware")"; fi
	if virsh -q version >/dev/null 2>&1; then
		echo "VMs:"
		virsh list --all | sed -n '3,$p' | grep castellan- | sed 's/^/  /' || echo "  none"
		echo "networks:"
		virsh -q net-list --all | grep castellan- | sed 's/^/  /' || echo "  none"
	else
		echo "libvirtd: not answering"
	fi
	if [[ -f $lab/profile.yaml ]]; then
		echo "profile: $lab/profile.yaml"
		while read -r name; do printf '  %-10s %s\n' "$name" "$(node_address "$name")"; done < <(node_names)
	else
		echo "profile: none (lab not up)"
	fi
}

cmd_check() {
	need_root
	ns_exists || die "the lab namespace $ns does not exist; run: $0 up"
	[[ -f $lab/known_hosts ]] || die "no $lab/known_hosts; run: $0 up"
	set_firmware
	check_nodes
	log "all nodes pass ($firmware)"
}

cmd_exec() {
	need_root
	[[ $# -gt 0 ]] || die "usage: $0 exec CMD..."
	ns_exists || die "the lab namespace $ns does not exist; run: $0 up"
	exec ip netns exec "$ns" "$@"
}

cmd_ssh() {
	need_root
	[[ $# -gt 0 ]] || die "usage: $0 ssh NODE [CMD...]"
	ns_exists || die "the lab namespace $ns does not exist; run: $0 up"
	[[ -f $lab/known_hosts ]] || die "no $lab/known_hosts; run: $0 up"
	local addr
	addr=$(node_address "$1")
	shift
	exec ip netns exec "$ns" ssh -i "$lab/id_ed25519" -o IdentitiesOnly=yes -o UserKnownHostsFile="$lab/known_hosts" \
		-o StrictHostKeyChecking=yes -o LogLevel=ERROR "vagrant@$addr" "$@"
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
check) cmd_check ;;
exec)
	shift
	cmd_exec "$@"
	;;
ssh)
	shift
	cmd_ssh "$@"
	;;
*) die "usage: $0 up|down|status|check|exec CMD...|ssh NODE [CMD...]" ;;
esac
