# api/v1alpha1: deepcopy code and the CRDs Helm installs from deploy/helm/execgate/crds/.
# Both are committed; the //go:generate lines in api/v1alpha1/doc.go are the one recipe.
.PHONY: generate-api
generate-api: ## regenerate deepcopy code and CRD YAML
	cd api/v1alpha1 && $(GO) generate .
