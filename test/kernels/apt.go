package kernels

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// Apt fetches pinned packages through its own apt configuration under Dir:
// its own sources list, lists, cache and empty dpkg status, so the system's
// apt state is never read for packages nor written. Only the mirror
// addresses come from the system's sources (the machine's own choice).
type Apt struct {
	Dir     string // build directory for apt: etc/, lists/, cache/, status
	DebDir  string // downloaded .deb files, kept between runs
	RootDir string // each package unpacked once, kept between runs
	Keyring string // Debian's archive keyring
	Log     func(format string, args ...any)
}

// NewApt lays out the private apt tree under dir.
func NewApt(dir string, log func(string, ...any)) *Apt {
	return &Apt{
		Dir:     filepath.Join(dir, "apt"),
		DebDir:  filepath.Join(dir, "debs"),
		RootDir: filepath.Join(dir, "unpacked"),
		Keyring: "/usr/share/keyrings/debian-archive-keyring.gpg",
		Log:     log,
	}
}

// Fetch makes sure every package's .deb is in DebDir, downloading the
// missing ones. A version the archive does not have is an error naming it.
func (a *Apt) Fetch(suites []string, pkgs []Package) error {
	var missing []Package
	for _, p := range pkgs {
		if _, err := os.Stat(filepath.Join(a.DebDir, p.DebName())); err != nil && !slices.Contains(missing, p) {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if err := a.configure(suites); err != nil {
		return err
	}
	a.Log("apt: updating private lists for %v", suites)
	if out, err := a.run("", "update"); err != nil {
		return fmt.Errorf("apt-get update (private configuration in %s): %w\n%s", a.Dir, err, out)
	}
	if err := os.MkdirAll(a.DebDir, 0o755); err != nil {
		return err
	}
	args := []string{"download"}
	for _, p := range missing {
		args = append(args, p.Spec())
	}
	a.Log("apt: downloading %d packages", len(missing))
	if out, err := a.run(a.DebDir, args...); err != nil {
		return fmt.Errorf("apt-get download: %w\n%s", err, explainMissing(out, missing))
	}
	for _, p := range missing {
		if _, err := os.Stat(filepath.Join(a.DebDir, p.DebName())); err != nil {
			return fmt.Errorf("apt-get download left no %s: %w", p.DebName(), err)
		}
	}
	return nil
}

// explainMissing turns apt's "Version 'v' for 'p' was not found" into the
// package and suite the matrix pins.
func explainMissing(out []byte, pkgs []Package) string {
	var msgs []string
	for _, p := range pkgs {
		if bytes.Contains(out, []byte("'"+p.Version+"' for '"+p.Name+"'")) || bytes.Contains(out, []byte("'"+p.Name+":"+p.Arch+"'")) {
			msgs = append(msgs, fmt.Sprintf("%s %s (%s) is not in %s any more: pin a version the suite has in test/kernels/matrix", p.Name, p.Version, p.Arch, p.Suite))
		}
	}
	return strings.Join(msgs, "\n") + "\n" + string(out)
}

func (a *Apt) run(dir string, args ...string) ([]byte, error) {
	cmd := exec.Command("apt-get", append([]string{"-q"}, args...)...)
	cmd.Dir = dir
	// APT_CONFIG replaces /etc/apt/apt.conf and, through Dir::Etc::Parts in
	// it, the system's apt.conf.d: nothing of the system's apt settings applies.
	cmd.Env = append(os.Environ(), "APT_CONFIG="+filepath.Join(a.Dir, "etc", "apt.conf"))
	return cmd.CombinedOutput()
}

// configure writes apt.conf and sources.list for suites.
func (a *Apt) configure(suites []string) error {
	archive, security, err := systemMirrors()
	if err != nil {
		return err
	}
	etc := filepath.Join(a.Dir, "etc")
	for _, d := range []string{etc + "/apt.conf.d", etc + "/preferences.d", etc + "/sources.list.d", etc + "/trusted.gpg.d",
		a.Dir + "/lists/partial", a.Dir + "/cache/archives/partial"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	var src strings.Builder
	for _, s := range suites {
		uri := archive
		if strings.HasSuffix(s, "-security") {
			uri = security
		}
		fmt.Fprintf(&src, "deb [arch=amd64,arm64 signed-by=%s] %s %s main\n", a.Keyring, uri, s)
	}
	// Signatures are checked; Valid-Until is not: a mirror's copy of a
	// testing suite (forky) goes stale within days, and every package is
	// pinned to an exact version, so an old list cannot pick a different one.
	conf := fmt.Sprintf(`Dir::Etc "%[1]s/etc";
Dir::Etc::Parts "%[1]s/etc/apt.conf.d";
Dir::State "%[1]s";
Dir::State::Lists "%[1]s/lists";
Dir::State::status "%[1]s/status";
Dir::Cache "%[1]s/cache";
APT::Architecture "amd64";
APT::Architectures { "amd64"; "arm64"; };
Acquire::Languages "none";
Debug::NoLocking "true";
APT::Sandbox::User "root";
Acquire::Check-Valid-Until "false";
`, a.Dir)
	for name, body := range map[string]string{etc + "/sources.list": src.String(), etc + "/apt.conf": conf, a.Dir + "/status": ""} {
		if err := os.WriteFile(name, []byte(body), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// systemMirrors reads the Debian archive and security mirror URIs from the
// system's sources (deb822 .sources or one-line .list). EXECGATE_DEBIAN_MIRROR
// and EXECGATE_DEBIAN_SECURITY_MIRROR override them.
func systemMirrors() (archive, security string, err error) {
	archive, security = os.Getenv("EXECGATE_DEBIAN_MIRROR"), os.Getenv("EXECGATE_DEBIAN_SECURITY_MIRROR")
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	lists, _ := filepath.Glob("/etc/apt/sources.list.d/*.list")
	files = append(append(files, "/etc/apt/sources.list"), lists...)
	for _, f := range files {
		for _, e := range readSources(f) {
			if !strings.Contains(e.signedBy+e.uri, "debian") {
				continue
			}
			isSec := slices.ContainsFunc(e.suites, func(s string) bool { return strings.HasSuffix(s, "-security") })
			if isSec && security == "" {
				security = e.uri
			} else if !isSec && archive == "" {
				archive = e.uri
			}
		}
	}
	if archive == "" || security == "" {
		return "", "", fmt.Errorf("no Debian archive and security mirror in the system's apt sources: set EXECGATE_DEBIAN_MIRROR and EXECGATE_DEBIAN_SECURITY_MIRROR")
	}
	return archive, security, nil
}

type sourceEntry struct {
	uri, signedBy string
	suites        []string
}

func readSources(path string) []sourceEntry {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []sourceEntry
	if strings.HasSuffix(path, ".sources") {
		for _, stanza := range strings.Split(string(data), "\n\n") {
			var e sourceEntry
			debType := false
			sc := bufio.NewScanner(strings.NewReader(stanza))
			for sc.Scan() {
				k, v, ok := strings.Cut(sc.Text(), ":")
				if !ok || strings.HasPrefix(k, "#") {
					continue
				}
				switch strings.TrimSpace(k) {
				case "Types":
					debType = slices.Contains(strings.Fields(v), "deb")
				case "URIs":
					if u := strings.Fields(v); len(u) > 0 {
						e.uri = u[0]
					}
				case "Suites":
					e.suites = strings.Fields(v)
				case "Signed-By":
					e.signedBy = strings.TrimSpace(v)
				}
			}
			if debType && e.uri != "" {
				out = append(out, e)
			}
		}
		return out
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || f[0] != "deb" {
			continue
		}
		if strings.HasPrefix(f[1], "[") { // options
			for len(f) > 1 && !strings.HasSuffix(f[1], "]") {
				f = append(f[:1], f[2:]...)
			}
			f = append(f[:1], f[2:]...)
		}
		if len(f) >= 3 {
			out = append(out, sourceEntry{uri: f[1], suites: []string{f[2]}})
		}
	}
	return out
}

// Unpack extracts p's .deb once into RootDir and returns that directory.
func (a *Apt) Unpack(p Package) (string, error) {
	dir := filepath.Join(a.RootDir, strings.TrimSuffix(p.DebName(), ".deb"))
	if _, err := os.Stat(dir); err == nil {
		return dir, nil
	}
	// Rows sharing a package (5.10 and 5.10-lsm) may unpack it at once: each
	// into its own directory; the first rename wins and the others use it.
	if err := os.MkdirAll(a.RootDir, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(a.RootDir, filepath.Base(dir)+".tmp-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	if out, err := exec.Command("dpkg-deb", "-x", filepath.Join(a.DebDir, p.DebName()), tmp).CombinedOutput(); err != nil {
		return "", fmt.Errorf("unpack %s: %w: %s", p.DebName(), err, out)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, statErr := os.Stat(dir); statErr == nil {
			return dir, nil // unpacked by another row meanwhile
		}
		return "", err
	}
	return dir, nil
}
