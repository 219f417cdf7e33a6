package v1alpha1

import "github.com/execgate/execgate/internal/execpath"

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
	// MaxExecutablesPerPolicy is the most entries a RulesByContainer may list over all its
	// containers (issue 14.2). Without it one policy of 64 containers x 1024 paths needs
	// 131,072 kernel entries (each path is loaded for its container and for the pod's
	// union), four times a node's default rule map: a tenant could fill every node it
	// lands on. 4096 paths need at most 8,192 entries, a quarter of the default map,
	// which is the chart's default per-namespace share (agent.maps.namespaceSharePercent).
	MaxExecutablesPerPolicy = 4096
	// MaxPathLength is the longest executable path, in bytes (PATH_MAX without its NUL).
	MaxPathLength = execpath.MaxLen
	// MaxPrefixRuleLength is the longest directory prefix rule, in bytes, including its
	// trailing "/": the key size of the kernel's prefix-match map.
	MaxPrefixRuleLength = execpath.MaxPrefixLen
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
// +kubebuilder:validation:XValidation:rule="self.map(c, has(self[c].executables) ? size(self[c].executables) : 0).sum() <= 4096",message="at most 4096 executables over all containers: each is loaded into the kernel of every node the pods run on; use directory prefix rules (ending in \"/\") or the \"*\" key for rules many containers share"
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
	// The CEL rules compare with short constants only (startsWith, endsWith, ==, in),
	// whose estimated cost does not grow with the path; a macro such as
	// [...].exists(n, self.endsWith(n)) would, hence the && chain for the loaders.
	// Together they are internal/execpath's rules (crd_test.go checks both agree);
	// invalid UTF-8, which execpath also refuses, cannot reach the API server at all
	// (JSON is UTF-8).

	// Executables lists the absolute paths the container may execute. The path is the one
	// the kernel executes: symlinks and "." or ".." segments resolved, so write
	// "/usr/bin/python3.12" rather than "/usr/bin/python3" if the latter is a symlink.
	// An entry ending in "/" is a directory prefix rule: it allows every file below that
	// directory, at any depth ("/opt/app/" allows "/opt/app/bin/server"). "/" alone is
	// refused: it would allow everything.
	// Paths are clean: no "//", no "." or ".." segments, no NUL byte.
	// Dynamic loaders (ld-linux-*.so.*, ld-musl-*.so.1) and the directories that hold them
	// (/lib/, /usr/lib/, /usr/, ...) are refused: "ld.so /any/file" runs any readable file,
	// so allowing the loader would allow everything.
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
	// +kubebuilder:validation:items:XValidation:rule="self != '/'",message="\"/\" would allow every file; list directories such as /usr/bin/ instead"
	// +kubebuilder:validation:items:XValidation:rule="!self.endsWith('/ld.so') && !self.endsWith('/ld.so.1') && !self.endsWith('/ld64.so.1') && !self.endsWith('/ld64.so.2') && !self.endsWith('/ld-linux.so.2') && !self.endsWith('/ld-linux.so.3') && !self.endsWith('/ld-linux-x86-64.so.2') && !self.endsWith('/ld-linux-x32.so.2') && !self.endsWith('/ld-linux-aarch64.so.1') && !self.endsWith('/ld-linux-aarch64_be.so.1') && !self.endsWith('/ld-linux-armhf.so.3') && !self.endsWith('/ld-linux-riscv64-lp64d.so.1') && !self.endsWith('/ld-linux-loongarch-lp64d.so.1') && !self.endsWith('/ld-musl-x86_64.so.1') && !self.endsWith('/ld-musl-i386.so.1') && !self.endsWith('/ld-musl-aarch64.so.1') && !self.endsWith('/ld-musl-armhf.so.1') && !self.endsWith('/ld-musl-arm.so.1') && !self.endsWith('/ld-musl-ppc64le.so.1') && !self.endsWith('/ld-musl-s390x.so.1') && !self.endsWith('/ld-musl-riscv64.so.1')",message="a dynamic loader may not be listed: \"ld.so /any/file\" runs any readable file, so allowing it allows everything; programs do not need it listed"
	// +kubebuilder:validation:items:XValidation:rule="!(self in ['/usr/', '/lib/', '/lib64/', '/lib32/', '/libx32/', '/usr/lib/', '/usr/lib64/', '/usr/lib32/', '/usr/libx32/', '/lib/x86_64-linux-gnu/', '/usr/lib/x86_64-linux-gnu/', '/lib/aarch64-linux-gnu/', '/usr/lib/aarch64-linux-gnu/', '/lib/i386-linux-gnu/', '/usr/lib/i386-linux-gnu/', '/lib/arm-linux-gnueabihf/', '/usr/lib/arm-linux-gnueabihf/'])",message="this directory holds the dynamic loader (ld.so) on common distributions, which would let any readable file run; list narrower directories or the executables themselves"
	Executables []string `json:"executables,omitempty"`
}
