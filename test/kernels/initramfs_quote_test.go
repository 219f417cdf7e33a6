package kernels

import (
	"os/exec"
	"testing"
)

// TestShellQuote: every value the init script exports reaches the program unchanged, quotes,
// dollars and backslashes included (an apostrophe in "Debian's" once made /init a syntax error).
func TestShellQuote(t *testing.T) {
	for _, v := range []string{"", "plain", "Debian's 6.12", `it's "quoted" $HOME \n`, "'", "''", "a'b'c", "$(id)", "`id`"} {
		out, err := exec.Command("sh", "-c", "export V="+ShellQuote(v)+"; printf %s \"$V\"").CombinedOutput()
		if err != nil {
			t.Fatalf("sh refused the quoted %q: %v %s", v, err, out)
		}
		if string(out) != v {
			t.Errorf("quoted %q came back as %q", v, out)
		}
	}
}
