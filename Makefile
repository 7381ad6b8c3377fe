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
FUZZTIME    ?= 15s
export CASTELLAN_CACHE := $(CACHE)

# Debian packages the tests' real peers and tools need.
TEST_PACKAGES := openssh-server openssh-client sudo iproute2 git util-linux \
	e2fsprogs dosfstools xfsprogs btrfs-progs parted cryptsetup-bin

.PHONY: build
build: ## the static castellan binary in bin/
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/castellan

.PHONY: test-deps
test-deps: ## install the Debian packages the tests need (root)
	vagrant/scripts/ensure-packages.sh $(TEST_PACKAGES)

.PHONY: test
test: test-deps lint ## every test that runs on this machine, plus short fuzz runs
	CASTELLAN_REQUIRE_REAL_PEERS=1 go test -count=1 -timeout 30m ./...
	$(MAKE) --no-print-directory fuzz

.PHONY: fuzz
fuzz: ## short runs of every fuzz target (FUZZTIME each)
	go test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./installer/profile
	go test -run '^$$' -fuzz '^FuzzDetectSignature$$' -fuzztime $(FUZZTIME) ./phases/preflight
	go test -run '^$$' -fuzz '^FuzzCommandLine$$' -fuzztime $(FUZZTIME) ./installer/ssh

.PHONY: lint
lint: $(STATICCHECK) ## gofmt, go vet, staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	go vet ./...
	$(STATICCHECK) ./...

$(STATICCHECK):
	GOBIN=$(dir $@) go install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

.PHONY: bench
bench: test-deps ## benchmarks: plan time, SSH connect, preflight vs Ansible (prints figures)
	vagrant/scripts/ensure-packages.sh ansible
	go test -run '^$$' -bench . -benchtime 20x ./installer/engine
	CASTELLAN_REQUIRE_REAL_PEERS=1 go test -run '^$$' -bench . -benchtime 2x -timeout 30m ./installer/ssh ./installer

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

.PHONY: e2e
e2e: build ## UEFI lab: Secure Boot, event log = PCRs, apply, no-op rerun, rollback, refusals; then a BIOS VM boots
	vagrant/e2e.sh

.PHONY: clean
clean:
	rm -rf bin

.PHONY: help
help:
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14
