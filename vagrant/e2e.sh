#!/usr/bin/env bash
# vagrant/e2e.sh: the end-to-end test on real VMs (make e2e).
#
# Stage uefi (the lab as it boots by default: UEFI, Secure Boot, measured boot):
#   lab up -> how every node booted (Secure Boot on, the TPM event log replays
#   to the PCRs, the same measurements on every node) -> castellan apply ->
#   assertions on the nodes over SSH -> a second apply that must be a no-op ->
#   a rollback -> refusals -> a node restarted with an NVRAM without keys
#   (Secure Boot off) must make `lab.sh check` stop -> lab down.
# Stage bios (the degraded path, CASTELLAN_BOX_FIRMWARE=bios, one node): lab up
#   -> the node booted with BIOS, answers over SSH, has its TPM -> lab down.
#
# CASTELLAN_E2E_STAGES="uefi bios" (default) chooses the stages;
# CASTELLAN_E2E_BIOS_NODES (1) the bios stage's node count;
# CASTELLAN_E2E_KEEP_LAB=1 leaves the last stage's lab up.
# CASTELLAN_E2E_TIMEOUT (60m) bounds the lab tests of a stage (go test -timeout).
# The assertions are Go tests (vagrant/e2e, build tag e2e) run inside the lab's
# network namespace, driving the real castellan binary (bin/castellan).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/.." && pwd)
cache=${CASTELLAN_CACHE:-$HOME/.cache/castellan}
export CASTELLAN_LAB_DIR=${CASTELLAN_LAB_DIR:-$cache/lab}
export LIBVIRT_DEFAULT_URI=qemu:///system
nvram_dir=${CASTELLAN_NVRAM_DIR:-/var/lib/libvirt/qemu/nvram}

[[ -x $top/bin/castellan ]] || { echo "e2e: bin/castellan is missing: run make build" >&2; exit 1; }
keep=${CASTELLAN_E2E_KEEP_LAB:-0}
read -r -a stages <<<"${CASTELLAN_E2E_STAGES:-uefi bios}"
for s in "${stages[@]}"; do
	[[ $s == uefi || $s == bios ]] || { echo "e2e: CASTELLAN_E2E_STAGES: unknown stage '$s' (uefi, bios)" >&2; exit 1; }
done

# left_behind prints what of the lab still exists after `lab.sh down`.
left_behind() {
	ip netns list | awk '{print $1}' | grep -x castellan-lab | sed 's/^/namespace /' || true
	pgrep -a -f 'qemu-system|libvirtd|virtlogd|swtpm.*libvirt|dnsmasq.*libvirt' | sed 's/^/process /' || true
	[[ -e /run/castellan-lab ]] && echo "directory /run/castellan-lab"
	ip -o link show | awk -F': ' '$2 ~ /^(virbr|vnet)/ {print "link " $2}'
	find "$nvram_dir" -maxdepth 1 -name 'castellan-*' -printf 'NVRAM %p\n' 2>/dev/null
	true
}

lab_down() {
	"$here/lab.sh" down || return 1
	local left
	left=$(left_behind)
	if [[ -n $left ]]; then
		echo "e2e: FAIL: lab down left this behind:" >&2
		echo "$left" >&2
		return 1
	fi
	echo "e2e: lab down left nothing behind (namespace, qemu/libvirt/swtpm/dnsmasq processes, links, NVRAM)"
}

lab_is_up=0
cleanup() {
	local rc=$?
	if ((lab_is_up)); then
		if [[ $keep == 1 ]]; then
			echo "e2e: leaving the lab up (CASTELLAN_E2E_KEEP_LAB=1)"
		else
			lab_down || rc=1
		fi
	fi
	exit "$rc"
}
trap cleanup EXIT

declare -a times=()
# The test binary is built outside the namespace (it needs the Go proxy) and
# run inside it (it talks to the VMs).
go test -c -tags e2e -o "$cache/e2e.test" "$top/vagrant/e2e"
# The mesh test captures on the lab's private network from the host side.
"$here/scripts/ensure-packages.sh" tcpdump
# The package's unit tests (parsers, testdata/; build tag !e2e) run in
# `make test`, not in this binary.
run_tests() { # FIRMWARE GO-TEST-ARGS...
	local fw=$1
	shift
	"$here/lab.sh" exec env CASTELLAN_BIN="$top/bin/castellan" CASTELLAN_LAB_DIR="$CASTELLAN_LAB_DIR" \
		CASTELLAN_LAB_FIRMWARE="$fw" CASTELLAN_BOX_FIRMWARE="$fw" "$cache/e2e.test" -test.v -test.count=1 -test.timeout "${CASTELLAN_E2E_TIMEOUT:-60m}" "$@"
}

# A node restarted with an NVRAM that has no Secure Boot keys boots with
# Secure Boot off (OVMF in setup mode): `lab.sh check` must stop and say so.
secure_boot_off_is_refused() {
	local node dom out t=$SECONDS
	node=$(awk '$1 == "-" && $2 == "name:" { n = $3 } END { print n }' "$CASTELLAN_LAB_DIR/profile.yaml")
	dom=castellan-$node
	echo "e2e: restarting $node with the keyless NVRAM template (OVMF_VARS_4M.fd)"
	virsh -q destroy "$dom" >/dev/null
	install -m 0600 /usr/share/OVMF/OVMF_VARS_4M.fd "$nvram_dir/${dom}_VARS.fd"
	virsh -q start "$dom" >/dev/null
	until timeout 60 "$here/lab.sh" ssh "$node" -o ConnectTimeout=10 -o BatchMode=yes true 2>/dev/null; do
		((SECONDS - t < 1200)) || { echo "e2e: FAIL: $node did not come back in 1200 s" >&2; return 1; }
		sleep 5
	done
	echo "e2e: $node is back after $((SECONDS - t)) s"
	if out=$("$here/lab.sh" check 2>&1); then
		echo "$out" >&2
		echo "e2e: FAIL: lab.sh check passed with $node booted with Secure Boot off" >&2
		return 1
	fi
	if ! grep -q "error: $node: Secure Boot is not enabled (SecureBoot=0, SetupMode=1)" <<<"$out"; then
		echo "$out" >&2
		echo "e2e: FAIL: lab.sh check failed, but not because $node has Secure Boot off" >&2
		return 1
	fi
	echo "e2e: lab.sh check refuses $node with Secure Boot off:"
	grep -A3 "error: $node" <<<"$out" | sed 's/^/  | /'
}

start=$SECONDS
last=${stages[${#stages[@]} - 1]}
for stage in "${stages[@]}"; do
	t=$SECONDS
	echo "=== e2e stage $stage"
	if [[ $stage == uefi ]]; then
		CASTELLAN_BOX_FIRMWARE=uefi "$here/lab.sh" up
		lab_is_up=1
		times+=("$stage: lab up $((SECONDS - t)) s")
		t2=$SECONDS
		# CASTELLAN_E2E_RUN=REGEXP runs only the matching tests (go test -run).
		run_tests uefi ${CASTELLAN_E2E_RUN:+-test.run "$CASTELLAN_E2E_RUN"}
		times+=("$stage: tests $((SECONDS - t2)) s")
		t2=$SECONDS
		secure_boot_off_is_refused
		times+=("$stage: Secure Boot off refused $((SECONDS - t2)) s")
	else
		CASTELLAN_BOX_FIRMWARE=bios CASTELLAN_NODES=${CASTELLAN_E2E_BIOS_NODES:-1} "$here/lab.sh" up
		lab_is_up=1
		times+=("$stage: lab up $((SECONDS - t)) s")
		t2=$SECONDS
		run_tests bios -test.run '^TestBoot$'
		times+=("$stage: tests $((SECONDS - t2)) s")
	fi
	if [[ $stage != "$last" || $keep != 1 ]]; then
		t2=$SECONDS
		lab_down
		lab_is_up=0
		times+=("$stage: lab down $((SECONDS - t2)) s")
	fi
done
printf 'e2e: %s\n' "${times[@]}" "total $((SECONDS - start)) s"
