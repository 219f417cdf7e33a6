.PHONY: demo
# The demo needs root (BPF, cgroups) and the kernel tools of `make deps`.
demo: deps
	$(GO) run ./cmd/execgate-demo
