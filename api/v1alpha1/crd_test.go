package v1alpha1_test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/execgate/execgate/api/v1alpha1"
	"github.com/execgate/execgate/internal/execpath"
)

// These tests read the committed CRDs, so they catch markers that did not make it into
// the schema and limits that drifted from the Go constants. They cannot evaluate CEL: the
// CEL library is not a dependency of this module. The rules were checked once with
// apiextensions-apiserver's own CRD validation (CEL compilation and cost estimate) and
// evaluation in a scratch module (again on 2026-11-25 after the "/" and dynamic-loader
// rules were added: no cost errors, and the CEL verdicts equal execpath.Check on every
// loader name, loader directory and edge case; the harness's kube-apiserver v1.37.2
// accepted the CRD and agreed with execpath on 14 edge cases); running them in a real
// kube-apiserver on every change is test/e2e's job.

const crdDir = "../../deploy/helm/execgate/crds"

func loadCRD(t *testing.T, file string) *apiextensionsv1.CustomResourceDefinition {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(crdDir, file))
	if err != nil {
		t.Fatalf("read CRD (run make generate-api): %v", err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.UnmarshalStrict(b, &crd); err != nil {
		t.Fatalf("decode %s: %v", file, err)
	}
	return &crd
}

// version returns the only version of crd, which must be served and stored.
func version(t *testing.T, crd *apiextensionsv1.CustomResourceDefinition) *apiextensionsv1.CustomResourceDefinitionVersion {
	t.Helper()
	if len(crd.Spec.Versions) != 1 {
		t.Fatalf("%s: %d versions, want 1", crd.Name, len(crd.Spec.Versions))
	}
	v := &crd.Spec.Versions[0]
	if v.Name != v1alpha1.Version || !v.Served || !v.Storage {
		t.Fatalf("%s: version %s served=%v storage=%v", crd.Name, v.Name, v.Served, v.Storage)
	}
	if v.Subresources == nil || v.Subresources.Status == nil {
		t.Errorf("%s: no status subresource", crd.Name)
	}
	return v
}

// prop walks properties; "*" steps into additionalProperties, "[]" into items.
func prop(t *testing.T, s *apiextensionsv1.JSONSchemaProps, path ...string) *apiextensionsv1.JSONSchemaProps {
	t.Helper()
	for i, p := range path {
		var next *apiextensionsv1.JSONSchemaProps
		switch p {
		case "*":
			if s.AdditionalProperties != nil {
				next = s.AdditionalProperties.Schema
			}
		case "[]":
			if s.Items != nil {
				next = s.Items.Schema
			}
		default:
			if ps, ok := s.Properties[p]; ok {
				next = &ps
			}
		}
		if next == nil {
			t.Fatalf("schema has no %s", strings.Join(path[:i+1], "."))
		}
		s = next
	}
	return s
}

// wantRules checks that s carries a CEL rule containing each fragment.
func wantRules(t *testing.T, where string, s *apiextensionsv1.JSONSchemaProps, fragments ...string) {
	t.Helper()
	for _, f := range fragments {
		if !slices.ContainsFunc(s.XValidations, func(r apiextensionsv1.ValidationRule) bool {
			return strings.Contains(r.Rule, f) && r.Message != ""
		}) {
			t.Errorf("%s: no x-kubernetes-validations rule with %q and a message; have %+v", where, f, s.XValidations)
		}
	}
}

func columns(v *apiextensionsv1.CustomResourceDefinitionVersion) []string {
	var names []string
	for _, c := range v.AdditionalPrinterColumns {
		names = append(names, c.Name)
	}
	return names
}

// checkRulesSchema checks the schema shared by both kinds' spec.rulesByContainer.
func checkRulesSchema(t *testing.T, spec *apiextensionsv1.JSONSchemaProps) *apiextensionsv1.JSONSchemaProps {
	rules := prop(t, spec, "rulesByContainer")
	if rules.MaxProperties == nil || *rules.MaxProperties != v1alpha1.MaxContainers {
		t.Errorf("rulesByContainer.maxProperties = %v, want %d", rules.MaxProperties, v1alpha1.MaxContainers)
	}
	wantRules(t, "rulesByContainer", rules, fmt.Sprintf(".sum() <= %d", v1alpha1.MaxExecutablesPerPolicy))
	wantRules(t, "rulesByContainer", rules, `c == '*'`, `size(c) <= 63`, `c.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')`)
	list := prop(t, rules, "*", "executables")
	if list.MaxItems == nil || *list.MaxItems != v1alpha1.MaxExecutablesPerContainer {
		t.Errorf("executables.maxItems = %v, want %d", list.MaxItems, v1alpha1.MaxExecutablesPerContainer)
	}
	if list.XListType == nil || *list.XListType != "set" {
		t.Errorf("executables: x-kubernetes-list-type = %v, want set (no duplicates)", list.XListType)
	}
	item := prop(t, list, "[]")
	if item.MaxLength == nil || *item.MaxLength != v1alpha1.MaxPathLength {
		t.Errorf("executables[].maxLength = %v, want %d", item.MaxLength, v1alpha1.MaxPathLength)
	}
	wantRules(t, "executables[]", item, `self.startsWith('/')`, `size(self) <= 252`, `self != '/'`,
		`!self.endsWith('/ld-linux-x86-64.so.2')`, `!(self in ['/usr/'`)
	return item
}

// quotedIn returns the single-quoted CEL string literals of the rule containing fragment.
func quotedIn(t *testing.T, s *apiextensionsv1.JSONSchemaProps, fragment string) []string {
	t.Helper()
	for _, r := range s.XValidations {
		if strings.Contains(r.Rule, fragment) {
			var out []string
			for _, m := range regexp.MustCompile(`'([^']*)'`).FindAllStringSubmatch(r.Rule, -1) {
				out = append(out, m[1])
			}
			return out
		}
	}
	t.Fatalf("no rule with %q", fragment)
	return nil
}

func TestWorkloadPolicyCRD(t *testing.T) {
	crd := loadCRD(t, "execgate.io_workloadpolicies.yaml")
	if crd.Name != "workloadpolicies."+v1alpha1.GroupName || crd.Spec.Scope != apiextensionsv1.NamespaceScoped ||
		crd.Spec.Names.Kind != "WorkloadPolicy" || !slices.Equal(crd.Spec.Names.ShortNames, []string{"wp"}) {
		t.Errorf("unexpected identity: name %s scope %s names %+v", crd.Name, crd.Spec.Scope, crd.Spec.Names)
	}
	v := version(t, crd)
	if got, want := columns(v), []string{"Mode", "In-Force", "Pods", "Nodes", "Failing", "Ready", "Age"}; !slices.Equal(got, want) {
		t.Errorf("printer columns %v, want %v", got, want)
	}
	root := v.Schema.OpenAPIV3Schema
	wantRules(t, "root", root, `size(self.metadata.name) <= 63`)

	spec := prop(t, root, "spec")
	if !slices.Equal(spec.Required, []string{"mode"}) {
		t.Errorf("spec.required = %v, want [mode]", spec.Required)
	}
	var modes []string
	for _, e := range prop(t, spec, "mode").Enum {
		modes = append(modes, strings.Trim(string(e.Raw), `"`))
	}
	if want := []string{"Learn", "Monitor", "Protect"}; !slices.Equal(modes, want) {
		t.Errorf("spec.mode enum %v, want %v", modes, want)
	}
	wantRules(t, "spec", spec,
		`self.mode == 'Learn' || (has(self.rulesByContainer) && size(self.rulesByContainer) > 0)`,
		`size(self.rulesByContainer[c].executables) > 0`)
	checkRulesSchema(t, spec)

	failing := prop(t, root, "status", "failingNodes")
	if failing.MaxItems == nil || *failing.MaxItems != v1alpha1.MaxFailingNodes {
		t.Errorf("status.failingNodes.maxItems = %v, want %d", failing.MaxItems, v1alpha1.MaxFailingNodes)
	}
	if want := []string{"lastTransitionTime", "node", "reason"}; !slices.Equal(prop(t, failing, "[]").Required, want) {
		t.Errorf("failingNodes[].required = %v, want %v", prop(t, failing, "[]").Required, want)
	}
	for _, f := range []string{"observedGeneration", "mode", "conditions", "podsInForce", "podsTotal", "nodesInForce", "failingNodesTotal"} {
		prop(t, root, "status", f)
	}
}

func TestWorkloadPolicyProposalCRD(t *testing.T) {
	crd := loadCRD(t, "execgate.io_workloadpolicyproposals.yaml")
	if crd.Name != "workloadpolicyproposals."+v1alpha1.GroupName || crd.Spec.Scope != apiextensionsv1.NamespaceScoped ||
		crd.Spec.Names.Kind != "WorkloadPolicyProposal" || !slices.Equal(crd.Spec.Names.ShortNames, []string{"wpp"}) {
		t.Errorf("unexpected identity: name %s scope %s names %+v", crd.Name, crd.Spec.Scope, crd.Spec.Names)
	}
	v := version(t, crd)
	if got, want := columns(v), []string{"Kind", "Workload", "Executables", "Pods", "Updated", "Age"}; !slices.Equal(got, want) {
		t.Errorf("printer columns %v, want %v", got, want)
	}
	spec := prop(t, v.Schema.OpenAPIV3Schema, "spec")
	workload := prop(t, spec, "workload")
	wantRules(t, "spec.workload", workload, `self == oldSelf`, `self.apiVersion.startsWith('apps/')`)
	if want := []string{"apiVersion", "kind", "name"}; !slices.Equal(workload.Required, want) {
		t.Errorf("spec.workload.required = %v, want %v", workload.Required, want)
	}
	checkRulesSchema(t, spec)
	for _, f := range []string{"lastUpdated", "observedPods", "executablesObserved"} {
		prop(t, v.Schema.OpenAPIV3Schema, "status", f)
	}
}

// TestExecutableSchemaMatchesGo compares, on every short path over an alphabet that
// reaches each rule, the schema's verdict (pattern, length limits, and the two CEL rules,
// which are simple enough to restate here) with ValidateExecutable.
func TestExecutableSchemaMatchesGo(t *testing.T) {
	item := checkRulesSchema(t, prop(t, version(t, loadCRD(t, "execgate.io_workloadpolicies.yaml")).Schema.OpenAPIV3Schema, "spec"))
	pattern, err := regexp.Compile(item.Pattern)
	if err != nil {
		t.Fatalf("executables[].pattern %q: %v", item.Pattern, err)
	}
	// The loader rules list their constants; they must be execpath's, in any order.
	var loaders []string
	for _, suffix := range quotedIn(t, item, `self.endsWith('/ld-linux-x86-64.so.2')`) {
		loaders = append(loaders, strings.TrimPrefix(suffix, "/"))
	}
	loaderDirs := quotedIn(t, item, `self in [`)
	if want := execpath.DynamicLoaders(); !sameSet(loaders, want) {
		t.Errorf("CRD loader rule names %q, execpath refuses %q: update the marker in rules_types.go", loaders, want)
	}
	if want := execpath.LoaderDirs(); !sameSet(loaderDirs, want) {
		t.Errorf("CRD loader directory rule lists %q, execpath refuses %q: update the marker in rules_types.go", loaderDirs, want)
	}
	schemaAccepts := func(p string) bool {
		return len(p) >= 1 && len(p) <= int(*item.MaxLength) && pattern.MatchString(p) &&
			strings.HasPrefix(p, "/") && // CEL: self.startsWith('/')
			(!strings.HasSuffix(p, "/") || len(p) <= 252) && // CEL: prefix rule length
			p != "/" && // CEL: self != '/'
			!slices.ContainsFunc(loaders, func(l string) bool { return strings.HasSuffix(p, "/"+l) }) &&
			!slices.Contains(loaderDirs, p)
	}
	check := func(p string) {
		if s, g := schemaAccepts(p), v1alpha1.ValidateExecutable(p) == nil; s != g {
			t.Errorf("path %q: schema accepts=%v, Validate accepts=%v (%v)", p, s, g, v1alpha1.ValidateExecutable(p))
		}
	}
	alphabet := []string{"/", ".", "a", "\x00"}
	var walk func(prefix string, depth int)
	walk = func(prefix string, depth int) {
		check(prefix)
		if depth == 0 {
			return
		}
		for _, c := range alphabet {
			walk(prefix+c, depth-1)
		}
	}
	walk("", 8)
	long := strings.Repeat("a", 4096)
	for _, p := range []string{"/" + long[:4094], "/" + long[:4095], "/" + long[:250] + "/", "/" + long[:251] + "/", "/usr/.hidden/...", "/usr/bin/python3.12",
		"/opt/日本語/実行", "/usr/bin/", "/usr/local/", "/usr/bin/ld.so.bak", "/opt/xld.so"} {
		check(p)
	}
	for _, l := range execpath.DynamicLoaders() {
		check("/opt/" + l)
		check("/opt/" + l + "/")
	}
	for _, d := range execpath.LoaderDirs() {
		check(d)
		check(d + "sub/")
		check(strings.TrimSuffix(d, "/"))
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
