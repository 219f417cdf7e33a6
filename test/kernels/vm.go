package kernels

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// BinaryResult is what the console said about one test binary.
type BinaryResult struct {
	Name    string   `json:"name"`
	Exit    int      `json:"exit"` // -1: never finished
	Passed  int      `json:"passed"`
	Failed  []string `json:"failed,omitempty"`
	Skipped []string `json:"skipped,omitempty"`
}

// Result is one row's run.
type Result struct {
	Row         string         `json:"row"`
	Arch        string         `json:"arch"`
	Package     string         `json:"package"`
	Kernel      string         `json:"kernel"` // uname -r inside the VM
	LSM         string         `json:"lsm"`
	CI          bool           `json:"ci"` // ran the row's CI subset
	ModesPassed []string       `json:"modesPassed"`
	Binaries    []BinaryResult `json:"binaries"`
	Seconds     int            `json:"seconds"`
	Date        string         `json:"date"`
	Log         string         `json:"log"`
	Problem     string         `json:"problem,omitempty"` // why the row failed; "" = passed
}

// Passed says whether the row passed.
func (r *Result) Passed() bool { return r.Problem == "" }

// VM is one qemu boot.
type VM struct {
	Arch    string
	Kernel  string
	Initrd  string
	Append  []string
	MemMB   int
	CPUs    int
	Timeout time.Duration
	// Net replaces the default "-net none" with these qemu arguments (the real
	// node's tap device).
	Net []string
}

// Command is the qemu command line of v, its console on stdout.
func (v VM) Command(ctx context.Context) (*exec.Cmd, error) { return v.command(ctx) }

func (v VM) command(ctx context.Context) (*exec.Cmd, error) {
	a, ok := Arches[v.Arch]
	if !ok {
		return nil, fmt.Errorf("no qemu for %s", v.Arch)
	}
	args := []string{"-accel", "tcg", "-m", strconv.Itoa(v.MemMB), "-smp", strconv.Itoa(v.CPUs),
		"-kernel", v.Kernel, "-initrd", v.Initrd,
		"-append", strings.Join(append([]string{"console=" + a.Console, "panic=-1", "oops=panic", "loglevel=2"}, v.Append...), " "),
		"-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot"}
	if len(v.Net) > 0 {
		args = append(args, v.Net...)
	} else {
		args = append(args, "-net", "none")
	}
	switch v.Arch {
	case "amd64":
		args = append(args, "-cpu", "max")
	case "arm64":
		// pauth-impdef: the architected pointer-auth algorithm is slow to emulate.
		args = append(args, "-M", "virt", "-cpu", "max,pauth-impdef=on")
	}
	cmd := exec.CommandContext(ctx, a.Qemu, args...)
	cmd.Stdin = nil
	return cmd, nil
}

var (
	testLine   = regexp.MustCompile(`^\s*--- (PASS|FAIL|SKIP): (\S+)`)
	resultLine = regexp.MustCompile(`VMRESULT (\S+) exit=(\d+)`)
)

// Boot runs the VM, copies the console to log and reads the verdict from it.
// qemu's exit code says nothing (poweroff and panic both exit 0 with
// -no-reboot), so only VMRESULT/VMDONE lines count.
func (v VM) Boot(ctx context.Context, log io.Writer, res *Result, bins []TestBinary, modes []string) {
	ctx, cancel := context.WithTimeout(ctx, v.Timeout)
	defer cancel()
	start := time.Now()
	defer func() { res.Seconds = int(time.Since(start).Seconds()) }()
	cmd, err := v.command(ctx)
	if err != nil {
		res.Problem = err.Error()
		return
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		res.Problem = err.Error()
		return
	}
	cmd.Stderr = log
	if err := cmd.Start(); err != nil {
		res.Problem = fmt.Sprintf("start %s: %v", cmd.Path, err)
		return
	}
	done, panicked := readConsole(out, log, res, modes)
	waitErr := cmd.Wait()
	res.Problem = verdict(ctx, res, bins, modes, done, panicked, waitErr)
}

// readConsole copies the console to log and fills res from it: the kernel,
// the LSM list, each test binary's exit code and test verdicts, and the
// modes in which a test passed. It reports whether init got to VMDONE and
// the kernel's panic line, if any.
func readConsole(out io.Reader, log io.Writer, res *Result, modes []string) (done bool, panicked string) {
	cur := -1
	passedModes := map[string]bool{}
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		fmt.Fprintln(log, line)
		switch {
		case strings.HasPrefix(line, "VMKERNEL "):
			res.Kernel = strings.Fields(line)[1]
		case strings.HasPrefix(line, "VMLSM "):
			res.LSM = strings.TrimPrefix(line, "VMLSM ")
		case strings.HasPrefix(line, "VMSTART "):
			res.Binaries = append(res.Binaries, BinaryResult{Name: strings.TrimPrefix(line, "VMSTART "), Exit: -1})
			cur = len(res.Binaries) - 1
		case strings.Contains(line, "Kernel panic") && panicked == "":
			panicked = line
		case line == "VMDONE":
			done = true
		}
		if m := resultLine.FindStringSubmatch(line); m != nil && cur >= 0 {
			res.Binaries[cur].Exit, _ = strconv.Atoi(m[2])
		}
		if m := testLine.FindStringSubmatch(line); m != nil && cur >= 0 {
			b := &res.Binaries[cur]
			name := m[2]
			switch m[1] {
			case "PASS":
				if !strings.Contains(name, "/") {
					b.Passed++
				}
				for _, mode := range modes {
					if strings.HasSuffix(name, "/"+mode) {
						passedModes[mode] = true
					}
				}
			case "FAIL":
				b.Failed = append(b.Failed, name)
			case "SKIP":
				b.Skipped = append(b.Skipped, name)
			}
		}
	}
	for _, m := range modes {
		if passedModes[m] {
			res.ModesPassed = append(res.ModesPassed, m)
		}
	}
	return done, panicked
}

func verdict(ctx context.Context, res *Result, bins []TestBinary, modes []string, done bool, panicked string, waitErr error) string {
	switch {
	case panicked != "":
		return "kernel panicked: " + panicked
	case ctx.Err() != nil:
		return fmt.Sprintf("timed out (%v) before the tests finished", ctx.Err())
	case !done:
		return fmt.Sprintf("the console ended before VMDONE (qemu: %v)", waitErr)
	case len(res.Binaries) != len(bins):
		return fmt.Sprintf("%d of %d test binaries ran", len(res.Binaries), len(bins))
	}
	var problems []string
	for _, b := range res.Binaries {
		if b.Exit != 0 {
			problems = append(problems, fmt.Sprintf("%s exited %d (failed: %s)", b.Name, b.Exit, firstOf(topLevel(b.Failed), 6)))
		}
		if len(b.Skipped) > 0 {
			problems = append(problems, fmt.Sprintf("%s skipped %s", b.Name, firstOf(b.Skipped, 6)))
		}
		if b.Passed == 0 {
			problems = append(problems, b.Name+" passed no test")
		}
	}
	// The whole enforcer suite, or all of it but skipped tests, runs every mode;
	// a -test.run subset may not.
	if len(bins) > 0 && bins[0].Run == "" {
		for _, m := range modes {
			if !slices.Contains(res.ModesPassed, m) {
				problems = append(problems, "no test passed in "+m)
			}
		}
	}
	return strings.Join(problems, "; ")
}

// topLevel keeps the names of tests (no subtests), or all when none is.
func topLevel(names []string) []string {
	var out []string
	for _, n := range names {
		if !strings.Contains(n, "/") {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return names
	}
	return out
}

func firstOf(names []string, n int) string {
	if len(names) <= n {
		return strings.Join(names, ", ")
	}
	return strings.Join(names[:n], ", ") + fmt.Sprintf(" and %d more", len(names)-n)
}
