# castellan: build, test, lint, and the Vagrant lab.
# `make demo` and `make test` are the two commands a newcomer needs (README.md).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
CACHE       ?= $(or $(CASTELLAN_CACHE),$(HOME)/.cache/castellan)
LAB_DIR     ?= $(or $(CASTELLAN_LAB_DIR),$(CACHE)/lab)
BIN         := bin/castellan
LDFLAGS     := -s -w -X castellan/installer/buildinfo.version=$(VERSION)
STATICCHECK_VERSION := v0.8.2
STATICCHECK := $(CACHE)/tools/staticcheck-$(STATICCHECK_VERSION)/staticcheck
FUZZTIME    ?= 5000x
BENCH_NODES ?= 50,200,500
export CASTELLAN_CACHE := $(CACHE)

# Debian packages the tests' real peers and tools need. The login shells are
# the ones a node's user may have: remote commands must pass through each
# unchanged (installer/ssh fails without them when real peers are required).
TEST_PACKAGES := openssh-server openssh-client sudo iproute2 git util-linux mount \
	e2fsprogs dosfstools xfsprogs btrfs-progs parted cryptsetup-bin lvm2 bcache-tools \
	swtpm swtpm-tools tpm2-tools nftables zsh mksh ksh fish tcsh tmux fonts-dejavu-core linux-perf \
	systemd libtss2-esys-3.0.2-0 libtss2-mu0 libtss2-rc0 libtss2-tcti-swtpm0

AGENT_ARCHS ?= $(shell go env GOARCH)

.PHONY: build
build: ## the static castellan binary in bin/, with the node agent (cmd/castellan-agent) for AGENT_ARCHS embedded
	id=$$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n'); \
	rm -f installer/agentbin/dist/castellan-agent-*; \
	for arch in $(AGENT_ARCHS); do \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch go build -trimpath -ldflags "$(LDFLAGS) -X castellan/installer/buildinfo.buildID=$$id" \
			-o installer/agentbin/dist/castellan-agent-linux-$$arch-$$id ./cmd/castellan-agent; \
	done; \
	CGO_ENABLED=0 go build -trimpath -ldflags "$(LDFLAGS) -X castellan/installer/buildinfo.buildID=$$id" -o $(BIN) ./cmd/castellan

.PHONY: test-deps
test-deps: ## install the Debian packages the tests need (root)
	vagrant/scripts/ensure-packages.sh $(TEST_PACKAGES)

.PHONY: kube-apiserver
kube-apiserver: ## build the real kube-apiserver and etcd for the tests (cached in $(CACHE); about 16 min cold)
	test/kube-apiserver/build.sh

.PHONY: test
test: test-deps lint kube-apiserver ## every test that runs on this machine, plus short fuzz runs
	CASTELLAN_REQUIRE_REAL_PEERS=1 go test -count=1 -timeout 30m ./...
	$(MAKE) --no-print-directory fuzz

.PHONY: fuzz
fuzz: ## short runs of every fuzz target in the module (FUZZTIME executions each; scripts/fuzz.sh)
	FUZZTIME=$(FUZZTIME) scripts/fuzz.sh

.PHONY: lint
lint: $(STATICCHECK) ## gofmt, go vet, staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	go vet ./...
	$(STATICCHECK) ./...

$(STATICCHECK):
	GOBIN=$(dir $@) go install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

.PHONY: bench
bench: test-deps ## benchmarks: engine, SSH, no-op rerun and verify at 50/200/500 nodes vs the floor and Ansible, attestation per node (prints figures)
	vagrant/scripts/ensure-packages.sh ansible time
	go test -run '^$$' -bench . -benchtime 20x ./installer/engine
	CASTELLAN_REQUIRE_REAL_PEERS=1 go test -run '^$$' -bench . -benchtime 2x -timeout 30m ./installer/ssh
	CASTELLAN_REQUIRE_REAL_PEERS=1 CASTELLAN_BENCH_NODES=$(BENCH_NODES) go test -run '^$$' -bench Scale -benchtime 3x -timeout 60m ./installer
	CASTELLAN_REQUIRE_REAL_PEERS=1 go test -run '^$$' -bench 'Enrolment|Phase' -benchtime 5x ./phases/identity
	CASTELLAN_REQUIRE_REAL_PEERS=1 go test -run '^$$' -bench 'Attestation' -benchtime 50x ./phases/identity
	CASTELLAN_REQUIRE_REAL_PEERS=1 go test -run '^$$' -bench NoOpRerunIdentityCost -benchtime 3x -timeout 30m ./installer

.PHONY: schema
schema: ## regenerate profiles/cluster.schema.json from the Go types
	go test ./installer/profile -run Schema -update

# --- the Vagrant lab (vagrant/README.md) ---

.PHONY: lab-up lab-down lab-status
lab-up: ## bring the VM lab up (UEFI + Secure Boot; CASTELLAN_BOX_FIRMWARE=bios for SeaBIOS)
	vagrant/lab.sh up
lab-down: ## destroy the lab and everything it started
	vagrant/lab.sh down
lab-status:
	vagrant/lab.sh status

.PHONY: demo
demo: build lab-up ## the main job on the local lab: a real install, then a summary
	vagrant/lab.sh exec $(CURDIR)/$(BIN) apply -f $(LAB_DIR)/profile.yaml --yes
	@echo
	@echo "State repo: $(LAB_DIR)/state   (history: $(BIN) history --state $(LAB_DIR)/state)"
	$(BIN) history --state $(LAB_DIR)/state

.PHONY: demo-tui
demo-tui: build lab-up ## the same install, driven from the interactive TUI (in this terminal)
	vagrant/lab.sh exec $(CURDIR)/$(BIN) -f $(LAB_DIR)/profile.yaml

.PHONY: tui-screenshots
tui-screenshots: test-deps ## redraw docs/tui/*.txt and *.png from a real terminal (tmux, sshd test nodes)
	CASTELLAN_REQUIRE_REAL_PEERS=1 CASTELLAN_TUI_SCREENSHOTS=$(CURDIR)/docs/tui go test -count=1 -run '^(TestTerminal|TestPlanScreens|TestProgressScreens)$$' ./installer/tui

.PHONY: e2e
e2e: build ## UEFI lab: Secure Boot, event log = PCRs, apply, no-op rerun, rollback, refusals; then a BIOS VM boots
	vagrant/e2e.sh

.PHONY: clean
clean:
	rm -rf bin installer/agentbin/dist/castellan-agent-*

.PHONY: help
help:
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14
