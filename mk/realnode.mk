# The real node (test/realnode): a qemu VM booting the 6.12 row's Debian kernel
# with containerd, runc, the CNI plugins and the kubelet (bin/kubelet), joined
# to a control plane on the host. Its tests carry the realnode build tag so that
# `go test ./...` does not run a VM beside the other packages.
REALNODE_FLAGS ?= -count=1 -timeout 30m
.PHONY: realnode
realnode: deps tools ## the RealNode tests: a real kubelet and containerd node in a VM
	$(GO) test -tags realnode $(REALNODE_FLAGS) -v ./test/realnode/

# The agent on the real node alone (agent_test.go): Protect pods under the real
# kubelet, containerd and runc. EXECGATE_REALNODE_NRI=off runs the control without
# NRI, where the two-container case shows the union window instead.
.PHONY: realnode-agent
realnode-agent: deps tools ## the agent's RealNode scenarios only (TestRealNodeProtect)
	$(GO) test -tags realnode $(REALNODE_FLAGS) -v -run TestRealNodeProtect ./test/realnode/
