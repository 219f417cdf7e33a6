package kernels

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/execgate/execgate/benchmarks/execbench"
	"github.com/execgate/execgate/benchmarks/harness"
	"github.com/execgate/execgate/benchmarks/report"
)

// Bench is one run of the node benchmarks (execgate-bench, without the
// control plane) inside one row's VM: the only place here where the lsm and
// fmod_ret programs can be timed, since this machine's kernel refuses
// trampolines.
type Bench struct {
	Row  string   // matrix row to boot
	Out  string   // RESULTS.md, results.json and plots are written here
	Args []string // execgate-bench flags (sizes); -control-plane=false and -out are added
}

// RunBench boots b.Row with execgate-bench as its only program, reads the
// results it prints on the console and renders them into b.Out.
func RunBench(ctx context.Context, cfg Config, b Bench) error {
	m, err := ReadMatrix(cfg.Matrix)
	if err != nil {
		return err
	}
	rows, err := m.Select([]string{b.Row})
	if err != nil {
		return err
	}
	row := rows[0]
	arch := row.Kernel.Arch
	// The timed programs are static C, built by the host's compiler.
	if Arches[arch].GOARCH != runtime.GOARCH {
		return fmt.Errorf("row %s is %s: the benchmark's programs are built by this host's C compiler, for %s only", row.Name, arch, runtime.GOARCH)
	}
	if err := checkTools(rows); err != nil {
		return err
	}
	if cfg.BuildDir, err = filepath.Abs(cfg.BuildDir); err != nil {
		return err
	}
	if cfg.Repo, err = filepath.Abs(cfg.Repo); err != nil {
		return err
	}
	apt := NewApt(cfg.BuildDir, cfg.Log)
	if err := apt.Fetch(m.Suites(), append([]Package{row.Kernel}, m.Userland[arch]...)); err != nil {
		return err
	}
	dir := filepath.Join(cfg.BuildDir, "bench", arch)
	progDir := filepath.Join(dir, "programs")
	if err := os.MkdirAll(progDir, 0o755); err != nil {
		return err
	}
	benchBin := filepath.Join(dir, "execgate-bench")
	build := exec.Command("go", "build", "-o", benchBin, "./benchmarks/cmd/execgate-bench")
	build.Dir = cfg.Repo
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+Arches[arch].GOARCH)
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build execgate-bench for %s: %w\n%s", arch, err, out)
	}
	progs, err := execbench.BuildPrograms(progDir)
	if err != nil {
		return err
	}
	base := filepath.Join(cfg.BuildDir, "initramfs", "bench-"+arch+".cpio")
	if err := BuildBase(apt, m.Userland[arch], nil, filepath.Join(cfg.BuildDir, "initramfs", "bench-"+arch), base); err != nil {
		return fmt.Errorf("initramfs for %s: %w", arch, err)
	}
	kdir, err := apt.Unpack(row.Kernel)
	if err != nil {
		return err
	}
	kernel, err := KernelImage(kdir)
	if err != nil {
		return err
	}
	emulation := fmt.Sprintf("a qemu VM with software emulation (TCG), %d vCPUs, Debian's %s", max(cfg.CPUs, 1), row.Kernel.Spec())
	args := append([]string{"-control-plane=false", "-out", "/tmp/bench"}, b.Args...)
	env := map[string]string{
		execbench.PrebuiltEnv: "/bench/programs",
		harness.EmulationEnv:  emulation,
	}
	init := initPreamble(env) + fmt.Sprintf(`echo VMSTART bench
/bench/execgate-bench %s
echo "VMRESULT bench exit=$?"
echo %s
$B cat /tmp/bench/results.json
echo
echo %s
echo VMDONE
$B sync
$B poweroff -f
`, strings.Join(args, " "), benchBegin, benchEnd)
	initrd := filepath.Join(cfg.BuildDir, "initramfs", "bench-"+row.Name+".cpio")
	files := map[string]string{
		"bench/execgate-bench":    benchBin,
		"bench/programs/exit0":    progs.Exit0,
		"bench/programs/execloop": progs.ExecLoop,
	}
	if err := BuildRow(base, filepath.Join(cfg.BuildDir, "initramfs", "bench-row-"+row.Name), initrd, init, files); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(cfg.BuildDir, "logs"), 0o755); err != nil {
		return err
	}
	logPath := filepath.Join(cfg.BuildDir, "logs", "bench-"+row.Name+".log")
	log, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer log.Close()
	vm := VM{Arch: arch, Kernel: kernel, Initrd: initrd, Append: row.BootFlags,
		MemMB: 3072, CPUs: max(cfg.CPUs, 1), Timeout: cfg.Timeout}
	cfg.Log("bench: booting %s (log %s)", row.Name, logPath)
	start := time.Now()
	raw, err := vm.bootBench(ctx, log)
	if err != nil {
		return fmt.Errorf("bench in %s (log %s): %w", row.Name, logPath, err)
	}
	cfg.Log("bench: %s done in %s", row.Name, time.Since(start).Round(time.Second))
	var res harness.Results
	if err := json.Unmarshal(raw, &res); err != nil {
		return fmt.Errorf("bench results from %s's console: %w", row.Name, err)
	}
	res.Command = fmt.Sprintf("make bench-vm (execgate-bench %s, in the %s row's VM of test/kernels/matrix)", strings.Join(args, " "), row.Name)
	if err := os.MkdirAll(b.Out, 0o755); err != nil {
		return err
	}
	return report.WriteAll(os.Stdout, b.Out, &res, res.Command)
}

const (
	benchBegin = "VMBENCH-BEGIN"
	benchEnd   = "VMBENCH-END"
)

// bootBench runs the VM, copies its console to log, and returns what the
// benchmark printed between the markers, once it exited 0.
func (v VM) bootBench(ctx context.Context, log io.Writer) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, v.Timeout)
	defer cancel()
	cmd, err := v.command(ctx)
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = log
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	raw, exit, done, panicked := readBenchConsole(out, log)
	waitErr := cmd.Wait()
	switch {
	case panicked != "":
		return nil, fmt.Errorf("kernel panicked: %s", panicked)
	case ctx.Err() != nil:
		return nil, fmt.Errorf("timed out (%v)", ctx.Err())
	case !done:
		return nil, fmt.Errorf("the console ended before VMDONE (qemu: %v)", waitErr)
	case exit != 0:
		return nil, fmt.Errorf("execgate-bench exited %d", exit)
	case len(raw) == 0:
		return nil, fmt.Errorf("no results between %s and %s", benchBegin, benchEnd)
	}
	return raw, nil
}

// readBenchConsole copies the console to log and returns the lines between
// the markers, the benchmark's exit code (-1: none seen), whether init got
// to VMDONE, and the kernel's panic line.
func readBenchConsole(out io.Reader, log io.Writer) (raw []byte, exit int, done bool, panicked string) {
	var buf bytes.Buffer
	in := false
	exit = -1
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		fmt.Fprintln(log, line)
		switch {
		case line == benchBegin:
			in = true
		case line == benchEnd:
			in = false
		case in:
			buf.WriteString(line + "\n")
		case strings.Contains(line, "Kernel panic") && panicked == "":
			panicked = line
		case line == "VMDONE":
			done = true
		}
		if m := resultLine.FindStringSubmatch(line); m != nil && !in {
			exit, _ = strconv.Atoi(m[2])
		}
	}
	return bytes.TrimSpace(buf.Bytes()), exit, done, panicked
}
