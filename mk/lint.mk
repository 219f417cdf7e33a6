# Linters, both a stage of `make test` that fails on any finding: golangci-lint for the Go
# code (.golangci.yml: depguard rules that encode docs/design.md's import directions,
# errcheck, staticcheck, revive's exported-comment rule; pinned in test/tools/golangci and
# built into bin/) and clang-format for the kernel program (.clang-format).
GOLANGCI := $(BIN)/golangci-lint
BPF_SOURCES := $(wildcard bpf/*.c bpf/lib/*.h)

.PHONY: lint
lint: $(GOLANGCI) ## golangci-lint (Go) and clang-format --dry-run (bpf/)
	$(GOLANGCI) run ./...
	$(GOLANGCI) run --build-tags realnode ./test/realnode/...
	clang-format --dry-run --Werror $(BPF_SOURCES)

$(GOLANGCI): $(CURDIR)/test/tools/golangci/go.mod $(CURDIR)/test/tools/golangci/go.sum | $(BIN)
	cd $(CURDIR)/test/tools/golangci && $(TOOLS_BUILD) -ldflags '-s -w' -o $@ github.com/golangci/golangci-lint/v2/cmd/golangci-lint
