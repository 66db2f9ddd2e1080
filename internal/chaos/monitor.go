package chaos

import (
	"bufio"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Monitor records every command a Redis server executes (Redis's MONITOR),
// with the server's wall clock, so that a test can tell when a node first
// talked to Redis after some moment.
type Monitor struct {
	conn net.Conn
	wg   sync.WaitGroup
	mu   sync.Mutex
	cmds []Command
}

// Command is one command as MONITOR reports it.
type Command struct {
	At   time.Time
	Args []string
}

// ScriptArg returns the first argument (ARGV[1]) of an EVAL or EVALSHA, or
// "". dim's scripts that act for a node — join, heartbeat, claim, release,
// drain, leave, lead — all pass the node's ID there.
func (c Command) ScriptArg() string {
	if len(c.Args) < 3 {
		return ""
	}
	if name := strings.ToUpper(c.Args[0]); name != "EVALSHA" && name != "EVAL" {
		return ""
	}
	n, err := strconv.Atoi(c.Args[2])
	if err != nil || len(c.Args) <= 3+n {
		return ""
	}
	return c.Args[3+n]
}

// StartMonitor connects to the Redis at addr and starts recording.
func StartMonitor(addr string) (*Monitor, error) {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return nil, fmt.Errorf("chaos: monitor: %w", err)
	}
	if _, err := conn.Write([]byte("MONITOR\r\n")); err != nil {
		conn.Close()
		return nil, fmt.Errorf("chaos: monitor: %w", err)
	}
	m := &Monitor{conn: conn}
	m.wg.Go(m.read)
	return m, nil
}

func (m *Monitor) read() {
	br := bufio.NewReaderSize(m.conn, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		if cmd, ok := parseMonitorLine(strings.TrimRight(line, "\r\n")); ok {
			m.mu.Lock()
			m.cmds = append(m.cmds, cmd)
			m.mu.Unlock()
		}
	}
}

// Stop ends the recording.
func (m *Monitor) Stop() {
	m.conn.Close()
	m.wg.Wait()
}

// Commands returns what was recorded so far.
func (m *Monitor) Commands() []Command {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Command(nil), m.cmds...)
}

// parseMonitorLine parses `+1700000000.123456 [0 127.0.0.1:5000] "CMD" "arg"`.
func parseMonitorLine(line string) (Command, bool) {
	if !strings.HasPrefix(line, "+") {
		return Command{}, false
	}
	line = line[1:]
	sp := strings.IndexByte(line, ' ')
	if sp < 0 {
		return Command{}, false
	}
	secs, frac, ok := strings.Cut(line[:sp], ".")
	if !ok {
		return Command{}, false
	}
	s, err1 := strconv.ParseInt(secs, 10, 64)
	us, err2 := strconv.ParseInt(frac, 10, 64)
	if err1 != nil || err2 != nil {
		return Command{}, false
	}
	rest := line[sp+1:]
	if end := strings.IndexByte(rest, ']'); end >= 0 {
		rest = rest[end+1:]
	}
	var args []string
	for {
		start := strings.IndexByte(rest, '"')
		if start < 0 {
			break
		}
		var b strings.Builder
		i := start + 1
		for i < len(rest) && rest[i] != '"' {
			if rest[i] == '\\' && i+1 < len(rest) {
				i++
				switch rest[i] {
				case 'n':
					b.WriteByte('\n')
				case 'r':
					b.WriteByte('\r')
				case 't':
					b.WriteByte('\t')
				case 'x':
					if i+2 < len(rest) {
						if v, err := strconv.ParseUint(rest[i+1:i+3], 16, 8); err == nil {
							b.WriteByte(byte(v))
							i += 2
							break
						}
					}
					b.WriteByte('x')
				default:
					b.WriteByte(rest[i])
				}
			} else {
				b.WriteByte(rest[i])
			}
			i++
		}
		args = append(args, b.String())
		if i >= len(rest) {
			break
		}
		rest = rest[i+1:]
	}
	return Command{At: time.Unix(s, us*1000), Args: args}, len(args) > 0
}
