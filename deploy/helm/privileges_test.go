package helm_test

import (
	"os"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// agentHostPaths are the host paths the agent mounts, and whether read-only. Each is listed
// with its reason in docs/threat-model.md ("The agent pod's privileges").
var agentHostPaths = map[string]bool{
	"/sys/fs/bpf":          false, // pins: maps and links outlive the agent's container
	"/sys/fs/cgroup":       true,  // cgroup ids of pods, inotify on the kubepods tree
	"/sys/kernel/btf":      true,  // CO-RE relocations against the running kernel
	"/sys/kernel/security": true,  // the active LSM list (is bpf in it?)
	"/var/run/nri":         false, // the runtime's NRI socket: connecting to it needs write
}

// agentCapabilities are the capabilities of the unprivileged agent (agent.privileged=false).
var agentCapabilities = []corev1.Capability{"BPF", "PERFMON", "SYS_ADMIN", "SYS_RESOURCE", "SYS_PTRACE"}

// TestAgentPrivilegesAreTheListedOnes: the rendered pods ask for no privilege beyond those
// docs/threat-model.md lists with a reason; a new hostPath, capability, host namespace or a
// privileged controller fails here until it is argued for there.
func TestAgentPrivilegesAreTheListedOnes(t *testing.T) {
	doc, err := os.ReadFile("../../docs/threat-model.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "## The agent pod's privileges")
	if !ok {
		t.Fatal(`docs/threat-model.md has no "## The agent pod's privileges" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	for p := range agentHostPaths {
		if !strings.Contains(section, "`"+p+"`") {
			t.Errorf("threat model's privileges section does not list host path %s", p)
		}
	}
	for _, c := range agentCapabilities {
		if !strings.Contains(section, "`CAP_"+string(c)+"`") {
			t.Errorf("threat model's privileges section does not list CAP_%s", c)
		}
	}

	for _, privileged := range []bool{true, false} {
		name := "privileged"
		args := []string{"--set", "agent.privileged=true"}
		if !privileged {
			name, args = "capabilities", []string{"--set", "agent.privileged=false"}
		}
		t.Run(name, func(t *testing.T) {
			objs := renderObjects(t, args...)
			ds := decodeAs[appsv1.DaemonSet](t, objs, "DaemonSet", "execgate-agent")
			if ds == nil {
				t.Fatal("no agent DaemonSet")
			}
			spec := ds.Spec.Template.Spec
			if !spec.HostPID || spec.HostNetwork || spec.HostIPC || spec.HostUsers != nil {
				t.Errorf("agent host namespaces: hostPID %v hostNetwork %v hostIPC %v hostUsers %v; want only hostPID",
					spec.HostPID, spec.HostNetwork, spec.HostIPC, spec.HostUsers)
			}
			mounts := map[string]corev1.VolumeMount{}
			for _, m := range spec.Containers[0].VolumeMounts {
				mounts[m.Name] = m
			}
			seen := map[string]bool{}
			for _, v := range spec.Volumes {
				if v.HostPath == nil {
					continue
				}
				ro, listed := agentHostPaths[mounts[v.Name].MountPath]
				if !listed || (v.HostPath.Path != mounts[v.Name].MountPath && v.Name != "bpffs") {
					t.Errorf("agent mounts host path %s at %s: not in the threat model's list", v.HostPath.Path, mounts[v.Name].MountPath)
					continue
				}
				if ro && !mounts[v.Name].ReadOnly {
					t.Errorf("host path %s is mounted writable; only read access is argued for", v.HostPath.Path)
				}
				seen[mounts[v.Name].MountPath] = true
			}
			if len(seen) != len(agentHostPaths) {
				t.Errorf("agent mounts %v of the listed host paths %v", seen, agentHostPaths)
			}
			if len(spec.Containers) != 1 || len(spec.InitContainers) != 0 {
				t.Fatalf("agent pod has %d containers and %d init containers, want one container", len(spec.Containers), len(spec.InitContainers))
			}
			sc := spec.Containers[0].SecurityContext
			if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.RunAsUser == nil || *sc.RunAsUser != 0 {
				t.Fatalf("agent security context %+v: want a read-only root file system and uid 0 set explicitly", sc)
			}
			if privileged {
				if sc.Privileged == nil || !*sc.Privileged {
					t.Errorf("agent.privileged=true rendered no privileged container")
				}
				return
			}
			if sc.Privileged == nil || *sc.Privileged || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				t.Errorf("unprivileged agent: privileged %v allowPrivilegeEscalation %v, want both false", sc.Privileged, sc.AllowPrivilegeEscalation)
			}
			if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || !slices.Equal(sc.Capabilities.Add, agentCapabilities) {
				t.Errorf("unprivileged agent capabilities %+v, want drop ALL and add exactly %v", sc.Capabilities, agentCapabilities)
			}
			if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
				t.Errorf("unprivileged agent seccomp %+v, want RuntimeDefault", sc.SeccompProfile)
			}
			if mounts["bpffs"].MountPropagation == nil || *mounts["bpffs"].MountPropagation != corev1.MountPropagationHostToContainer {
				t.Errorf("unprivileged agent's bpffs propagation %v, want HostToContainer (Bidirectional needs privileged)", mounts["bpffs"].MountPropagation)
			}
		})
	}

	t.Run("controller", func(t *testing.T) {
		objs := renderObjects(t)
		d := decodeAs[appsv1.Deployment](t, objs, "Deployment", "execgate-controller")
		if d == nil {
			t.Fatal("no controller Deployment")
		}
		spec := d.Spec.Template.Spec
		if spec.HostPID || spec.HostNetwork || spec.HostIPC {
			t.Errorf("controller uses a host namespace")
		}
		for _, v := range spec.Volumes {
			if v.HostPath != nil {
				t.Errorf("controller mounts host path %s", v.HostPath.Path)
			}
		}
		for _, c := range spec.Containers {
			sc := c.SecurityContext
			if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.Capabilities == nil || len(sc.Capabilities.Add) != 0 ||
				!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || (sc.Privileged != nil && *sc.Privileged) {
				t.Errorf("controller container %s security context %+v: want non-root, no capability, not privileged", c.Name, sc)
			}
		}
	})
}
