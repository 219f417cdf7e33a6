package v1alpha1

// Limits of a rule set. They come from the kernel side of execgate: a path longer than
// PATH_MAX-1 can never be executed, and the BPF LPM trie that holds directory prefix rules
// has a fixed 252-byte key (see bpf/). The counts keep one object well under etcd's
// 1.5 MiB limit and bound the cost of the CEL rules in the CRD schema.
const (
	// AnyContainer as a key of RulesByContainer applies its rules to every container of the
	// pod that has no key of its own.
	AnyContainer = "*"
	// MaxContainers is the most keys a RulesByContainer may have.
	MaxContainers = 64
	// MaxExecutablesPerContainer is the most entries one ContainerRules may list.
	MaxExecutablesPerContainer = 1024
	// MaxPathLength is the longest executable path, in bytes (PATH_MAX without its NUL).
	MaxPathLength = 4095
	// MaxPrefixRuleLength is the longest directory prefix rule, in bytes, including its
	// trailing "/": the key size of the kernel's prefix-match map.
	MaxPrefixRuleLength = 252
)

// RulesByContainer maps a container name to the executables that container may run.
//
// A key is the name of a container of the pod: init, regular and ephemeral containers are
// matched alike (names are unique across all three). The key "*" (AnyContainer) gives the
// rules for every container that has no key of its own, so a policy written for the
// application container still covers an injected sidecar or a "kubectl debug" container.
// A container that matches neither its own key nor "*" has an empty allowlist: in Protect
// mode it cannot execute anything (execgate fails closed).
//
// +kubebuilder:validation:MaxProperties=64
// +kubebuilder:validation:XValidation:rule="self.all(c, c == '*' || (size(c) <= 63 && c.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')))",message="every key must be a container name (a DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit) or \"*\" for any container not listed"
type RulesByContainer map[string]ContainerRules

// For returns the rules of the named container: its own entry, else the "*" entry. ok is
// false when neither exists, which means nothing is allowed.
func (r RulesByContainer) For(container string) (rules ContainerRules, ok bool) {
	if rules, ok = r[container]; ok {
		return rules, true
	}
	rules, ok = r[AnyContainer]
	return rules, ok
}

// ContainerRules is the allowlist of one container.
type ContainerRules struct {
	// The segment rules are a pattern, not CEL: the estimated cost of a CEL string scan,
	// times 64 containers x 1024 entries of 4095 bytes, is over the API server's budget
	// for a CRD. The pattern reads: "/", then segments that are neither empty (which
	// would make "//"), "." nor "..", no NUL byte, and an optional trailing "/".

	// Executables lists the absolute paths the container may execute. The path is the one
	// the kernel executes: symlinks and "." or ".." segments resolved, so write
	// "/usr/bin/python3.12" rather than "/usr/bin/python3" if the latter is a symlink.
	// An entry ending in "/" is a directory prefix rule: it allows every file below that
	// directory, at any depth ("/opt/app/" allows "/opt/app/bin/server"). "/" alone allows
	// everything.
	// Paths are clean: no "//", no "." or ".." segments, no NUL byte.
	// Limits: at most 1024 entries, paths of at most 4095 bytes, prefix rules of at most
	// 252 bytes.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=1024
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=4095
	// +kubebuilder:validation:items:XValidation:rule="self.startsWith('/')",message="must be an absolute path (start with \"/\")"
	// +kubebuilder:validation:items:Pattern=`^/(?:(?:[^/.\x00][^/\x00]*|\.[^/.\x00][^/\x00]*|\.\.[^/\x00]+)(?:/(?:[^/.\x00][^/\x00]*|\.[^/.\x00][^/\x00]*|\.\.[^/\x00]+))*/?)?$`
	// +kubebuilder:validation:items:XValidation:rule="!self.endsWith('/') || size(self) <= 252",message="a directory prefix rule (ending in \"/\") must be at most 252 bytes long, the key size of the kernel's prefix-match map"
	Executables []string `json:"executables,omitempty"`
}
