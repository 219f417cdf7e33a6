package execbench

import (
	"fmt"
	"testing"
	"time"

	"github.com/execgate/execgate/internal/testenv"
	"github.com/execgate/execgate/nodeagent/enforcer"
)

func TestTimeExecsInCgroup(t *testing.T) {
	testenv.RequireBPF(t) // root and cgroup v2
	p, err := BuildPrograms(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cg := testenv.NewCgroup(t, "", fmt.Sprintf("execgate-execbench-%d", time.Now().UnixNano()))
	d, err := TimeExecs(cg, p, 50)
	if err != nil {
		t.Fatal(err)
	}
	if len(d) != 50 {
		t.Fatalf("%d samples, want 50", len(d))
	}
	for i, v := range d {
		if v <= 0 || v > 10*time.Second {
			t.Fatalf("sample %d = %v", i, v)
		}
	}
	if _, err := ExecDenied(cg, p); err == nil {
		t.Fatal("ExecDenied: no error for an exec that ran")
	}
}

func TestSummarize(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i))
	}
	s := Summarize(d)
	want := Summary{N: 100, Median: 50, P99: 99, Mean: 50, Min: 1}
	if s != want {
		t.Fatalf("Summarize = %+v, want %+v", s, want)
	}
	if d[0] != 100 {
		t.Fatal("Summarize sorted its input")
	}
	if (Summarize(nil) != Summary{}) {
		t.Fatal("empty sample")
	}
}

func TestPodPolicy(t *testing.T) {
	p := PodPolicy(7, 3, "/bin/a", "/bin/b")
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	paths := p.Containers[Container].Paths
	if len(paths) != PathsPerPolicy || paths[0] != "/bin/a" || paths[1] != "/bin/b" || p.Version != 3 || p.Mode != enforcer.ModeProtect {
		t.Fatalf("policy %+v", p)
	}
	if SyntheticCgroupID(3, false) == SyntheticCgroupID(3, true) || SyntheticCgroupID(3, true) == SyntheticCgroupID(4, false) {
		t.Fatal("synthetic cgroup ids collide")
	}
}
