package enforcer

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/execgate/execgate/bpf"
	"github.com/execgate/execgate/internal/execpath"
)

// Mode is what a binding does with an executable outside its allowlist. The
// values are the kernel program's (bpf2go-generated), never copied by hand.
type Mode uint8

const (
	ModeLearn   = Mode(bpf.ExecgateModeMODE_LEARN)   // allow and record
	ModeMonitor = Mode(bpf.ExecgateModeMODE_MONITOR) // allow and report
	ModeProtect = Mode(bpf.ExecgateModeMODE_PROTECT) // deny with EPERM and report
)

func (m Mode) String() string {
	switch m {
	case ModeLearn:
		return "Learn"
	case ModeMonitor:
		return "Monitor"
	case ModeProtect:
		return "Protect"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// ParseMode accepts the CRD spellings, case-insensitively.
func ParseMode(s string) (Mode, error) {
	switch strings.ToLower(s) {
	case "learn":
		return ModeLearn, nil
	case "monitor":
		return ModeMonitor, nil
	case "protect":
		return ModeProtect, nil
	}
	return 0, fmt.Errorf("unknown mode %q: want Learn, Monitor or Protect", s)
}

// Action is what the kernel did with an exec outside the allowlist (the
// kernel program's values).
type Action uint8

const (
	ActionLearned  = Action(bpf.ExecgateActionACTION_LEARNED)
	ActionReported = Action(bpf.ExecgateActionACTION_REPORTED)
	ActionDenied   = Action(bpf.ExecgateActionACTION_DENIED)
)

func (a Action) String() string {
	switch a {
	case ActionLearned:
		return "learned"
	case ActionReported:
		return "reported"
	case ActionDenied:
		return "denied"
	}
	return fmt.Sprintf("Action(%d)", uint8(a))
}

// PolicyKey names a policy; the enforcer treats it as opaque.
type PolicyKey string

// UnionContainer is the container name of the slot that holds the union of
// every container's rules; it is what a pod-level cgroup is bound to.
const UnionContainer = ""

// Rules is one container's allowlist. A path ending in "/" is a directory
// prefix rule: it allows every file below that directory.
type Rules struct {
	Paths []string
}

// PolicyVersion is one version of a policy as the kernel will enforce it.
type PolicyVersion struct {
	Key     PolicyKey
	Version uint64
	// Digest names the content (opaque to the enforcer; the agent's is
	// podpolicy.Digest). A version equal to the loaded one is a no-op only
	// when its digest is the loaded one too, so the same generation pushed
	// with other content (a sender that had only part of the policy) cannot
	// be silently ignored. Empty is a digest like any other.
	Digest     string
	Mode       Mode
	Containers map[string]Rules // container name (or WildcardContainer) -> rules; must not use ""
}

// Limits of one request, enforced before anything is written.
const (
	MaxPathLen        = execpath.MaxLen       // PATH_MAX without the NUL
	MaxPrefixLen      = execpath.MaxPrefixLen // bytes of path the LPM key holds
	MaxPathsPerRules  = 1024
	MaxContainers     = 64
	MaxPolicyKeyLen   = 256
	MaxContainerName  = 253
	maxSlotInfoKeyLen = 191
)

// ErrCapacity reports that a map is full; nothing was written.
var ErrCapacity = errors.New("enforcer capacity exceeded")

// ValidatePath checks one allowlist entry and says what to fix. The rules are
// internal/execpath's, shared with the CRD and the agent's gRPC server, so an entry
// those accepted is never refused here.
func ValidatePath(p string) error {
	return execpath.Check(p)
}

// Validate checks a whole policy version; the error names the first bad field.
func (p PolicyVersion) Validate() error {
	if p.Key == "" || len(p.Key) > MaxPolicyKeyLen {
		return fmt.Errorf("policy key must be 1-%d bytes, got %d", MaxPolicyKeyLen, len(p.Key))
	}
	if strings.IndexByte(string(p.Key), 0) >= 0 {
		return errors.New("policy key contains a NUL byte")
	}
	if p.Mode < ModeLearn || p.Mode > ModeProtect {
		return fmt.Errorf("policy %s: unknown mode %d", p.Key, p.Mode)
	}
	if len(p.Containers) > MaxContainers {
		return fmt.Errorf("policy %s: %d containers, at most %d", p.Key, len(p.Containers), MaxContainers)
	}
	// Sorted, so that the same bad policy always reports the same first problem.
	for _, name := range slices.Sorted(maps.Keys(p.Containers)) {
		r := p.Containers[name]
		if name == UnionContainer || len(name) > MaxContainerName || strings.IndexByte(name, 0) >= 0 {
			return fmt.Errorf("policy %s: invalid container name %s: want 1-%d bytes, no NUL", p.Key, execpath.Quote(name), MaxContainerName)
		}
		if len(r.Paths) > MaxPathsPerRules {
			return fmt.Errorf("policy %s container %s: %d paths, at most %d", p.Key, name, len(r.Paths), MaxPathsPerRules)
		}
		for i, path := range r.Paths {
			if err := ValidatePath(path); err != nil {
				return fmt.Errorf("policy %s container %s path[%d]: %w", p.Key, name, i, err)
			}
		}
	}
	return nil
}

// compiledRules is one slot's content: exact paths and directory prefixes,
// deduplicated and sorted so that equal rules compare equal.
type compiledRules struct {
	exact    []string
	prefixes []string
}

func compile(paths ...[]string) compiledRules {
	seen := map[string]bool{}
	var c compiledRules
	for _, list := range paths {
		for _, p := range list {
			if seen[p] {
				continue
			}
			seen[p] = true
			if strings.HasSuffix(p, "/") {
				c.prefixes = append(c.prefixes, p)
			} else {
				c.exact = append(c.exact, p)
			}
		}
	}
	sort.Strings(c.exact)
	sort.Strings(c.prefixes)
	return c
}

// compileSlots returns the rules of every slot of a policy version: one per
// container, the union slot, and the wildcard slot (empty unless listed).
// The union slot also holds sandbox: what the pod's sandbox runs before any
// container of the pod exists.
func compileSlots(p PolicyVersion, sandbox []string) map[string]compiledRules {
	out := make(map[string]compiledRules, len(p.Containers)+1)
	all := make([][]string, 0, len(p.Containers)+1)
	all = append(all, sandbox)
	for name, r := range p.Containers {
		out[name] = compile(r.Paths)
		all = append(all, r.Paths)
	}
	out[UnionContainer] = compile(all...)
	if _, ok := out[WildcardContainer]; !ok {
		out[WildcardContainer] = compiledRules{}
	}
	return out
}
