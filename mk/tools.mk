# Control-plane and packaging tools for e2e tests, built from pinned modules under
# test/tools into $(BIN). Each binary is a file target that depends only on its module's
# go.mod/go.sum, so `make tools` is a no-op once the binaries exist and the pins have
# not changed. Cold build (empty GOCACHE, module cache warm), `make -j2 tools` on the
# 2-core machine while other builds ran (load ~12): 17.5 min wall, 13 CPU-min;
# kube-apiserver + kube-scheduler are ~80% of it. Relinking after a flag change: ~12 s.

TOOLS_DIR := $(CURDIR)/test/tools
KUBE_VERSION := v1.37.2
# Stamp the Kubernetes version the way the upstream build does, so /version, the
# scheduler's compatibility checks and `kube-apiserver --version` report v1.37.2
# rather than v0.0.0-master.
KUBE_LDFLAGS := -s -w \
	-X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) \
	-X k8s.io/component-base/version.gitMajor=1 \
	-X k8s.io/component-base/version.gitMinor=37 \
	-X k8s.io/component-base/version.gitTreeState=clean
# Static binaries like the upstream release builds; GOWORK=off so a go.work at the
# repo root can never change the pinned dependency graphs.
TOOLS_BUILD := CGO_ENABLED=0 GOWORK=off $(GO) build -trimpath
# Must match the require lines in test/tools/{helm,kubeconform}/go.mod.
HELM_VERSION := v3.22.0
KUBECONFORM_VERSION := v0.8.0

KUBE_TOOLS := $(BIN)/kube-apiserver $(BIN)/kube-scheduler $(BIN)/kubelet
TOOLS := $(KUBE_TOOLS) $(BIN)/etcd $(BIN)/helm $(BIN)/kubeconform

.PHONY: tools clean-tools
tools: $(TOOLS) ## build the control-plane binaries into bin/ (pinned modules)

# One grouped target and one `go build` for the three (the kubelet is the real node's,
# test/realnode): they share most packages, and concurrent builds (make -j) would
# each compile them.
$(KUBE_TOOLS) &: $(TOOLS_DIR)/go.mod $(TOOLS_DIR)/go.sum | $(BIN)
	cd $(TOOLS_DIR) && $(TOOLS_BUILD) -ldflags '$(KUBE_LDFLAGS)' -o $(BIN)/ \
		k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet

# The root package of go.etcd.io/etcd/server/v3 is etcd's main (it calls etcdmain.Main).
$(BIN)/etcd: $(TOOLS_DIR)/etcd/go.mod $(TOOLS_DIR)/etcd/go.sum | $(BIN)
	cd $(TOOLS_DIR)/etcd && $(TOOLS_BUILD) -ldflags '-s -w' -o $@ go.etcd.io/etcd/server/v3

$(BIN)/helm: $(TOOLS_DIR)/helm/go.mod $(TOOLS_DIR)/helm/go.sum | $(BIN)
	cd $(TOOLS_DIR)/helm && $(TOOLS_BUILD) -ldflags '-s -w -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION)' -o $@ helm.sh/helm/v3/cmd/helm

$(BIN)/kubeconform: $(TOOLS_DIR)/kubeconform/go.mod $(TOOLS_DIR)/kubeconform/go.sum | $(BIN)
	cd $(TOOLS_DIR)/kubeconform && $(TOOLS_BUILD) -ldflags '-s -w -X main.version=$(KUBECONFORM_VERSION)' -o $@ github.com/yannh/kubeconform/cmd/kubeconform

$(BIN):
	mkdir -p $@

clean-tools: ## remove bin/
	rm -f $(TOOLS)
