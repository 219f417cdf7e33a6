package kernels

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/execgate/execgate/internal/atomicfile"
)

// Config says what one matrix run does.
type Config struct {
	Repo     string   // repository root (holds go.mod)
	Matrix   string   // matrix file
	BuildDir string   // cache and outputs: apt/, debs/, unpacked/, initramfs/, logs/, results.json
	Rows     []string // row names; empty = every row
	CI       bool     // run each row's CI subset instead of the whole suite
	Parallel int      // VMs at once
	CPUs     int      // vCPUs per VM
	Timeout  time.Duration
	Log      func(format string, args ...any)
}

// testPackages are the binaries each VM runs: the enforcer suite (whole, or
// the row's CI subset) and the agent's BPF tests.
var testPackages = []struct{ name, pkg, run string }{
	{"enforcer", "./nodeagent/enforcer", ""},
	{"agent", "./nodeagent/agent", "^TestBPF"},
}

// Run runs the selected rows and returns their results; the error says
// which rows failed.
func Run(ctx context.Context, cfg Config) ([]Result, error) {
	m, err := ReadMatrix(cfg.Matrix)
	if err != nil {
		return nil, err
	}
	rows, err := m.Select(cfg.Rows)
	if err != nil {
		return nil, err
	}
	if err := checkTools(rows); err != nil {
		return nil, err
	}
	// apt and qemu run in other directories: every path they get is absolute
	if cfg.BuildDir, err = filepath.Abs(cfg.BuildDir); err != nil {
		return nil, err
	}
	if cfg.Repo, err = filepath.Abs(cfg.Repo); err != nil {
		return nil, err
	}
	apt := NewApt(cfg.BuildDir, cfg.Log)
	var pkgs []Package
	var arches []string // in the order rows name them: the first row's VMs start first
	for _, r := range rows {
		pkgs = append(pkgs, r.Kernel)
		if !slices.Contains(arches, r.Kernel.Arch) {
			arches = append(arches, r.Kernel.Arch)
		}
	}
	for _, arch := range arches {
		pkgs = append(pkgs, m.Userland[arch]...)
	}
	if err := apt.Fetch(m.Suites(), pkgs); err != nil {
		return nil, err
	}
	// One architecture is built at a time, and a row's VM starts as soon as
	// its own architecture is ready: the amd64 rows run while arm64 builds.
	builds := map[string]*archBuild{}
	for _, arch := range arches {
		builds[arch] = &archBuild{ready: make(chan struct{})}
	}
	go func() {
		for _, arch := range arches {
			b := builds[arch]
			t0 := time.Now()
			b.bins, b.base, b.err = buildArch(cfg, apt, m, arch)
			if b.err == nil {
				cfg.Log("built %s test binaries and initramfs in %s", arch, time.Since(t0).Round(time.Second))
			}
			close(b.ready)
		}
	}()
	results := make([]Result, len(rows))
	next := make(chan int)
	go func() {
		for _, i := range dispatchOrder(rows, cfg.CI) {
			next <- i
		}
		close(next)
	}()
	var (
		wg     sync.WaitGroup
		saveMu sync.Mutex
	)
	for range max(cfg.Parallel, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				row := rows[i]
				b := builds[row.Kernel.Arch]
				<-b.ready
				if b.err != nil {
					results[i] = Result{Row: row.Name, Arch: row.Kernel.Arch, Problem: b.err.Error()}
				} else {
					results[i] = runRow(ctx, cfg, apt, row, b.base, b.bins)
				}
				r := &results[i]
				state := "PASS"
				if !r.Passed() {
					state = "FAIL: " + r.Problem
				}
				cfg.Log("row %s (%s, %s) %s in %ds; log %s", r.Row, r.Arch, r.Kernel, state, r.Seconds, r.Log)
				// Kept as each row ends: a run cut short still leaves its rows.
				saveMu.Lock()
				if err := SaveResults(filepath.Join(cfg.BuildDir, "results.json"), []Result{*r}); err != nil {
					cfg.Log("save results of row %s: %v", r.Row, err)
				}
				saveMu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := SaveResults(filepath.Join(cfg.BuildDir, "results.json"), results); err != nil {
		return results, err
	}
	var failed []string
	for _, r := range results {
		if !r.Passed() {
			failed = append(failed, r.Row)
		}
	}
	if len(failed) > 0 {
		return results, fmt.Errorf("kernel matrix rows failed: %s", strings.Join(failed, ", "))
	}
	return results, nil
}

// archBuild is one architecture's test binaries and base initramfs; ready
// closes when they are built or failed.
type archBuild struct {
	ready chan struct{}
	bins  []TestBinary
	base  string
	err   error
}

func buildArch(cfg Config, apt *Apt, m *Matrix, arch string) ([]TestBinary, string, error) {
	bins, err := buildTests(cfg, arch)
	if err != nil {
		return nil, "", err
	}
	base := filepath.Join(cfg.BuildDir, "initramfs", arch+".cpio")
	if err := BuildBase(apt, m.Userland[arch], bins, filepath.Join(cfg.BuildDir, "initramfs", arch), base); err != nil {
		return nil, "", fmt.Errorf("initramfs for %s: %w", arch, err)
	}
	return bins, base, nil
}

func runRow(ctx context.Context, cfg Config, apt *Apt, row Row, base string, bins []TestBinary) Result {
	res := Result{Row: row.Name, Arch: row.Kernel.Arch, Package: row.Kernel.Name + "=" + row.Kernel.Version,
		CI: cfg.CI, Date: time.Now().UTC().Format("2006-01-02")}
	fail := func(err error) Result { res.Problem = err.Error(); return res }
	dir, err := apt.Unpack(row.Kernel)
	if err != nil {
		return fail(err)
	}
	kernel, err := KernelImage(dir)
	if err != nil {
		return fail(err)
	}
	rowBins := slices.Clone(bins)
	if cfg.CI && row.CIRun != "" {
		rowBins[0].Run = row.CIRun
	}
	if cfg.CI && row.CISkip != "" {
		for i := range rowBins {
			rowBins[i].Skip = row.CISkip
		}
	}
	env := map[string]string{
		"EXECGATE_REQUIRE_BPF":         "1",
		"EXECGATE_REQUIRE_TRAMPOLINES": "1",
		"EXECGATE_EXPECT_MODES":        strings.Join(row.Modes, ","),
		"EXECGATE_EXPECT_AUTO_MODE":    row.AutoMode,
		"EXECGATE_KERNEL_ROW":          row.Name,
	}
	initrd := filepath.Join(cfg.BuildDir, "initramfs", row.Name+".cpio")
	if err := BuildRow(base, filepath.Join(cfg.BuildDir, "initramfs", "row-"+row.Name), initrd, InitScript(row, env, rowBins), nil); err != nil {
		return fail(err)
	}
	if err := os.MkdirAll(filepath.Join(cfg.BuildDir, "logs"), 0o755); err != nil {
		return fail(err)
	}
	res.Log = filepath.Join(cfg.BuildDir, "logs", row.Name+".log")
	log, err := os.Create(res.Log)
	if err != nil {
		return fail(err)
	}
	defer log.Close()
	vm := VM{Arch: row.Kernel.Arch, Kernel: kernel, Initrd: initrd, Append: row.BootFlags,
		MemMB: 2048, CPUs: max(cfg.CPUs, 1), Timeout: cfg.Timeout}
	vm.Boot(ctx, log, &res, rowBins, row.Modes)
	return res
}

// buildTests cross-builds the test binaries for arch (static: the VM has
// only the userland the matrix lists).
func buildTests(cfg Config, arch string) ([]TestBinary, error) {
	dir := filepath.Join(cfg.BuildDir, "bin", arch)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var out []TestBinary
	for _, tp := range testPackages {
		path := filepath.Join(dir, tp.name+".test")
		cmd := exec.Command("go", "test", "-c", "-o", path, tp.pkg)
		cmd.Dir = cfg.Repo
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+Arches[arch].GOARCH)
		if b, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("build %s tests for %s: %w\n%s", tp.pkg, arch, err, b)
		}
		out = append(out, TestBinary{Name: tp.name, Path: path, Run: tp.run})
	}
	return out, nil
}

// checkTools names every host program the run needs and lacks.
func checkTools(rows []Row) error {
	need := []string{"apt-get", "dpkg-deb", "cpio", "cp", "go"}
	for _, r := range rows {
		if q := Arches[r.Kernel.Arch].Qemu; !slices.Contains(need, q) {
			need = append(need, q)
		}
	}
	var missing []string
	for _, t := range need {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the kernel matrix needs %s on PATH (make deps installs them)", strings.Join(missing, ", "))
	}
	return nil
}

// dispatchOrder is the order workers take rows in: the matrix's (arm64 rows
// last, as their build is), except that in CI the rows that run their whole
// suite (an empty CI subset, the longest by far) go first, so that the
// shorter rows fill the other VM slot instead of one long row running alone
// at the end. With 2 VMs this made the CI matrix ~2 min shorter.
func dispatchOrder(rows []Row, ci bool) []int {
	var first, rest []int
	for i, r := range rows {
		if ci && r.CIRun == "" && r.CISkip == "" {
			first = append(first, i)
		} else {
			rest = append(rest, i)
		}
	}
	return append(first, rest...)
}

// SaveResults merges results into path, keeping the latest result per row.
func SaveResults(path string, results []Result) error {
	all, err := LoadResults(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for _, r := range results {
		i := slices.IndexFunc(all, func(o Result) bool { return o.Row == r.Row })
		if i >= 0 {
			all[i] = r
		} else {
			all = append(all, r)
		}
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].Row < all[j].Row })
	b, err := json.MarshalIndent(all, "", "  ")
	if err != nil {
		return err
	}
	// A run cut short mid-write must not leave a file the next run cannot read.
	return atomicfile.Write(path, append(b, '\n'), 0o644)
}

// LoadResults reads a results file.
func LoadResults(path string) ([]Result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []Result
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}
