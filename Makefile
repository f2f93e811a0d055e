# modproxy — common tasks. `make help` lists them.

GO        ?= go
BIN       ?= bin/modproxy
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
FUZZTIME  ?= 10s
# The short fuzz run of `make test`: each fuzzer runs this many inputs. A
# count, not a duration: with a duration, Go 1.26's fuzz coordinator can
# report "context deadline exceeded" at the deadline on a loaded machine
# (go.dev/issue/75804, fixed in Go 1.27), failing a run that found nothing.
FUZZTIME_SHORT ?= 30000x
# Arguments for `make run`, e.g. make run ARGS="--listen :9090 --offline".
ARGS      ?=
# The committed eBPF objects were built with Debian 12's clang 14; another
# clang version produces a different (equally valid) object.
BPF_CC    ?= clang-14

.PHONY: help build run test test-short fuzz lint vet bench bpf bpf-check e2e-live clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-12s %s\n",$$1,$$2}'

build: ## build bin/modproxy (static, no cgo)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/modproxy

run: ## run the proxy with its defaults (./modproxy.db, upstream from go env GOPROXY)
	$(GO) run ./cmd/modproxy serve $(ARGS)

test: vet ## the full test suite: vet, race-enabled tests, a short fuzz run
	$(GO) test -race -count=1 -timeout 15m ./...
	$(MAKE) --no-print-directory fuzz FUZZTIME=$(FUZZTIME_SHORT)

test-short: ## quick tests without the race detector
	$(GO) test -short -count=1 ./...

fuzz: ## fuzz the request-path, Authorization-header, go-import page and store-record parsers, FUZZTIME each (FUZZTIME=10m)
	$(GO) test -run '^$$' -fuzz '^FuzzParsePath$$' -fuzztime $(FUZZTIME) ./proxy/
	$(GO) test -run '^$$' -fuzz '^FuzzParseAuthorization$$' -fuzztime $(FUZZTIME) ./auth/
	$(GO) test -run '^$$' -fuzz '^FuzzParseGoImports$$' -fuzztime $(FUZZTIME) ./direct/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeRecord$$' -fuzztime $(FUZZTIME) ./cache/

vet: ## go vet and gofmt
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '_bpfe[lb]\.go$$')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

lint: vet ## vet, gofmt and staticcheck when installed
	@if command -v staticcheck >/dev/null; then staticcheck ./...; else echo "staticcheck not installed; skipped"; fi

bench: ## load and latency benchmarks against a local fake upstream (see README)
	$(GO) run ./internal/bench

bpf: ## regenerate the eBPF objects and Go bindings (needs clang, llvm-strip, bpftool)
	cd bpf && BPF2GO_CC=$(BPF_CC) $(GO) generate ./...

bpf-check: bpf ## fail if regenerating the eBPF objects changes committed files
	git diff --exit-code -- bpf/
	@test -z "$$(git status --porcelain -- bpf/)" || { git status --porcelain -- bpf/; echo "untracked generated files"; exit 1; }

e2e-live: build ## opt-in smoke test against the real default upstream (network)
	MODPROXY_E2E_LIVE=1 $(GO) test -count=1 -timeout 15m -run 'TestLive' -v ./cmd/modproxy/

clean:
	rm -rf bin
