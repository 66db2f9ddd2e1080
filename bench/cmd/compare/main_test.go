package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/go-dim/dim/bench"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestRunPrintsATableAndWritesJSON(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rows.json")
	var stdout, stderr bytes.Buffer
	require.NoError(t, run([]string{"-sizes", "300/3", "-runs", "1", "-q", "-json", path}, &stdout, &stderr))

	assert.Contains(t, stdout.String(), "| approach | keys/nodes |")
	assert.Contains(t, stdout.String(), "| dim.Balance | 300/3 | 0 | 1.00 | 75 (75) | 100 (100) |")
	assert.Empty(t, stderr.String())

	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var rows []bench.Row
	require.NoError(t, json.Unmarshal(data, &rows))
	require.Len(t, rows, len(bench.Approaches()))
	assert.Equal(t, "dim.Balance", rows[0].Approach)
	assert.Equal(t, 300, rows[0].Keys)
}

func TestRunRejectsBadFlags(t *testing.T) {
	var out bytes.Buffer
	assert.Error(t, run([]string{"-sizes", "lots"}, &out, &out))
	assert.Error(t, run([]string{"-runs", "0"}, &out, &out))
}
