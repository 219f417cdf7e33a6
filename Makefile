# execgate: `make demo` runs the product on a local control plane; `make test` runs every test.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
export PATH := $(BIN):$(PATH)

.PHONY: all build generate test verify-generated demo bench tools
all: build

build:
	$(GO) build ./...

include mk/*.mk
