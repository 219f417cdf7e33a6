# Every generated file, in one place. All of it is committed; `make generate`
# rebuilds it and verify-generated (a stage of `make test`) fails on any diff.
PROTOC ?= protoc
PROTO_DIR := proto
PROTO_FILES := $(shell find $(PROTO_DIR) -name '*.proto' 2>/dev/null)

.PHONY: generate generate-bpf generate-bench-bpf generate-api generate-proto verify-generated
generate: generate-bpf generate-bench-bpf generate-api generate-proto ## regenerate every generated file

# bpf2go output (*_bpfel.go + .o) is committed; Debian's clang builds it.
generate-bpf: ## rebuild the bpf2go objects with clang
	cd bpf && $(GO) generate .

# The peer baseline's BPF object (benchmarks/peer), bpf2go output like bpf/'s.
generate-bench-bpf: ## rebuild the benchmark peer's bpf2go object
	cd benchmarks/peer && $(GO) generate .

# api/v1alpha1: deepcopy code and the CRDs Helm installs from deploy/helm/execgate/crds/;
# the //go:generate lines in api/v1alpha1/doc.go are the one recipe.
generate-api: ## regenerate deepcopy code and CRD YAML
	cd api/v1alpha1 && $(GO) generate .

# The gRPC/protobuf plugins are Go tools pinned in go.mod; protoc comes from the system
# (Debian: protobuf-compiler).
generate-proto: ## regenerate the gRPC/protobuf code
	@command -v $(PROTOC) >/dev/null || { echo "protoc not found: install protobuf-compiler" >&2; exit 1; }
	$(PROTOC) -I $(PROTO_DIR) \
		--plugin=protoc-gen-go=$$($(GO) tool -n protoc-gen-go) \
		--plugin=protoc-gen-go-grpc=$$($(GO) tool -n protoc-gen-go-grpc) \
		--go_out=$(PROTO_DIR) --go_opt=paths=source_relative \
		--go-grpc_out=$(PROTO_DIR) --go-grpc_opt=paths=source_relative \
		$(PROTO_FILES)

verify-generated: deps ## regenerate everything; fail on any diff
	$(MAKE) generate
	@git diff --exit-code --stat -- bpf api proto deploy/helm/execgate/crds benchmarks/peer || \
		{ echo "generated code is stale: run 'make generate' and commit" >&2; exit 1; }
