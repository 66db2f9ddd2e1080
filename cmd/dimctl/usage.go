package main

import (
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
)

// command is one dimctl command, as -h shows it.
type command struct {
	name  string
	args  string   // after the command's name
	about string   // what it does, wrapped when printed
	flags []string // the flags that apply to it, besides the connection's
}

// commands are dimctl's commands, in the order -h lists them.
var commands = []command{
	{"status", "<service>", `leader, epoch, live nodes with the keys assigned to and running on each, and the keys not running (a summary; -keys or -json for every key); exits 3 when keys are down or quarantined, nodes suspect, the last rebalance failed or Redis is out of memory`, []string{"keys", "down-after", "json"}},
	{"watch", "<service>", `status, redrawn every -interval until Ctrl-C`, []string{"keys", "interval", "count", "json"}},
	{"rebalance", "<service>", `ask the service's leader to rebalance now, and wait for its answer`, []string{"json"}},
	{"drain", "<service> <node> [-for 1h]", `the node stays a member and gets no keys until the drain ends by itself or is undone; draining the last node that could run keys is refused`, []string{"for", "json"}},
	{"undrain", "<service> <node>", `give a drained node keys again`, []string{"json"}},
	{"pin", "<service> <key> <node>", `keep the key on the node while the node is live and meets the key's requirements`, []string{"json"}},
	{"unpin", "<service> <key>", `remove the key's pin`, []string{"json"}},
	{"freeze", "<service> [-for 30m]", `no voluntary moves (joins, weight changes, rebalances) until it ends; failures and drains still move keys; refused while a freeze is in force`, []string{"for", "json"}},
	{"thaw", "<service>", `end a freeze`, []string{"json"}},
	{"history", "<service> [-key k] [-node n] [-since 1h] [-limit 100]", `elections, joins, leaves, fences, moves, claims, releases and verdicts, newest first (needs +xrevrange on the service's keys)`, []string{"key", "node", "since", "limit", "json"}},
	{"explain", "<service> <key>", `where the key is assigned, who runs it with which token, its state, why it is where it is, and which constraint placed it (a pin, a requirement, a spread, a cost)`, []string{"json"}},
	{"plan", "<service> drain <node> | plan <service> join [<node>] [-weight w]", `print the moves the leader would make, and change nothing`, []string{"weight", "json"}},
	{"web", "<service> [-listen 127.0.0.1:8080] [-allow-actions]", `serve a live page of the service (nodes, a grid of their keys coloured by state, the keys not running, the history); read-only unless -allow-actions, loopback unless -allow-remote; -json does not apply (the page's JSON is at /snapshot)`, []string{"listen", "allow-actions", "allow-remote", "interval", "limit", "max-keys"}},
	{"purge", "<service>", `remove every key of a retired service; refused while any of its nodes is live`, []string{"json"}},
	{"services", "", `list the services in this Redis (under -prefix); it scans every key name, so it is for a user who may see them all`, []string{"json"}},
}

// connectionFlags apply to every command.
var connectionFlags = []string{"redis", "prefix", "timeout", "user", "password", "tls"}

const exitCodes = `Exit codes: 0 done (watch and web: interrupted); 1 Redis or the service is
not as expected; 2 bad usage; 3 status found the service unhealthy for
longer than -down-after.
`

// commandNames lists the commands.
func commandNames() []string {
	names := make([]string, len(commands))
	for i, c := range commands {
		names[i] = c.name
	}
	return names
}

// commandIn returns the command named in args, or "" if none is: the
// first argument that names one.
func commandIn(args []string) string {
	for _, a := range args {
		if slices.Contains(commandNames(), a) {
			return a
		}
	}
	return ""
}

// printUsage prints the usage of dimctl: its commands, then every flag.
func printUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprint(w, `Usage: dimctl [flags] <command> <service>
       dimctl [flags] services

Shows and steers a dim service through the Redis it coordinates in.
"dimctl <command> -h" shows one command.

Commands:
`)
	for _, c := range commands {
		about := c.about
		if c.args != "" && c.args != "<service>" {
			about = c.name + " " + c.args + ": " + about
		}
		fmt.Fprintf(w, "  %-10s %s\n", c.name, strings.Join(wrap(about, 66), "\n             "))
	}
	fmt.Fprint(w, `
Flags may come before or after the command. The password may also come from
$`+passwordEnv+`.

`+exitCodes+`
Flags:
`)
	printFlags(w, fs, nil)
}

// printHelp prints the usage of one command, or of dimctl when name is "".
func printHelp(w io.Writer, fs *flag.FlagSet, name string) {
	i := slices.IndexFunc(commands, func(c command) bool { return c.name == name })
	if i < 0 {
		printUsage(w, fs)
		return
	}
	c := commands[i]
	fmt.Fprintf(w, "Usage: dimctl [flags] %s %s\n\n%s.\n\n%s\nFlags of %s:\n",
		c.name, c.args, strings.Join(wrap(strings.ToUpper(c.about[:1])+c.about[1:], 78), "\n"), exitCodes, c.name)
	printFlags(w, fs, c.flags)
	fmt.Fprint(w, "\nConnection flags (the password may also come from $"+passwordEnv+"):\n")
	printFlags(w, fs, connectionFlags)
}

// printFlags prints the flags named, or all of them when names is nil.
func printFlags(w io.Writer, fs *flag.FlagSet, names []string) {
	all := flag.NewFlagSet("", flag.ContinueOnError)
	fs.VisitAll(func(f *flag.Flag) {
		if names == nil || slices.Contains(names, f.Name) {
			all.Var(f.Value, f.Name, f.Usage)
			all.Lookup(f.Name).DefValue = f.DefValue // not the value parsed
		}
	})
	all.SetOutput(w)
	all.PrintDefaults()
}

// wrap breaks text into lines of at most width characters, at spaces.
func wrap(text string, width int) []string {
	var lines []string
	line := ""
	for _, word := range strings.Fields(text) {
		if line != "" && len(line)+1+len(word) > width {
			lines = append(lines, line)
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += word
	}
	return append(lines, line)
}
