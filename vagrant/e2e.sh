#!/usr/bin/env bash
# vagrant/e2e.sh: the end-to-end test on real VMs (make e2e).
#   lab up -> castellan apply -> assertions on the nodes over SSH -> a second
#   apply that must be a no-op -> a rollback -> refusals -> lab down.
# The assertions are Go tests (vagrant/e2e, build tag e2e) run inside the lab's
# network namespace, driving the real castellan binary (bin/castellan).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/.." && pwd)
cache=${CASTELLAN_CACHE:-$HOME/.cache/castellan}
export CASTELLAN_LAB_DIR=${CASTELLAN_LAB_DIR:-$cache/lab}

[[ -x $top/bin/castellan ]] || { echo "e2e: bin/castellan is missing: run make build" >&2; exit 1; }
keep=${CASTELLAN_E2E_KEEP_LAB:-0}
# left_behind prints what of the lab still exists after `lab.sh down`.
left_behind() {
	ip netns list | awk '{print $1}' | grep -x castellan-lab | sed 's/^/namespace /' || true
	pgrep -a -f 'qemu-system|libvirtd|virtlogd|swtpm|dnsmasq.*libvirt' | sed 's/^/process /' || true
	[[ -e /run/castellan-lab ]] && echo "directory /run/castellan-lab"
	ip -o link show | awk -F': ' '$2 ~ /^(virbr|vnet)/ {print "link " $2}'
	true
}

cleanup() {
	local rc=$?
	if [[ $keep == 1 ]]; then
		echo "e2e: leaving the lab up (CASTELLAN_E2E_KEEP_LAB=1)"
	else
		"$here/lab.sh" down || rc=1
		local left
		left=$(left_behind)
		if [[ -n $left ]]; then
			echo "e2e: FAIL: lab down left this behind:" >&2
			echo "$left" >&2
			rc=1
		else
			echo "e2e: lab down left nothing behind (namespace, qemu/libvirt/swtpm/dnsmasq processes, links)"
		fi
	fi
	exit "$rc"
}
trap cleanup EXIT

start=$SECONDS
"$here/lab.sh" up
up=$((SECONDS - start))

t=$SECONDS
# The test binary is built outside the namespace (it needs the Go proxy) and
# run inside it (it talks to the VMs).
go test -c -tags e2e -o "$cache/e2e.test" "$top/vagrant/e2e"
# CASTELLAN_E2E_RUN=REGEXP runs only the matching tests (go test -run).
"$here/lab.sh" exec env CASTELLAN_BIN="$top/bin/castellan" CASTELLAN_LAB_DIR="$CASTELLAN_LAB_DIR" \
	"$cache/e2e.test" -test.v -test.count=1 -test.timeout 45m ${CASTELLAN_E2E_RUN:+-test.run "$CASTELLAN_E2E_RUN"}
echo "e2e: lab up ${up} s, tests $((SECONDS - t)) s"
