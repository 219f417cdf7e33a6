package cgroups

import (
	"strings"
	"testing"
)

func TestPodCgroupPath(t *testing.T) {
	const uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
	const esc = "0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0"
	tests := []struct {
		root       string
		driver     Driver
		cgroupRoot string
		qos        QoS
		want       string
	}{
		{"/sys/fs/cgroup", DriverSystemd, "/", QoSBurstable,
			"/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + esc + ".slice"},
		{"/sys/fs/cgroup", DriverSystemd, "", QoSBestEffort,
			"/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + esc + ".slice"},
		{"/sys/fs/cgroup", DriverSystemd, "/", QoSGuaranteed,
			"/sys/fs/cgroup/kubepods.slice/kubepods-pod" + esc + ".slice"},
		{"/sys/fs/cgroup", DriverCgroupfs, "/", QoSBurstable,
			"/sys/fs/cgroup/kubepods/burstable/pod" + uid},
		{"/sys/fs/cgroup", DriverCgroupfs, "/", QoSBestEffort,
			"/sys/fs/cgroup/kubepods/besteffort/pod" + uid},
		{"/sys/fs/cgroup", DriverCgroupfs, "/", QoSGuaranteed,
			"/sys/fs/cgroup/kubepods/pod" + uid},
		// kind runs its kubelet with --cgroup-root=/kubelet and the systemd driver.
		{"/sys/fs/cgroup", DriverSystemd, "/kubelet", QoSBurstable,
			"/sys/fs/cgroup/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod" + esc + ".slice"},
		// "-" in --cgroup-root components is escaped like in any other component.
		{"/sys/fs/cgroup", DriverSystemd, "/execgate-e2e/node-1", QoSGuaranteed,
			"/sys/fs/cgroup/execgate_e2e.slice/execgate_e2e-node_1.slice/execgate_e2e-node_1-kubepods.slice/execgate_e2e-node_1-kubepods-pod" + esc + ".slice"},
		{"/sys/fs/cgroup", DriverCgroupfs, "/execgate-e2e/node-1", QoSBurstable,
			"/sys/fs/cgroup/execgate-e2e/node-1/kubepods/burstable/pod" + uid},
		// A simulated node: its own subtree as the kubelet's "/".
		{"/sys/fs/cgroup/unified/execgate-e2e/node-1", DriverSystemd, "/", QoSBurstable,
			"/sys/fs/cgroup/unified/execgate-e2e/node-1/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + esc + ".slice"},
		{"/", DriverCgroupfs, "/", QoSGuaranteed, "/kubepods/pod" + uid},
	}
	for _, tt := range tests {
		l := mustLayout(t, tt.root, tt.driver, tt.cgroupRoot)
		got := l.PodCgroupPath(uid, tt.qos)
		if got != tt.want {
			t.Errorf("%s %s root=%q %s:\n got %s\nwant %s", tt.root, tt.driver, tt.cgroupRoot, tt.qos, got, tt.want)
		}
		if u, q, ok := l.ParsePodCgroup(got); !ok || u != uid || q != tt.qos {
			t.Errorf("ParsePodCgroup(%s) = %q, %q, %v", got, u, q, ok)
		}
	}
}

func TestLayoutPathsRejectInvalid(t *testing.T) {
	l := mustLayout(t, "/sys/fs/cgroup", DriverSystemd, "/")
	for _, uid := range []string{"", "a_b", "a/b", "../x", strings.Repeat("a", 65), "a b", "ä"} {
		if p := l.PodCgroupPath(uid, QoSBurstable); p != "" {
			t.Errorf("PodCgroupPath(%q) = %q, want \"\"", uid, p)
		}
	}
	if p := l.PodCgroupPath(uidA, "Unknown"); p != "" {
		t.Errorf("PodCgroupPath(unknown qos) = %q", p)
	}
	if p := l.ContainerCgroupPath(uidA, QoSBurstable, RuntimeUnspecified, cidA); p != "" {
		t.Errorf("systemd ContainerCgroupPath(unspecified runtime) = %q", p)
	}
	if p := l.ContainerCgroupPath(uidA, QoSBurstable, RuntimeContainerd, "abc"); p != "" {
		t.Errorf("ContainerCgroupPath(short id) = %q", p)
	}
}

func TestNewLayoutRejects(t *testing.T) {
	tests := []struct {
		root, cgroupRoot string
		driver           Driver
	}{
		{"relative", "/", DriverSystemd},
		{"/sys/fs/cgroup", "/", "fancy"},
		{"/sys/fs/cgroup", "kubelet", DriverSystemd},
		{"/sys/fs/cgroup", "/a//b", DriverSystemd},
		{"/sys/fs/cgroup", "/a/", DriverCgroupfs},
		{"/sys/fs/cgroup", "/a/../b", DriverCgroupfs},
		{"/sys/fs/cgroup", "/a b", DriverCgroupfs},
	}
	for _, tt := range tests {
		if _, err := NewLayout(tt.root, tt.driver, tt.cgroupRoot); err == nil {
			t.Errorf("NewLayout(%q, %q, %q) succeeded", tt.root, tt.driver, tt.cgroupRoot)
		}
	}
}

func TestParsePodCgroup(t *testing.T) {
	sd := mustLayout(t, "/sys/fs/cgroup", DriverSystemd, "/")
	fs := mustLayout(t, "/sys/fs/cgroup", DriverCgroupfs, "/")
	const esc = "0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0"
	tests := []struct {
		name string
		l    Layout
		path string
		uid  string
		qos  QoS
		ok   bool
	}{
		{"systemd burstable", sd, "/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + esc + ".slice", uidA, QoSBurstable, true},
		{"systemd guaranteed", sd, "/sys/fs/cgroup/kubepods.slice/kubepods-pod" + esc + ".slice", uidA, QoSGuaranteed, true},
		{"systemd static pod uid", sd, "/sys/fs/cgroup/kubepods.slice/kubepods-pod6e4d1ab0f8c0e5f3d3a8b9c7e2f1a0b9.slice", "6e4d1ab0f8c0e5f3d3a8b9c7e2f1a0b9", QoSGuaranteed, true},
		{"cgroupfs burstable", fs, "/sys/fs/cgroup/kubepods/burstable/pod" + uidA, uidA, QoSBurstable, true},
		{"cgroupfs guaranteed", fs, "/sys/fs/cgroup/kubepods/pod" + uidA, uidA, QoSGuaranteed, true},

		{"systemd qos slice is not a pod", sd, "/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice", "", "", false},
		{"cgroupfs qos dir is not a pod", fs, "/sys/fs/cgroup/kubepods/burstable", "", "", false},
		{"systemd uid with dashes", sd, "/sys/fs/cgroup/kubepods.slice/kubepods-pod" + uidA + ".slice", "", "", false},
		{"cgroupfs uid with underscores", fs, "/sys/fs/cgroup/kubepods/pod" + esc, "", "", false},
		{"wrong qos parent", sd, "/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/kubepods-burstable-pod" + esc + ".slice", "", "", false},
		{"systemd name under cgroupfs layout", fs, "/sys/fs/cgroup/kubepods.slice/kubepods-pod" + esc + ".slice", "", "", false},
		{"other root", sd, "/sys/fs/cgroupx/kubepods.slice/kubepods-pod" + esc + ".slice", "", "", false},
		{"trailing slash", fs, "/sys/fs/cgroup/kubepods/pod" + uidA + "/", "", "", false},
		{"double slash", fs, "/sys/fs/cgroup//kubepods/pod" + uidA, "", "", false},
		{"dot dot", fs, "/sys/fs/cgroup/kubepods/burstable/../pod" + uidA, "", "", false},
		{"empty uid", fs, "/sys/fs/cgroup/kubepods/pod", "", "", false},
		{"empty uid systemd", sd, "/sys/fs/cgroup/kubepods.slice/kubepods-pod.slice", "", "", false},
		{"nested deeper", fs, "/sys/fs/cgroup/kubepods/pod" + uidA + "/pod" + uidA, "", "", false},
		{"uid too long", fs, "/sys/fs/cgroup/kubepods/pod" + strings.Repeat("a", 65), "", "", false},
		{"control character", fs, "/sys/fs/cgroup/kubepods/pod\n" + uidA, "", "", false},
		{"empty", fs, "", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			uid, qos, ok := tt.l.ParsePodCgroup(tt.path)
			if ok != tt.ok || uid != tt.uid || qos != tt.qos {
				t.Fatalf("ParsePodCgroup(%q) = %q, %q, %v; want %q, %q, %v", tt.path, uid, qos, ok, tt.uid, tt.qos, tt.ok)
			}
		})
	}
}

func TestParseContainerCgroup(t *testing.T) {
	sd := mustLayout(t, "/sys/fs/cgroup", DriverSystemd, "/")
	fs := mustLayout(t, "/sys/fs/cgroup", DriverCgroupfs, "/")
	tests := []struct {
		name string
		l    Layout
		in   string
		rt   Runtime
		id   string
		ok   bool
	}{
		{"containerd", sd, "cri-containerd-" + cidA + ".scope", RuntimeContainerd, cidA, true},
		{"cri-o", sd, "crio-" + cidB + ".scope", RuntimeCRIO, cidB, true},
		{"docker", sd, "docker-" + cidC + ".scope", RuntimeDocker, cidC, true},
		{"cgroupfs bare id", fs, cidA, RuntimeUnspecified, cidA, true},
		{"cgroupfs cri-o", fs, "crio-" + cidA, RuntimeCRIO, cidA, true},

		{"cri-o conmon", sd, "crio-conmon-" + cidA + ".scope", "", "", false},
		{"cgroupfs cri-o conmon", fs, "crio-conmon-" + cidA, "", "", false},
		{"uppercase id", sd, "cri-containerd-" + strings.ToUpper(cidC) + ".scope", "", "", false},
		{"short id", sd, "cri-containerd-abc.scope", "", "", false},
		{"long id", fs, cidA + "0", "", "", false},
		{"no suffix", sd, "cri-containerd-" + cidA, "", "", false},
		{"slice suffix", sd, "cri-containerd-" + cidA + ".slice", "", "", false},
		{"systemd name under cgroupfs", fs, "cri-containerd-" + cidA + ".scope", "", "", false},
		{"bare id under systemd", sd, cidA, "", "", false},
		{"path separator", fs, "x/" + cidA, "", "", false},
		{"dot dot", fs, "..", "", "", false},
		{"empty", sd, "", "", "", false},
		{"too long", sd, strings.Repeat("a", 300), "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt, id, ok := tt.l.ParseContainerCgroup(tt.in)
			if ok != tt.ok || rt != tt.rt || id != tt.id {
				t.Fatalf("ParseContainerCgroup(%q) = %q, %q, %v; want %q, %q, %v", tt.in, rt, id, ok, tt.rt, tt.id, tt.ok)
			}
		})
	}
}

// FuzzParseCgroupName feeds untrusted names and paths to the parsers: they must not
// panic, must accept only what the formatters produce (so a parsed name renders back
// to itself), and must accept everything the formatters produce.
func FuzzParseCgroupName(f *testing.F) {
	for _, s := range []string{
		"kubepods-burstable-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice",
		"kubepods.slice/kubepods-pod6e4d1ab0f8c0e5f3d3a8b9c7e2f1a0b9.slice",
		"kubepods/burstable/pod" + uidA,
		"kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-podabc.slice",
		"cri-containerd-" + cidA + ".scope", "crio-" + cidB, "docker-" + cidC + ".scope", cidA,
		uidA, "", "/", "..", "pod", "kubepods-pod.slice", "crio-conmon-" + cidA + ".scope",
	} {
		f.Add(s)
	}
	layouts := []Layout{
		mustLayout(f, "/sys/fs/cgroup", DriverSystemd, "/"),
		mustLayout(f, "/sys/fs/cgroup", DriverCgroupfs, "/"),
		mustLayout(f, "/r", DriverSystemd, "/kubelet"),
		mustLayout(f, "/", DriverCgroupfs, "/e2e/node-1"),
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, l := range layouts {
			// As a pod cgroup path below the root.
			p := strings.TrimSuffix(l.Root(), "/") + "/" + s
			if uid, qos, ok := l.ParsePodCgroup(p); ok {
				if err := ValidatePodUID(uid); err != nil {
					t.Fatalf("%s: ParsePodCgroup(%q) accepted invalid uid: %v", l.Driver(), p, err)
				}
				if back := l.PodCgroupPath(uid, qos); back != p {
					t.Fatalf("%s: ParsePodCgroup(%q) = %q %q, which renders as %q", l.Driver(), p, uid, qos, back)
				}
			}
			// As a directory name in a pod cgroup.
			if rt, id, ok := l.ParseContainerCgroup(s); ok {
				if strings.ContainsRune(s, '/') || !validContainerID(id) {
					t.Fatalf("%s: ParseContainerCgroup(%q) accepted %q %q", l.Driver(), s, rt, id)
				}
				if back := l.containerName(rt, id); back != s {
					t.Fatalf("%s: ParseContainerCgroup(%q) = %q %q, which renders as %q", l.Driver(), s, rt, id, back)
				}
			}
			// As a pod uid or container id handed to the formatters.
			if ValidatePodUID(s) == nil {
				for _, q := range qosClasses {
					p := l.PodCgroupPath(s, q)
					if uid, qos, ok := l.ParsePodCgroup(p); !ok || uid != s || qos != q {
						t.Fatalf("%s: PodCgroupPath(%q, %s) = %q parses as %q %q %v", l.Driver(), s, q, p, uid, qos, ok)
					}
				}
			}
			if validContainerID(s) {
				for _, rt := range []Runtime{RuntimeContainerd, RuntimeCRIO, RuntimeDocker, RuntimeUnspecified} {
					name := l.containerName(rt, s)
					if name == "" {
						continue
					}
					if _, id, ok := l.ParseContainerCgroup(name); !ok || id != s {
						t.Fatalf("%s: container name %q for %s parses as %q %v", l.Driver(), name, rt, id, ok)
					}
				}
			}
		}
	})
}
