package main

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// Result is one measured figure: a metric of one case of one scenario over
// repeated runs, with the floor it is compared to and its target.
type Result struct {
	Scenario string `json:"scenario"`
	Case     string `json:"case"`
	Metric   string `json:"metric"`
	Unit     string `json:"unit"`
	Runs     int    `json:"runs"`
	// Median, Min, Max and P99 summarise Samples. P99 is the nearest-rank
	// 99th percentile, which is the maximum for fewer than 100 runs.
	Median  float64   `json:"median"`
	Min     float64   `json:"min"`
	Max     float64   `json:"max"`
	P99     float64   `json:"p99"`
	Samples []float64 `json:"samples"`
	// Floor is what the figure cannot beat, measured in the same run: the
	// Redis round trip (PING p50) or the TTL the scenario waits out.
	FloorName string  `json:"floor_name,omitempty"`
	Floor     float64 `json:"floor,omitempty"`
	Ratio     float64 `json:"ratio,omitempty"` // Median / Floor
	// Target, when the issue sets one: the statistic compared ("p50",
	// "p99", "median", "max"), the bound, and whether it was met.
	Target     string  `json:"target,omitempty"`
	TargetStat string  `json:"target_stat,omitempty"`
	TargetMin  float64 `json:"target_min,omitempty"`
	TargetMax  float64 `json:"target_max,omitempty"`
	Met        *bool   `json:"met,omitempty"`
	Note       string  `json:"note,omitempty"`
}

// summarise fills the statistics of r from its samples.
func (r *Result) summarise() {
	r.Runs = len(r.Samples)
	if r.Runs == 0 {
		return
	}
	s := slices.Clone(r.Samples)
	slices.Sort(s)
	r.Min, r.Max = s[0], s[len(s)-1]
	if n := len(s); n%2 == 1 {
		r.Median = s[n/2]
	} else {
		r.Median = (s[n/2-1] + s[n/2]) / 2
	}
	rank := int(math.Ceil(0.99*float64(len(s)))) - 1
	r.P99 = s[max(rank, 0)]
	if r.Floor > 0 {
		r.Ratio = r.Median / r.Floor
	}
	if r.TargetStat != "" {
		v := r.stat(r.TargetStat)
		met := v >= r.TargetMin && v <= r.TargetMax
		r.Met = &met
	}
}

func (r *Result) stat(name string) float64 {
	switch name {
	case "p99":
		return r.P99
	case "max":
		return r.Max
	default: // p50, median
		return r.Median
	}
}

// withTarget sets a target of the form "stat ≤ bound unit".
func (r *Result) withTarget(stat string, bound float64) *Result {
	r.TargetStat, r.TargetMax = stat, bound
	r.Target = fmt.Sprintf("%s ≤ %s %s", stat, num(bound), r.Unit)
	return r
}

func (r *Result) withFloor(name string, v float64) *Result {
	r.FloorName, r.Floor = name, v
	return r
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// num formats a figure with three significant digits, without exponent.
func num(v float64) string {
	a := math.Abs(v)
	switch {
	case v == 0:
		return "0"
	case a >= 1000:
		return fmt.Sprintf("%.0f", v)
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

func median(v []float64) float64 {
	r := Result{Samples: v}
	r.summarise()
	return r.Median
}
