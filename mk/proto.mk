# Protobuf/gRPC code generation for the agent API. The plugins are Go tools pinned in go.mod;
# protoc comes from the system (Debian: protobuf-compiler).
PROTOC ?= protoc
PROTO_DIR := proto
PROTO_FILES := $(shell find $(PROTO_DIR) -name '*.proto' 2>/dev/null)

.PHONY: generate-proto
generate: generate-proto

generate-proto: ## regenerate the gRPC/protobuf code
	@command -v $(PROTOC) >/dev/null || { echo "protoc not found: install protobuf-compiler" >&2; exit 1; }
	$(PROTOC) -I $(PROTO_DIR) \
		--plugin=protoc-gen-go=$$($(GO) tool -n protoc-gen-go) \
		--plugin=protoc-gen-go-grpc=$$($(GO) tool -n protoc-gen-go-grpc) \
		--go_out=$(PROTO_DIR) --go_opt=paths=source_relative \
		--go-grpc_out=$(PROTO_DIR) --go-grpc_opt=paths=source_relative \
		$(PROTO_FILES)
