# baton's build and test entry points. `make test` is what CI runs.
GO ?= go
TESTFLAGS ?= -race -timeout 40m

.PHONY: test deps vet unit bench build faults etcdctl

# test installs the servers and the browser (chromium, for baton web's
# tests) when they are missing, builds the real etcdctl the interop tests
# run, then vets and runs every test with the race detector.
test: deps etcdctl vet unit

deps:
	@if ! command -v memcached >/dev/null 2>&1 || ! command -v redis-server >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing memcached, redis-server and chromium"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq memcached redis-server chromium >/dev/null; \
		else \
			echo "memcached/redis-server/chromium missing: run 'apt-get install -y memcached redis-server chromium' as root" >&2; \
		fi; \
	fi

vet:
	$(GO) vet ./...

unit:
	BATON_ETCDCTL=$(ETCDCTL) $(GO) test $(TESTFLAGS) ./...

# etcdctl builds etcd's own etcdctl, v3.7.3 as pinned in tools/etcdctl, into
# tools/etcdctl/bin. "go install go.etcd.io/etcd/etcdctl/v3@v3.7.3" cannot
# (etcd's go.mod has replace directives); as a dependency of the small
# module in tools/etcdctl it builds. The tests of cmd/baton run it.
ETCDCTL := $(CURDIR)/tools/etcdctl/bin/etcdctl
etcdctl:
	cd tools/etcdctl && $(GO) build -o bin/etcdctl go.etcd.io/etcd/etcdctl/v3

build:
	$(GO) build -o baton ./cmd/baton

# bench runs the side-by-side benchmark (baton against etcd's package) on an
# embedded etcd started for the run.
bench:
	$(GO) run ./cmd/baton bench

# faults runs the long fault suite (internal/faults): a 3-member cluster of
# member processes behind proxies, worker processes, kills, pauses,
# partitions and client-path faults, checked for linearizability. The seed
# is printed; pass FAULTS_SEED to reproduce a run, FAULTS_DIR to choose the
# report folder (new or empty: a run never mixes with an earlier one's).
FAULTS_DURATION ?= 10m
FAULTS_SEED ?= 0
FAULTS_DIR ?=
faults:
	$(GO) test -race -run TestFaultsLong -timeout 30m -v ./internal/faults -args \
		-faults.duration=$(FAULTS_DURATION) -faults.seed=$(FAULTS_SEED) $(if $(FAULTS_DIR),-faults.dir=$(FAULTS_DIR))
