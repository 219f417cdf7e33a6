# execgate: `make demo` runs the product on a local control plane; `make test` runs every test.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
export PATH := $(BIN):$(PATH)

.PHONY: all build generate test verify-generated demo bench tools help
all: build

help: ## this list: every target with one line
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sort -u | awk -F':.*## ' '{ printf "%-18s %s\n", $$1, $$2 }'

build: ## build every Go package
	$(GO) build ./...

include mk/*.mk
