package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/duration"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
	"sigs.k8s.io/yaml"
)

// machineReadable reports whether -o asked for json or yaml.
func (o *options) machineReadable() bool { return o.output != "" }

// print writes v as -o asked. Kubernetes objects get their apiVersion and kind back (the
// client strips them) and lose managedFields, as kubectl prints them.
func (o *options) print(v any) error {
	if obj, ok := v.(runtime.Object); ok {
		if err := prepareObject(obj); err != nil {
			return err
		}
	}
	var (
		b   []byte
		err error
	)
	switch o.output {
	case "json":
		b, err = json.MarshalIndent(v, "", "    ")
		b = append(b, '\n')
	case "yaml":
		b, err = yaml.Marshal(v)
	default:
		return fmt.Errorf("output format %q has no printer", o.output)
	}
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	_, err = o.stdout.Write(b)
	return err
}

// printStreamed writes one object of a stream (events --watch): JSON objects one after
// the other, YAML documents separated by "---".
func (o *options) printStreamed(obj runtime.Object) error {
	if o.output == "yaml" {
		if _, err := io.WriteString(o.stdout, "---\n"); err != nil {
			return err
		}
	}
	return o.print(obj)
}

func prepareObject(obj runtime.Object) error {
	if err := setKind(obj); err != nil {
		return err
	}
	if !meta.IsListType(obj) {
		return nil
	}
	return meta.EachListItem(obj, setKind)
}

func setKind(obj runtime.Object) error {
	gvk, err := apiutil.GVKForObject(obj, scheme)
	if err != nil {
		return fmt.Errorf("kind of %T: %w", obj, err)
	}
	obj.GetObjectKind().SetGroupVersionKind(gvk)
	if m, err := meta.Accessor(obj); err == nil {
		m.SetManagedFields(nil)
	}
	return nil
}

// table prints aligned columns, kubectl style.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, headers ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 6, 4, 3, ' ', 0)}
	t.row(headers...)
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		if c == "" {
			cells[i] = "-"
		}
		// A tab or newline in a cell (an event message) would break the columns.
		cells[i] = strings.NewReplacer("\t", " ", "\n", " ").Replace(cells[i])
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

// age is how long ago t was, as kubectl prints it ("5m", "3d"); "-" when unknown.
func (o *options) age(t metav1.Time) string {
	if t.IsZero() {
		return "-"
	}
	return duration.HumanDuration(o.now().Sub(t.Time))
}

// bytesIEC prints a byte count with a binary unit: 1.2MiB.
func bytesIEC(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTP"[exp])
}
