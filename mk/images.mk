# The container image the chart names (deploy/images): both static binaries for
# linux/amd64 and linux/arm64 in one OCI index, written as an OCI layout tarball
# under $(IMAGES_BUILD) without a container daemon. Same commit, same digest.
IMAGES_BUILD ?= $(CURDIR)/.build/images
IMAGES_PLATFORMS ?= linux/amd64,linux/arm64

.PHONY: images
images: ## OCI image of both binaries, amd64+arm64, as .build/images/execgate-<appVersion>.oci.tar
	$(GO) run ./deploy/images/cmd/execgate-images -module $(CURDIR) -build $(IMAGES_BUILD) -platforms $(IMAGES_PLATFORMS)
