package redistest

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// The helper talks to its servers in plain RESP2 rather than through rueidis,
// so that checking readiness opens no client with background goroutines.

// replyError is an error reply of the server, such as "NOAUTH ...".
type replyError string

func (e replyError) Error() string { return string(e) }

// do sends cmds on one new connection and returns the reply to the last. An
// error reply to any of them is returned as a replyError.
func do(addr string, tlsConf *tls.Config, timeout time.Duration, cmds ...[]string) (string, error) {
	dialer := &net.Dialer{Timeout: timeout}
	var conn net.Conn
	var err error
	if tlsConf != nil {
		conn, err = (&tls.Dialer{NetDialer: dialer, Config: tlsConf}).Dial("tcp", addr)
	} else {
		conn, err = dialer.Dial("tcp", addr)
	}
	if err != nil {
		return "", err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return "", err
	}
	var req strings.Builder
	for _, args := range cmds {
		fmt.Fprintf(&req, "*%d\r\n", len(args))
		for _, arg := range args {
			fmt.Fprintf(&req, "$%d\r\n%s\r\n", len(arg), arg)
		}
	}
	if _, err := io.WriteString(conn, req.String()); err != nil {
		return "", err
	}
	r := bufio.NewReader(conn)
	var reply string
	var firstErr error
	for range cmds {
		reply, err = readReply(r)
		var rerr replyError
		if errors.As(err, &rerr) {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if err != nil {
			return "", err
		}
	}
	return reply, firstErr
}

// readReply reads one scalar RESP2 reply; integers are returned in decimal.
func readReply(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return "", errors.New("empty reply line")
	}
	switch kind, rest := line[0], line[1:]; kind {
	case '+', ':':
		return rest, nil
	case '-':
		return "", replyError(rest)
	case '$':
		n, err := strconv.Atoi(rest)
		if err != nil {
			return "", fmt.Errorf("bad bulk length %q", rest)
		}
		if n < 0 {
			return "", nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	default:
		return "", fmt.Errorf("unsupported reply %q", line)
	}
}
