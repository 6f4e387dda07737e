package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/stats"
)

// topRefresh is how often trellis top redraws.
const topRefresh = 2 * time.Second

func runTop(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "top", "top [--window 1m] [--service NAME] [--once]")
	window := fs.String("window", "1m", "window the figures cover: 1m to 15m")
	service := fs.String("service", "", "show only this service and its edges")
	once := fs.Bool("once", false, "print once and exit (the default when stdout is not a terminal)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	w, err := stats.ParseWindow(*window)
	if err != nil {
		return usageErr("--window: %v", err)
	}
	c, err := connect(e)
	if err != nil {
		return err
	}
	live := !*once && isTerminal(e.stdout)
	for {
		st, err := c.Stats(ctx, w, *service)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		var b bytes.Buffer
		if live {
			// Home and clear, then the whole frame in one write: no
			// flicker of a half-drawn table.
			b.WriteString("\x1b[H\x1b[2J")
			fmt.Fprintf(&b, "trellis top — window %s, %s — refreshed every %s (Ctrl-C to quit)\n\n", *window, time.Now().Format("15:04:05"), topRefresh)
		}
		writeTop(&b, st)
		if _, err := e.stdout.Write(b.Bytes()); err != nil {
			return err
		}
		if !live {
			return nil
		}
		t := time.NewTimer(topRefresh)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// writeTop prints the services and edges of st, busiest first (the
// server's order).
func writeTop(w io.Writer, st v1.Stats) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tRPS\tSUCCESS\tP50\tP90\tP99\tBYTES/S")
	for _, s := range st.Services {
		fmt.Fprintf(tw, "%s\t%s\n", s.Name, trafficCols(s.Traffic))
	}
	if len(st.Services) == 0 {
		fmt.Fprintln(tw, "(no traffic measured)")
	}
	fmt.Fprintln(tw, "\t\t\t\t\t\t")
	fmt.Fprintln(tw, "EDGE\tRPS\tSUCCESS\tP50\tP90\tP99\tBYTES/S")
	for _, e := range st.Edges {
		fmt.Fprintf(tw, "%s -> %s\t%s\n", edgeEnd(e.Source), edgeEnd(e.Destination), trafficCols(e.Traffic))
	}
	if len(st.Edges) == 0 {
		fmt.Fprintln(tw, "(no traffic measured)")
	}
	tw.Flush()
}

func runStat(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "stat", "stat service NAME [--window 1m] [-o table|json|yaml]")
	window := fs.String("window", "1m", "window the figures cover: 1m to 15m")
	out := fs.String("o", "table", "output format: table, json or yaml")
	if err := parseSub(fs, reorder(args)); err != nil {
		return err
	}
	if fs.NArg() != 2 || fs.Arg(0) != "service" {
		return usageErr("want: stat service NAME")
	}
	if *out != "table" && *out != "json" && *out != "yaml" {
		return usageErr("-o %q: want table, json or yaml", *out)
	}
	w, err := stats.ParseWindow(*window)
	if err != nil {
		return usageErr("--window: %v", err)
	}
	name := fs.Arg(1)
	c, err := connect(e)
	if err != nil {
		return err
	}
	st, err := c.Stats(ctx, w, name)
	if err != nil {
		return err
	}
	return show(e.stdout, *out, st, func(tw io.Writer) { writeStat(tw, name, st) })
}

// writeStat prints one service's versions (as its proxies received the
// traffic) and the routes into it (as its callers sent it).
func writeStat(tw io.Writer, name string, st v1.Stats) {
	fmt.Fprintln(tw, "VERSION\tRPS\tSUCCESS\tP50\tP90\tP99\tBYTES/S")
	n := 0
	for _, s := range st.Services {
		if s.Name != name {
			continue
		}
		for _, v := range s.Versions {
			fmt.Fprintf(tw, "%s\t%s\n", dash(v.Version), trafficCols(v.Traffic))
			n++
		}
	}
	if n == 0 {
		fmt.Fprintln(tw, "(no traffic measured)")
	}
	fmt.Fprintln(tw, "\t\t\t\t\t\t")
	fmt.Fprintln(tw, "FROM\tROUTE\tVERSION\tRPS\tSUCCESS\tP50\tP90\tP99\tBYTES/S\tRETRIES")
	n = 0
	for _, e := range st.Edges {
		if e.Destination != name {
			continue
		}
		for _, r := range e.Routes {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", edgeEnd(e.Source), dash(r.Route), dash(r.Version), trafficCols(r.Traffic), r.Retries)
			n++
		}
	}
	if n == 0 {
		fmt.Fprintln(tw, "(no traffic measured)")
	}
}

// trafficCols formats the figure columns shared by top and stat.
func trafficCols(t v1.Traffic) string {
	success := "-"
	if t.SuccessRate != nil {
		success = fmt.Sprintf("%.2f%%", *t.SuccessRate*100)
	}
	ms := func(v float64) string {
		if t.Requests == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1fms", v)
	}
	return fmt.Sprintf("%.1f\t%s\t%s\t%s\t%s\t%s", t.RequestsPerSecond, success, ms(t.P50Ms), ms(t.P90Ms), ms(t.P99Ms), humanBytes(t.BytesPerSecond))
}

func edgeEnd(s string) string {
	switch s {
	case "":
		return "(outside)"
	case stats.Other:
		return "(other)"
	}
	return s
}

func humanBytes(v float64) string {
	for _, u := range []string{"B", "KiB", "MiB"} {
		if v < 1024 {
			return strings.TrimSuffix(fmt.Sprintf("%.1f", v), ".0") + u
		}
		v /= 1024
	}
	return fmt.Sprintf("%.1fGiB", v)
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
