# Generation, tests and CI. `make test` is the one command CI runs: it builds
# what the tests need (control-plane tools, once), checks generated code is
# current, and runs every Go test, including the real-kernel and real
# control-plane ones.
# A package that needs longer is hung: the e2e package, the longest, takes ~13 min in CI.
GOTEST_FLAGS ?= -count=1 -timeout 25m

.PHONY: deps

# System packages a fresh Debian machine lacks. Only installs what is missing.
deps: ## install missing system packages (apt)
	@missing=""; \
	for p in clang:clang llvm-strip:llvm bpftool:bpftool protoc:protobuf-compiler ip:iproute2 \
		qemu-system-x86_64:qemu-system-x86 qemu-system-aarch64:qemu-system-arm cpio:cpio dpkg-deb:dpkg xz:xz-utils clang-format:clang-format; do \
		command -v $${p%%:*} >/dev/null || missing="$$missing $${p##*:}"; \
	done; \
	[ -f /usr/include/bpf/bpf_helpers.h ] || missing="$$missing libbpf-dev"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# CI_FUZZTIME bounds each fuzz target's random search in `make test` (make fuzz for longer).
CI_FUZZTIME ?= 5s

# Each stage prints how long it took (CI reads them in its log).
test: ## every test, as CI runs it (.ci/run)
	@set -e; t0=$$(date +%s); \
	stage() { s=$$(date +%s); echo "== stage $$1"; shift; "$$@"; echo "== stage took $$(( $$(date +%s) - s ))s (total $$(( $$(date +%s) - t0 ))s)"; }; \
	stage "deps: system packages" $(MAKE) --no-print-directory deps; \
	stage "tools: control-plane binaries" $(MAKE) --no-print-directory tools; \
	stage "verify-generated" $(MAKE) --no-print-directory verify-generated; \
	stage "vet" sh -c '$(GO) vet ./... && $(GO) vet -tags realnode ./test/realnode/'; \
	stage "lint (golangci-lint, clang-format)" $(MAKE) --no-print-directory lint; \
	stage "go test" mk/watch-tests.sh $(GO) test $(GOTEST_FLAGS) ./...; \
	stage "kernel matrix (test/kernels/matrix, CI subsets)" $(MAKE) --no-print-directory kernels-ci; \
	stage "real node (test/realnode: kubelet, containerd, runc in a VM)" $(MAKE) --no-print-directory realnode; \
	stage "fuzz ($(CI_FUZZTIME) per target)" $(MAKE) --no-print-directory fuzz FUZZTIME=$(CI_FUZZTIME)
