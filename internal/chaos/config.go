package chaos

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Config is one configured instance of the chaos test service, as the node
// program's getConfig reads it from the configs file the driver writes. A
// misbehaviour field makes that callback misbehave for the key; changing
// it changes the config's content, so dim replaces the instance.
type Config struct {
	Key     string `json:"key"`
	Version int    `json:"version"`
	// Create: "" behaves; "error" fails the first two calls of each node
	// process for this key and version; "panic" panics in the first;
	// "hang" blocks the first past the callback timeout, until its context
	// ends, then returns an instance all the same; "slow" takes SlowCreate.
	Create string `json:"create,omitempty"`
	// Disconnect: "" behaves; "error" and "panic" stop the instance, then
	// fail; "slow" takes SlowDisconnect first; "hang" waits for its
	// context to end (the callback timeout) before stopping the instance.
	Disconnect string `json:"disconnect,omitempty"`
	// Health: "" behaves; "error" fails the first check of each instance.
	Health string `json:"health,omitempty"`
	// SlowMS, if set, is how long a "slow" disconnect takes, in
	// milliseconds, instead of SlowDisconnect.
	SlowMS int `json:"slow_ms,omitempty"`
	// Until, if set, ends the Disconnect misbehaviour at this wall clock
	// (Unix nanoseconds): a disconnect called later behaves. It bounds a
	// fault that makes many disconnects slow.
	Until int64 `json:"until,omitempty"`
	// KeyFn: "" behaves; "hang" makes the key function (dim.WithKey) block
	// for KeyHang(callback timeout) on every call for this config before it
	// answers; "panic" makes it panic on every call.
	KeyFn string `json:"keyfn,omitempty"`
}

// KeyHang is how long a hanging key function blocks: past the callback
// timeout, so that dim abandons the call, and short enough that the call
// still running when the fault is healed does not hold config reads up for
// longer than the recovery bound allows.
func KeyHang(timeout time.Duration) time.Duration { return timeout * 3 / 2 }

// Misbehaves reports whether any callback of the config misbehaves.
func (c Config) Misbehaves() bool {
	return c.Create != "" || c.Disconnect != "" || c.Health != "" || c.KeyFn != "" || c.SlowMS != 0 || c.Until != 0
}

// Behave returns the config without its misbehaviours.
func (c Config) Behave() Config {
	return Config{Key: c.Key, Version: c.Version}
}

// Durations of the slow callbacks: well inside the callback timeout, and a
// slow disconnect well inside the fence margin, so that even a fenced node
// stops a slowly disconnecting instance before its lease can end.
const (
	SlowCreate     = 300 * time.Millisecond
	SlowDisconnect = 50 * time.Millisecond
	// HangExtra is how long a hanging create keeps going after its context
	// ended: a callback that notices cancellation late, but well inside the
	// fence margin.
	HangExtra = 50 * time.Millisecond
)

// Make-before-break in the node program (its -prepare flag): prepare is a
// login that takes PrepareLogin, and an old owner keeps a moved key for at
// most PrepareWithin while its new owner prepares.
const (
	PrepareLogin  = 50 * time.Millisecond
	PrepareWithin = 500 * time.Millisecond
)

// ReadConfigs reads a configs file.
func ReadConfigs(path string) ([]Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("chaos: read configs: %w", err)
	}
	var out []Config
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("chaos: parse configs: %w", err)
	}
	return out, nil
}

// WriteConfigs replaces a configs file atomically, so that a reader sees
// either the old list or the new one.
func WriteConfigs(path string, cfgs []Config) error {
	data, err := json.Marshal(cfgs)
	if err != nil {
		return fmt.Errorf("chaos: encode configs: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".configs-*")
	if err != nil {
		return fmt.Errorf("chaos: write configs: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("chaos: write configs: %w", err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("chaos: write configs: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("chaos: write configs: %w", err)
	}
	return nil
}
