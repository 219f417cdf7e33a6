.PHONY: demo
# The demo needs root (BPF, cgroups), the kernel tools of `make deps` and the
# control-plane binaries of `make tools` (built once, then reused).
demo: deps tools ## local control plane + controller + agent + real enforcement
	$(GO) run ./cmd/execgate-demo
