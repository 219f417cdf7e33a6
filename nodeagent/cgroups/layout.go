package cgroups

import (
	"fmt"
	"path/filepath"
	"strings"
)

// Driver is the kubelet's cgroup driver (KubeletConfiguration cgroupDriver).
type Driver string

const (
	DriverSystemd  Driver = "systemd"
	DriverCgroupfs Driver = "cgroupfs"
)

// QoS is a pod's QoS class; the values are those of Kubernetes' PodQOSClass so
// callers can convert without a table.
type QoS string

const (
	QoSGuaranteed QoS = "Guaranteed"
	QoSBurstable  QoS = "Burstable"
	QoSBestEffort QoS = "BestEffort"
)

// qosClasses is the scan order: Guaranteed pods sit directly in kubepods.
var qosClasses = [...]QoS{QoSGuaranteed, QoSBurstable, QoSBestEffort}

// Runtime is the container runtime a container cgroup name identifies.
type Runtime string

const (
	RuntimeContainerd Runtime = "containerd"
	RuntimeCRIO       Runtime = "cri-o"
	RuntimeDocker     Runtime = "docker"
	// RuntimeUnspecified is reported for the cgroupfs driver's bare "<id>" directories,
	// which containerd and docker (cri-dockerd) both create.
	RuntimeUnspecified Runtime = ""
)

// Limits on names read from the filesystem. NAME_MAX bounds one cgroup name;
// PATH_MAX bounds a whole path.
const (
	maxNameLen     = 255
	maxPathLen     = 4096
	maxPodUIDLen   = 64 // UUIDs are 36 bytes, static pods' md5 hex UIDs 32
	containerIDLen = 64 // containerd, CRI-O and docker ids: 32 random bytes in hex
)

// kubepodsName is the kubelet's node-allocatable cgroup (defaultNodeAllocatableCgroupName),
// created under --cgroup-root when --cgroups-per-qos is on (the default).
const kubepodsName = "kubepods"

// Layout maps pods to cgroup directories the way the kubelet names them
// (pkg/kubelet/cm: CgroupName, ToSystemd, ToCgroupfs, GetPodContainerName).
//
// The kubelet builds an internal name as a list of components,
// [cgroupRoot components..., "kubepods", qos (omitted for Guaranteed), "pod"+uid],
// and renders it per driver:
//
//	cgroupfs: /kubepods/burstable/pod<uid>
//	systemd:  each component has "-" replaced by "_", the components are joined with "-"
//	          and expanded like a systemd slice:
//	          /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice
//
// Note that with the systemd driver a --cgroup-root of "/kubelet" (kind's setting)
// becomes /kubelet.slice/kubelet-kubepods.slice/..., not /kubelet/kubepods.slice.
// To give each simulated node its own subtree that looks like a real node, set Root to
// that subtree and leave the cgroup root at "/".
type Layout struct {
	root   string // directory the kubelet's "/" maps to
	driver Driver
	base   []string // kubelet CgroupName components of kubepods: cgroupRoot parts + "kubepods"
}

// NewLayout returns the layout for a kubelet using driver and cgroupRoot (its
// --cgroup-root; "" and "/" mean the default), with the kubelet's "/" at root: the
// cgroup2 mount on a real node, or a subtree of it for a simulated node.
func NewLayout(root string, driver Driver, cgroupRoot string) (Layout, error) {
	if !filepath.IsAbs(root) {
		return Layout{}, fmt.Errorf("cgroup layout: root %q must be an absolute path", root)
	}
	if driver != DriverSystemd && driver != DriverCgroupfs {
		return Layout{}, fmt.Errorf("cgroup layout: driver %q: want %q or %q", driver, DriverSystemd, DriverCgroupfs)
	}
	var base []string
	if cgroupRoot != "" && cgroupRoot != "/" {
		if !strings.HasPrefix(cgroupRoot, "/") {
			return Layout{}, fmt.Errorf("cgroup layout: kubelet cgroup root %q must start with \"/\" (cgroupfs form, as the kubelet takes it)", cgroupRoot)
		}
		// Same split as the kubelet's ParseCgroupfsToCgroupName. An empty component
		// ("//", trailing "/") would make the kubelet's slice expansion fail, so reject it.
		for _, c := range strings.Split(strings.TrimPrefix(cgroupRoot, "/"), "/") {
			if !validCgroupName(c) {
				return Layout{}, fmt.Errorf("cgroup layout: kubelet cgroup root %q: component %q is empty or has characters outside [A-Za-z0-9._:@-]", cgroupRoot, c)
			}
			base = append(base, c)
		}
	}
	base = append(base, kubepodsName)
	return Layout{root: filepath.Clean(root), driver: driver, base: base}, nil
}

// Root is the directory the kubelet's cgroup "/" maps to.
func (l Layout) Root() string { return l.root }

// Driver is the kubelet cgroup driver this layout mimics.
func (l Layout) Driver() Driver { return l.driver }

// KubepodsPath is the node-allocatable cgroup that holds all pods.
func (l Layout) KubepodsPath() string { return l.path(l.base) }

// QoSPath is the directory pods of class qos are created in; "" for an unknown class.
func (l Layout) QoSPath(qos QoS) string {
	c, ok := l.qosComponents(qos)
	if !ok {
		return ""
	}
	return l.path(c)
}

// PodCgroupPath is the absolute path of the pod's cgroup. It returns "" when uid is not
// a valid pod UID (see ValidatePodUID) or qos is unknown: the kubelet itself refuses
// such names, so no cgroup can exist for them.
func (l Layout) PodCgroupPath(uid string, qos QoS) string {
	c, ok := l.podComponents(uid, qos)
	if !ok {
		return ""
	}
	return l.path(c)
}

// ContainerCgroupPath is the absolute path of a container's cgroup inside its pod's,
// or "" when an argument is invalid. With the cgroupfs driver containerd and docker
// both use the bare id.
func (l Layout) ContainerCgroupPath(uid string, qos QoS, rt Runtime, containerID string) string {
	pod := l.PodCgroupPath(uid, qos)
	name := l.containerName(rt, containerID)
	if pod == "" || name == "" {
		return ""
	}
	return pod + "/" + name
}

// ParsePodCgroup reports whether path (absolute, as PodCgroupPath returns it) is a pod
// cgroup of this layout, and for which pod. It accepts exactly the paths PodCgroupPath
// produces, so PodCgroupPath(ParsePodCgroup(p)) == p whenever ok.
func (l Layout) ParsePodCgroup(path string) (uid string, qos QoS, ok bool) {
	if len(path) > maxPathLen || !strings.HasPrefix(path, l.root) {
		return "", "", false
	}
	rel := strings.TrimPrefix(path, l.root)
	if l.root != "/" {
		if !strings.HasPrefix(rel, "/") {
			return "", "", false
		}
		rel = rel[1:]
	}
	parts := strings.Split(rel, "/")
	for _, p := range parts {
		if !validCgroupName(p) {
			return "", "", false
		}
	}
	name := parts[len(parts)-1]
	for _, q := range qosClasses {
		prefix, suffix := l.podNameAffixes(q)
		if len(name) < len(prefix)+len(suffix) || !strings.HasPrefix(name, prefix) || !strings.HasSuffix(name, suffix) {
			continue
		}
		u := name[len(prefix) : len(name)-len(suffix)]
		if l.driver == DriverSystemd {
			u = strings.ReplaceAll(u, "_", "-")
		}
		// Comparing with the rendered path checks the parent directories and rejects
		// names that only resemble a pod (e.g. "-" in a systemd uid part).
		if ValidatePodUID(u) == nil && l.PodCgroupPath(u, q) == path {
			return u, q, true
		}
	}
	return "", "", false
}

// ParseContainerCgroup reports whether name, one directory name found in a pod cgroup,
// is a container cgroup of this layout's driver, and of which runtime and container.
// Other names (CRI-O's "crio-conmon-<id>", stray directories) are not containers.
// Whenever ok, ContainerCgroupPath renders name back for the returned runtime and id.
func (l Layout) ParseContainerCgroup(name string) (rt Runtime, containerID string, ok bool) {
	if !validCgroupName(name) {
		return "", "", false
	}
	if l.driver == DriverSystemd {
		const suffix = ".scope"
		if !strings.HasSuffix(name, suffix) {
			return "", "", false
		}
		stem := strings.TrimSuffix(name, suffix)
		for _, r := range [...]Runtime{RuntimeContainerd, RuntimeCRIO, RuntimeDocker} {
			if id, found := strings.CutPrefix(stem, systemdScopePrefix(r)); found && validContainerID(id) {
				return r, id, true
			}
		}
		return "", "", false
	}
	if id, found := strings.CutPrefix(name, "crio-"); found && validContainerID(id) {
		return RuntimeCRIO, id, true
	}
	if validContainerID(name) {
		return RuntimeUnspecified, name, true
	}
	return "", "", false
}

// ValidatePodUID checks that uid can name a pod cgroup. The kubelet refuses "_" and
// "/" in cgroup name components, and "_" is what the systemd form turns "-" into, so
// only letters, digits and "-" survive a round trip.
func ValidatePodUID(uid string) error {
	if uid == "" || len(uid) > maxPodUIDLen {
		return fmt.Errorf("pod uid %q: want 1 to %d characters", uid, maxPodUIDLen)
	}
	for i := 0; i < len(uid); i++ {
		c := uid[i]
		if !isAlnum(c) && c != '-' {
			return fmt.Errorf("pod uid %q: character %q at %d is not a letter, digit or \"-\"", uid, c, i)
		}
	}
	return nil
}

// validContainerID accepts the 64 lowercase hex digits that containerd, CRI-O and
// docker use; anything else in a pod cgroup is not a container we track.
func validContainerID(id string) bool {
	if len(id) != containerIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// validCgroupName accepts one path component that could be a kubelet, systemd or
// runtime cgroup name: no separators, no "." or "..", bounded, plain ASCII.
func validCgroupName(s string) bool {
	if s == "" || s == "." || s == ".." || len(s) > maxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !isAlnum(c) && c != '-' && c != '_' && c != '.' && c != ':' && c != '@' {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// qosComponents is the kubelet's CgroupName of the QoS parent: Guaranteed pods live in
// kubepods itself, the other classes in "burstable" and "besteffort" below it.
func (l Layout) qosComponents(qos QoS) ([]string, bool) {
	c := append([]string(nil), l.base...)
	switch qos {
	case QoSGuaranteed:
		return c, true
	case QoSBurstable, QoSBestEffort:
		return append(c, strings.ToLower(string(qos))), true
	}
	return nil, false
}

func (l Layout) podComponents(uid string, qos QoS) ([]string, bool) {
	if ValidatePodUID(uid) != nil {
		return nil, false
	}
	c, ok := l.qosComponents(qos)
	if !ok {
		return nil, false
	}
	return append(c, "pod"+uid), true
}

// podNameAffixes returns what surrounds the (driver-escaped) uid in a pod directory name.
func (l Layout) podNameAffixes(qos QoS) (prefix, suffix string) {
	if l.driver == DriverCgroupfs {
		return "pod", ""
	}
	c, _ := l.qosComponents(qos)
	return systemdJoin(c) + "-pod", ".slice"
}

func (l Layout) containerName(rt Runtime, id string) string {
	if !validContainerID(id) {
		return ""
	}
	if l.driver == DriverSystemd {
		p := systemdScopePrefix(rt)
		if p == "" {
			return ""
		}
		return p + id + ".scope"
	}
	switch rt {
	case RuntimeCRIO:
		return "crio-" + id
	case RuntimeContainerd, RuntimeDocker, RuntimeUnspecified:
		return id
	}
	return ""
}

// systemdScopePrefix is the scope unit prefix each runtime asks systemd for:
// containerd "<slice>:cri-containerd:<id>", CRI-O "crio-<id>.scope", docker "docker-<id>.scope".
func systemdScopePrefix(rt Runtime) string {
	switch rt {
	case RuntimeContainerd:
		return "cri-containerd-"
	case RuntimeCRIO:
		return "crio-"
	case RuntimeDocker:
		return "docker-"
	}
	return ""
}

// path renders a kubelet CgroupName as an absolute path under the layout root.
func (l Layout) path(components []string) string {
	var rel string
	if l.driver == DriverCgroupfs {
		rel = strings.Join(components, "/") // ToCgroupfs
	} else {
		// ToSystemd: escape, join with "-", then runc's ExpandSlice turns
		// "a-b-c.slice" into "a.slice/a-b.slice/a-b-c.slice".
		dirs := make([]string, len(components))
		for i := range components {
			dirs[i] = systemdJoin(components[:i+1]) + ".slice"
		}
		rel = strings.Join(dirs, "/")
	}
	if l.root == "/" {
		return "/" + rel
	}
	return l.root + "/" + rel
}

func systemdJoin(components []string) string {
	esc := make([]string, len(components))
	for i, c := range components {
		esc[i] = strings.ReplaceAll(c, "-", "_")
	}
	return strings.Join(esc, "-")
}
