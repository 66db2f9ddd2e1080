// Command compare runs the placement comparison of package bench and prints
// it as a Markdown table.
//
// Usage:
//
//	go run ./cmd/compare [-sizes 10k/100,100k/1k,1M/10k] [-runs 5] [-json FILE]
//
// With -json it also writes every row, including the fastest and slowest
// time of each operation, to FILE ("-" for standard output, in which case
// the table goes to standard error).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/go-dim/dim/bench"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "compare:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("compare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sizesFlag := fs.String("sizes", "10k/100,100k/1k,1M/10k", "comma-separated KEYS/NODES sizes")
	runs := fs.Int("runs", 5, "timed repetitions of each placement; times are medians")
	jsonPath := fs.String("json", "", `also write the rows as JSON to this file ("-" for standard output)`)
	quiet := fs.Bool("q", false, "do not report progress on standard error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *runs < 1 {
		return fmt.Errorf("-runs %d: want at least 1", *runs)
	}
	var sizes []bench.Size
	for s := range strings.SplitSeq(*sizesFlag, ",") {
		size, err := bench.ParseSize(strings.TrimSpace(s))
		if err != nil {
			return err
		}
		sizes = append(sizes, size)
	}

	var progress func(bench.Approach, bench.Size)
	if !*quiet {
		progress = func(a bench.Approach, s bench.Size) { fmt.Fprintf(stderr, "measuring %s at %s\n", a.Name, s) }
	}
	approaches := bench.Approaches()
	rows, err := bench.Compare(approaches, sizes, *runs, progress)
	if err != nil {
		return err
	}

	table := stdout
	if *jsonPath == "-" {
		table = stderr
	}
	fmt.Fprint(table, bench.Markdown(rows))
	fmt.Fprintln(table)
	for _, a := range approaches {
		fmt.Fprintf(table, "- %s: %s\n", a.Name, a.Note)
	}

	if *jsonPath == "" {
		return nil
	}
	out, err := json.MarshalIndent(rows, "", "  ")
	if err != nil {
		return err
	}
	out = append(out, '\n')
	if *jsonPath == "-" {
		_, err = stdout.Write(out)
		return err
	}
	return os.WriteFile(*jsonPath, out, 0o644)
}
