package realnode

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/execgate/execgate/test/kernels"
)

// Config says where the node's parts come from.
type Config struct {
	Repo     string // repository root
	BuildDir string // the kernel matrix's build directory: the apt cache is shared
	BinDir   string // holds kubelet (make tools)
	Row      string // the matrix row whose kernel the node boots
	Log      func(format string, args ...any)
}

// Built is a node image: a kernel and an initramfs base every boot extends
// with its own /init and configuration.
type Built struct {
	Kernel  string
	Base    string // initramfs without /init
	Dir     string // scratch space for boots
	Release string // the kernel's uname -r
	Modules []string
}

// nodeModules are the kernel modules a node needs that Debian builds as
// modules: overlayfs for containerd's snapshotter, the bridge and veth for the
// CNI plugins, virtio_net for the VM's own link. Their dependencies are
// resolved from modules.dep.
var nodeModules = []string{"overlay", "bridge", "veth", "virtio_net"}

// Build fetches the packages and writes the kernel and initramfs base under
// BuildDir/realnode.
func Build(cfg Config) (*Built, error) {
	if cfg.Log == nil {
		cfg.Log = func(string, ...any) {}
	}
	m, err := kernels.ReadMatrix(filepath.Join(cfg.Repo, "test/kernels/matrix"))
	if err != nil {
		return nil, err
	}
	rows, err := m.Select([]string{cfg.Row})
	if err != nil {
		return nil, err
	}
	row := rows[0]
	arch := row.Kernel.Arch
	if kernels.Arches[arch].GOARCH != runtime.GOARCH {
		return nil, fmt.Errorf("real node: row %s is %s; the node's binaries are built for this host (%s) only", row.Name, arch, runtime.GOARCH)
	}
	if len(m.Node[arch]) == 0 {
		return nil, fmt.Errorf("real node: the matrix has no node packages for %s", arch)
	}
	kubelet := filepath.Join(cfg.BinDir, "kubelet")
	if _, err := os.Stat(kubelet); err != nil {
		return nil, fmt.Errorf("real node: %w (build it with make tools)", err)
	}
	apt := kernels.NewApt(cfg.BuildDir, cfg.Log)
	pkgs := append(append([]kernels.Package{row.Kernel}, m.Userland[arch]...), m.Node[arch]...)
	if err := apt.Fetch(m.Suites(), pkgs); err != nil {
		return nil, err
	}
	kdir, err := apt.Unpack(row.Kernel)
	if err != nil {
		return nil, err
	}
	kernel, err := kernels.KernelImage(kdir)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(cfg.BuildDir, "realnode")
	extra := filepath.Join(dir, "extra")
	if err := os.RemoveAll(extra); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(extra, 0o755); err != nil {
		return nil, err
	}
	release, mods, err := copyModules(kdir, extra, nodeModules)
	if err != nil {
		return nil, err
	}
	pause := filepath.Join(dir, "pause")
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", pause, "./test/realnode/pause")
	build.Dir = cfg.Repo
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build pause: %w\n%s", err, out)
	}
	busyboxDir, err := apt.Unpack(findPackage(m.Userland[arch], "busybox-static"))
	if err != nil {
		return nil, err
	}
	images := filepath.Join(extra, "images")
	if err := os.MkdirAll(images, 0o755); err != nil {
		return nil, err
	}
	if err := writeImage(filepath.Join(images, "pause.tar"), PauseImage,
		[]imageFile{{Path: "pause", Src: pause, Mode: 0o755}}, []string{"/pause"}); err != nil {
		return nil, err
	}
	if err := writeImage(filepath.Join(images, "test.tar"), TestImage,
		testImageFiles(filepath.Join(busyboxDir, "bin/busybox")), []string{"/bin/sleep", "3600"}); err != nil {
		return nil, err
	}
	if err := copyTo(kubelet, filepath.Join(extra, "usr/bin/kubelet")); err != nil {
		return nil, err
	}
	stage := filepath.Join(dir, "stage")
	base := filepath.Join(dir, "base.cpio")
	if err := kernels.BuildBase(apt, append(append([]kernels.Package{}, m.Userland[arch]...), m.Node[arch]...), nil, stage, base); err != nil {
		return nil, fmt.Errorf("real node initramfs: %w", err)
	}
	if err := kernels.AppendTree(base, extra); err != nil {
		return nil, err
	}
	return &Built{Kernel: kernel, Base: base, Dir: dir, Release: release, Modules: mods}, nil
}

func findPackage(ps []kernels.Package, name string) kernels.Package {
	for _, p := range ps {
		if p.Name == name {
			return p
		}
	}
	return kernels.Package{Name: name}
}

func copyTo(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		return fmt.Errorf("copy %s: %w: %s", src, err, out)
	}
	return nil
}

// copyModules copies the named modules and what they depend on, decompressed,
// into dst/lib/modules/<release>/ and returns them in load order (dependencies
// first) as paths inside the VM.
func copyModules(kdir, dst string, names []string) (release string, order []string, err error) {
	deps, err := filepath.Glob(filepath.Join(kdir, "usr/lib/modules/*/modules.dep"))
	if err != nil || len(deps) != 1 {
		return "", nil, fmt.Errorf("kernel package %s: want one modules.dep, found %v", kdir, deps)
	}
	modDir := filepath.Dir(deps[0])
	release = filepath.Base(modDir)
	f, err := os.Open(deps[0])
	if err != nil {
		return "", nil, err
	}
	defer f.Close()
	byName := map[string][]string{} // module name -> [its file, deps' files...]
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		file, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		byName[moduleName(file)] = append([]string{file}, strings.Fields(rest)...)
	}
	if err := sc.Err(); err != nil {
		return "", nil, err
	}
	seen := map[string]bool{}
	var visit func(file string) error
	visit = func(file string) error {
		if seen[file] {
			return nil
		}
		seen[file] = true
		entry := byName[moduleName(file)]
		for _, d := range entry[1:] {
			if err := visit(d); err != nil {
				return err
			}
		}
		out := filepath.Join(dst, "lib/modules", release, strings.TrimSuffix(filepath.Base(file), ".xz"))
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return err
		}
		if err := decompress(filepath.Join(modDir, file), out); err != nil {
			return err
		}
		order = append(order, strings.TrimPrefix(out, dst))
		return nil
	}
	for _, n := range names {
		entry, ok := byName[n]
		if !ok {
			return "", nil, fmt.Errorf("kernel %s has no module %s (built in? then drop it from nodeModules)", release, n)
		}
		if err := visit(entry[0]); err != nil {
			return "", nil, err
		}
	}
	return release, order, nil
}

// moduleName is the module's name from its file: kernel/fs/overlayfs/overlay.ko.xz -> overlay.
func moduleName(file string) string {
	base := filepath.Base(file)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

func decompress(src, dst string) error {
	if !strings.HasSuffix(src, ".xz") {
		return copyTo(src, dst)
	}
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	var stderr strings.Builder
	cmd := exec.Command("xz", "-dc", src)
	cmd.Stdout, cmd.Stderr = out, &stderr
	if err := cmd.Run(); err != nil {
		out.Close()
		return fmt.Errorf("xz -dc %s: %w: %s", src, err, stderr.String())
	}
	return out.Close()
}
