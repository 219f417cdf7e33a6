package kernels

import (
	"slices"
	"strings"
	"testing"
)

// TestMatrixFileParses keeps the committed matrix readable by the runner:
// every row pins a version, names known modes and has a userland.
func TestMatrixFileParses(t *testing.T) {
	m, err := ReadMatrix("matrix")
	if err != nil {
		t.Fatal(err)
	}
	arches := map[string]bool{}
	for _, r := range m.Rows {
		arches[r.Kernel.Arch] = true
		if r.Kernel.Version == "" || len(r.Modes) == 0 {
			t.Errorf("row %s: %+v", r.Name, r)
		}
	}
	if !arches["amd64"] || !arches["arm64"] {
		t.Errorf("the matrix must cover amd64 and arm64, has %v", arches)
	}
	var node []string
	for _, p := range m.Node["amd64"] {
		node = append(node, p.Name)
	}
	for _, want := range []string{"containerd", "runc", "containernetworking-plugins"} {
		if !slices.Contains(node, want) {
			t.Errorf("the real node's packages %v lack %s", node, want)
		}
	}
}

func TestParseMatrixErrors(t *testing.T) {
	const user = "userland | amd64 | busybox-static=1 | bookworm\n"
	const good = "kernel | r | amd64 | linux-image=1.0 | trixie | - | lsm,exec_kill | lsm | all\n"
	for _, tc := range []struct{ name, in, want string }{
		{"no rows", user, "no kernel rows"},
		{"unpinned", "kernel | r | amd64 | linux-image | trixie | - | lsm | lsm | all\n" + user, "want name=version"},
		{"unknown mode", "kernel | r | amd64 | k=1 | trixie | - | lsm,kprobe | lsm | all\n" + user, `"kprobe" is none of`},
		{"auto not required", "kernel | r | amd64 | k=1 | trixie | - | exec_kill | lsm | all\n" + user, "auto mode"},
		{"unknown arch", "kernel | r | riscv64 | k=1 | trixie | - | lsm | lsm | all\n" + user, "riscv64"},
		{"no userland for arch", good, "no userland row names amd64"},
		{"short row", "kernel | r | amd64 | k=1\n" + user, "9 fields"},
		{"twice", good + good + user, "named twice"},
		{"unknown kind", "kernal | r\n", "kernel, userland or node"},
		{"empty skip", "kernel | r | amd64 | k=1 | trixie | - | lsm | lsm | skip:\n" + user, "want skip:<test>"},
		{"bad skip", "kernel | r | amd64 | k=1 | trixie | - | lsm | lsm | skip:Test(\n" + user, "want skip:<test>"},
		{"bad run", "kernel | r | amd64 | k=1 | trixie | - | lsm | lsm | Test[\n" + user, "no -test.run regexp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseMatrix(strings.NewReader(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	m, err := ParseMatrix(strings.NewReader("# comment\n" + good + user))
	if err != nil {
		t.Fatal(err)
	}
	r := m.Rows[0]
	if r.Kernel.Spec() != "linux-image:amd64=1.0" || r.CIRun != "" || r.AutoMode != "lsm" || len(m.Suites()) != 2 {
		t.Fatalf("parsed %+v, suites %v", r, m.Suites())
	}
	m, err = ParseMatrix(strings.NewReader(strings.Replace(good, "| all", "| skip:TestSlow,TestBPFCycles", 1) + user))
	if err != nil {
		t.Fatal(err)
	}
	if r := m.Rows[0]; r.CISkip != "TestSlow|TestBPFCycles" || r.CIRun != "" {
		t.Fatalf("skip column parsed as run %q, skip %q", r.CIRun, r.CISkip)
	}
	script := InitScript(m.Rows[0], nil, []TestBinary{{Name: "enforcer", Skip: "TestSlow"}})
	if !strings.Contains(script, "'-test.skip=TestSlow'") {
		t.Fatalf("init script does not pass -test.skip:\n%s", script)
	}
}

func TestPackageDebName(t *testing.T) {
	p := Package{Name: "busybox-static", Version: "1:1.35.0-4+deb12u1+b1", Arch: "arm64"}
	if got := p.DebName(); got != "busybox-static_1%3a1.35.0-4+deb12u1+b1_arm64.deb" {
		t.Fatal(got)
	}
}

// TestConsoleVerdict reads consoles as init prints them: a row passes only
// when every binary ran to an exit code of 0 with no skip, and a panic, a
// missing VMDONE or a skipped test fails it whatever qemu's exit code.
func TestConsoleVerdict(t *testing.T) {
	bins := []TestBinary{{Name: "enforcer"}, {Name: "agent"}}
	modes := []string{"lsm", "exec_kill"}
	head := "VMKERNEL 6.12.117+deb13-amd64 x86_64\nVMLSM lockdown,capability,bpf\n"
	ok := "VMSTART enforcer\n--- PASS: TestA (1.0s)\n    --- PASS: TestA/lsm (0.5s)\n    --- PASS: TestA/exec_kill (0.5s)\nVMRESULT enforcer exit=0\n" +
		"VMSTART agent\n--- PASS: TestBPFB (1.0s)\nVMRESULT agent exit=0\n"
	for _, tc := range []struct{ name, console, want string }{
		{"pass", head + ok + "VMDONE\n", ""},
		{"panic", head + "[    1.4] Kernel panic - not syncing: Fatal exception in interrupt\n", "kernel panicked"},
		{"no VMDONE", head + ok, "before VMDONE"},
		{"skip", head + strings.Replace(ok, "--- PASS: TestBPFB", "--- SKIP: TestBPFB", 1) + "VMDONE\n", "agent skipped TestBPFB"},
		{"failed", head + strings.Replace(ok, "VMRESULT enforcer exit=0", "VMRESULT enforcer exit=1", 1) + "VMDONE\n", "enforcer exited 1"},
		{"one binary", head + ok[:strings.Index(ok, "VMSTART agent")] + "VMDONE\n", "1 of 2 test binaries ran"},
		{"mode never passed", head + strings.Replace(ok, "TestA/exec_kill", "TestA/other", 1) + "VMDONE\n", "no test passed in exec_kill"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var res Result
			var log strings.Builder
			done, panicked := readConsole(strings.NewReader(tc.console), &log, &res, modes)
			got := verdict(t.Context(), &res, bins, modes, done, panicked, nil)
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Fatalf("verdict %q, want %q", got, tc.want)
			}
			// A -test.skip subset still runs every mode; a -test.run subset need not.
			skipping := []TestBinary{{Name: "enforcer", Skip: "TestSlow"}, {Name: "agent", Skip: "TestSlow"}}
			if again := verdict(t.Context(), &res, skipping, modes, done, panicked, nil); again != got {
				t.Fatalf("with -test.skip: verdict %q, want %q", again, got)
			}
			running := []TestBinary{{Name: "enforcer", Run: "TestA"}, {Name: "agent"}}
			if again := verdict(t.Context(), &res, running, modes, done, panicked, nil); tc.name == "mode never passed" && again != "" {
				t.Fatalf("with -test.run: verdict %q, want a pass", again)
			}
			if log.String() != tc.console || res.Kernel != "6.12.117+deb13-amd64" || res.LSM != "lockdown,capability,bpf" {
				t.Fatalf("console copy or header lost: %+v", res)
			}
		})
	}
}

func TestDispatchOrderWholeSuiteFirstInCI(t *testing.T) {
	rows := []Row{{Name: "a", CISkip: "x"}, {Name: "b"}, {Name: "c", CIRun: "y"}, {Name: "d"}}
	names := func(order []int) string {
		var s string
		for _, i := range order {
			s += rows[i].Name
		}
		return s
	}
	if got := names(dispatchOrder(rows, true)); got != "bdac" {
		t.Errorf("CI order %s, want bdac (whole-suite rows first, then the matrix's order)", got)
	}
	if got := names(dispatchOrder(rows, false)); got != "abcd" {
		t.Errorf("full-run order %s, want the matrix's, abcd", got)
	}
}
