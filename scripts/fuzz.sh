#!/usr/bin/env bash
# Short runs of every fuzz target in the module, found with `go test -list`
# so a new FuzzXxx is never left out.
#
# The budget is a count of executions per target (FUZZTIME, default 5000x),
# not a duration: with a duration, Go 1.26's fuzz coordinator can report
# "context deadline exceeded" at the deadline with no failing input
# (golang/go#75804, fixed in Go 1.27), which made CI fail at random. A count
# has no deadline to race; on a slow machine it takes longer instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

budget=${FUZZTIME:-5000x}
# Targets whose every input starts processes get a smaller count: each
# FuzzCommandLine input runs through every login shell (about 100 inputs/s),
# each FuzzEnsureLine input writes and renames a file.
slow_budget=${FUZZTIME_SLOW:-500x}
slow=" FuzzCommandLine FuzzEnsureLine "
failed=0
# Listed first, so that a module go list cannot read fails here (set -e)
# instead of leaving the loop with no package to fuzz.
pkgs=$(go list -f '{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}}{{end}}' ./... | grep .)
while read -r pkg; do
	# A package whose tests do not build has no targets to list: that is a
	# failure, not "no fuzz targets".
	if ! listed=$(go test -list '^Fuzz' "$pkg" 2>&1); then
		printf '%s\n' "$listed"
		echo "FAIL ${pkg}: go test -list failed"
		failed=1
		continue
	fi
	for target in $(grep '^Fuzz' <<<"$listed" || true); do
		start=$SECONDS
		n=$budget
		[[ $slow == *" $target "* ]] && n=$slow_budget
		if go test -run '^$' -fuzz "^${target}\$" -fuzztime "$n" "$pkg" >/tmp/castellan-fuzz.$$ 2>&1; then
			echo "ok   ${pkg} ${target} ($((SECONDS - start)) s)"
		else
			cat /tmp/castellan-fuzz.$$
			echo "FAIL ${pkg} ${target}"
			failed=1
		fi
	done
done <<<"$pkgs"
rm -f /tmp/castellan-fuzz.$$
exit "$failed"
