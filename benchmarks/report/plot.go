package report

import (
	"fmt"
	"image/color"
	"math"
	"path/filepath"
	"sort"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/execgate/execgate/benchmarks/harness"
)

// Plot files, relative to the output directory.
const (
	PlotExecRatio  = "exec_ratio.png"
	PlotExecKernel = "exec_kernel.png"
	PlotMemory     = "memory.png"
	PlotCluster    = "cluster.png"
)

var palette = []color.Color{
	color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}, // execgate enforced
	color.RGBA{R: 0x6b, G: 0xae, B: 0xd6, A: 0xff}, // execgate other
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}, // peer enforced
	color.RGBA{R: 0xff, G: 0x98, B: 0x96, A: 0xff}, // peer other
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
	color.RGBA{R: 0x8c, G: 0x56, B: 0x4b, A: 0xff},
	color.RGBA{R: 0x7f, G: 0x7f, B: 0x7f, A: 0xff},
}

var grey = color.RGBA{R: 0x55, G: 0x55, B: 0x55, A: 0xff}

// WritePlots writes the PNG plots into dir and returns their file names.
func WritePlots(dir string, res *harness.Results) ([]string, error) {
	var written []string
	for _, p := range []struct {
		name string
		make func(*harness.Results) (*plot.Plot, error)
	}{
		{PlotExecRatio, execRatioPlot},
		{PlotExecKernel, execKernelPlot},
		{PlotMemory, memoryPlot},
		{PlotCluster, clusterPlot},
	} {
		pl, err := p.make(res)
		if err != nil {
			return written, fmt.Errorf("plot %s: %w", p.name, err)
		}
		if pl == nil {
			continue
		}
		if err := pl.Save(18*vg.Centimeter, 11*vg.Centimeter, filepath.Join(dir, p.name)); err != nil {
			return written, fmt.Errorf("save %s: %w", p.name, err)
		}
		written = append(written, p.name)
	}
	return written, nil
}

// series is one line: execs of one implementation, mode and pod kind.
type series struct {
	label string
	pts   plotter.XYs
}

func execSeries(res *harness.Results, value func(harness.ExecResult) float64) []series {
	var out []series
	idx := map[string]int{}
	for _, r := range res.Exec {
		if r.Skipped != "" {
			continue
		}
		v := value(r)
		if v <= 0 || math.IsNaN(v) {
			continue
		}
		label := fmt.Sprintf("%s %s, %s pod", r.Impl, r.Mode, r.Cgroup)
		i, ok := idx[label]
		if !ok {
			i = len(out)
			idx[label] = i
			out = append(out, series{label: label})
		}
		out[i].pts = append(out[i].pts, plotter.XY{X: float64(r.Policies), Y: v})
	}
	for _, s := range out {
		sort.Slice(s.pts, func(i, j int) bool { return s.pts[i].X < s.pts[j].X })
	}
	return out
}

func addSeries(p *plot.Plot, ss []series) error {
	for i, s := range ss {
		line, points, err := plotter.NewLinePoints(s.pts)
		if err != nil {
			return err
		}
		c := palette[i%len(palette)]
		line.Color, points.Color = c, c
		line.Width = vg.Points(1.5)
		points.Shape = draw.CircleGlyph{}
		p.Add(line, points)
		p.Legend.Add(s.label, line, points)
	}
	return nil
}

// hline is a dashed horizontal line at y across [x0, x1].
func hline(p *plot.Plot, label string, y, x0, x1 float64, c color.Color) error {
	l, err := plotter.NewLine(plotter.XYs{{X: x0, Y: y}, {X: x1, Y: y}})
	if err != nil {
		return err
	}
	l.Color = c
	l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	p.Add(l)
	p.Legend.Add(label, l)
	return nil
}

func newPlot(title, x, y string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = x
	p.Y.Label.Text = y
	p.Legend.Top = true
	p.Legend.Left = true
	p.Add(plotter.NewGrid())
	return p
}

func xRange(ss []series) (float64, float64) {
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range ss {
		for _, pt := range s.pts {
			lo, hi = math.Min(lo, pt.X), math.Max(hi, pt.X)
		}
	}
	return lo, hi
}

// execRatioPlot: wall-clock median of each state over its own baseline.
func execRatioPlot(res *harness.Results) (*plot.Plot, error) {
	ss := execSeries(res, func(r harness.ExecResult) float64 {
		return float64(r.Wall.Median) / float64(r.Baseline.Median)
	})
	if len(ss) == 0 {
		return nil, nil
	}
	p := newPlot("fork+exec wall time ÷ no-program baseline (medians)", "loaded policies", "ratio")
	p.X.Scale, p.X.Tick.Marker = plot.LogScale{}, labelledLogTicks(countLabel)
	if err := addSeries(p, ss); err != nil {
		return nil, err
	}
	lo, hi := xRange(ss)
	if err := hline(p, "no program", 1, lo, hi, grey); err != nil {
		return nil, err
	}
	p.Y.Min, p.Y.Max = 0, math.Max(2, yMax(ss)*1.4) // room for the legend
	return p, nil
}

func execKernelPlot(res *harness.Results) (*plot.Plot, error) {
	ss := execSeries(res, func(r harness.ExecResult) float64 { return r.KernelNsPerExec })
	if len(ss) == 0 {
		return nil, nil
	}
	p := newPlot("time in exec-hook programs per exec (BPF run-time stats)", "loaded policies", "per exec")
	p.X.Scale, p.X.Tick.Marker = plot.LogScale{}, labelledLogTicks(countLabel)
	p.Y.Scale, p.Y.Tick.Marker = plot.LogScale{}, labelledLogTicks(ns)
	if err := addSeries(p, ss); err != nil {
		return nil, err
	}
	lo, hi := xRange(ss)
	if err := hline(p, "target: 1 µs", targetExecOverheadNs, lo, hi, grey); err != nil {
		return nil, err
	}
	p.Y.Max = math.Max(yMax(ss), targetExecOverheadNs) * 30 // room for the legend
	return p, nil
}

func yMax(ss []series) float64 {
	m := 0.0
	for _, s := range ss {
		for _, pt := range s.pts {
			m = math.Max(m, pt.Y)
		}
	}
	return m
}

const mib = 1 << 20

// mibLabel labels a tick whose value is in MiB.
func mibLabel(v float64) string {
	if v >= 1024 {
		return fmt.Sprintf("%.3g GiB", v/1024)
	}
	return fmt.Sprintf("%g MiB", v)
}

func countLabel(v float64) string { return count(int(math.Round(v))) }

// labelledLogTicks are log ticks labelled in a unit, e.g. "1.00 µs".
type labelledLogTicks func(float64) string

func (l labelledLogTicks) Ticks(min, max float64) []plot.Tick {
	ticks := plot.LogTicks{}.Ticks(min, max)
	for i := range ticks {
		if ticks[i].Label != "" {
			ticks[i].Label = l(ticks[i].Value)
		}
	}
	return ticks
}

// memoryPlot is log-log: straight lines for per-policy costs; the fixed
// cost (0 policies) is the dashed line.
func memoryPlot(res *harness.Results) (*plot.Plot, error) {
	mm := modelOf(res)
	if !mm.ok {
		return nil, nil
	}
	p := newPlot("kernel memory per node", "pod policies loaded and bound", "")
	p.X.Scale, p.X.Tick.Marker = plot.LogScale{}, labelledLogTicks(countLabel)
	p.Y.Scale, p.Y.Tick.Marker = plot.LogScale{}, labelledLogTicks(mibLabel)
	var pts plotter.XYs
	for _, pt := range res.Memory.Points {
		if pt.Policies > 0 {
			pts = append(pts, plotter.XY{X: float64(pt.Policies), Y: float64(pt.Bytes) / mib})
		}
	}
	if err := addSeries(p, []series{{label: "execgate (measured)", pts: pts}}); err != nil {
		return nil, err
	}
	hi := float64(mm.maxPolicies)
	if err := hline(p, "execgate with no policy (fixed)", mm.fixed/mib, 1, hi, palette[1]); err != nil {
		return nil, err
	}
	lines := []struct {
		label      string
		fixed, per float64
		c          color.Color
		dashed     bool
	}{
		{"target: 2 MiB + 16 KiB per policy", targetFixedBytes, targetBytesPerPolicy, grey, true},
		{"Tetragon: 1.48 MB per policy (16 CPUs)", 0, tetragonBytesPerPolicy16, palette[2], false},
		{"Tetragon: 8.3 MB per policy (96 CPUs)", 0, tetragonBytesPerPolicy96, palette[3], false},
	}
	for _, l := range lines {
		var xy plotter.XYs
		for x := 1.0; x < hi; x *= 1.25 {
			xy = append(xy, plotter.XY{X: x, Y: (l.fixed + l.per*x) / mib})
		}
		xy = append(xy, plotter.XY{X: hi, Y: (l.fixed + l.per*hi) / mib})
		line, err := plotter.NewLine(xy)
		if err != nil {
			return nil, err
		}
		line.Color = l.c
		if l.dashed {
			line.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		}
		p.Add(line)
		p.Legend.Add(l.label, line)
	}
	p.Y.Max = tetragonBytesPerPolicy96 * hi * 2 / mib
	return p, nil
}

// clusterPlot compares what a node holds in the cluster view, on a log
// scale: bars cannot start at zero there, so each value is a labelled point.
func clusterPlot(res *harness.Results) (*plot.Plot, error) {
	mm := modelOf(res)
	if !mm.ok {
		return nil, nil
	}
	w, pods := res.Config.ClusterWorkloads, res.Config.PodsPerNode
	cv := clusterOf(res, mm)
	bind, every := cv.bind, cv.every
	vals := []struct {
		name string
		b    float64
	}{
		{"execgate,\nbind-time", bind},
		{"execgate,\nevery node", every},
		{"Tetragon,\n16 CPUs", float64(w) * tetragonBytesPerPolicy16},
		{"Tetragon,\n96 CPUs", float64(w) * tetragonBytesPerPolicy96},
	}
	p := newPlot(fmt.Sprintf("one node's kernel memory: %s workloads, %d pods on the node", count(w), pods), "", "")
	p.Y.Scale, p.Y.Tick.Marker = plot.LogScale{}, labelledLogTicks(mibLabel)
	var xys plotter.XYs
	var labels []string
	var names []string
	for i, v := range vals {
		xys = append(xys, plotter.XY{X: float64(i), Y: v.b / mib})
		labels = append(labels, bytes(v.b))
		names = append(names, v.name)
	}
	sc, err := plotter.NewScatter(xys)
	if err != nil {
		return nil, err
	}
	sc.Shape = draw.BoxGlyph{}
	sc.Radius = vg.Points(5)
	sc.Color = palette[0]
	lb, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: labels})
	if err != nil {
		return nil, err
	}
	for i := range lb.TextStyle {
		lb.TextStyle[i].XAlign = draw.XCenter
		lb.Offset.Y = vg.Points(8)
	}
	p.Add(sc, lb)
	p.NominalX(names...)
	p.X.Min, p.X.Max = -0.5, float64(len(vals))-0.5
	p.Y.Max = vals[3].b * 4 / mib
	p.Legend = plot.NewLegend()
	return p, nil
}
