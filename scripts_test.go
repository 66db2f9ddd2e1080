package dim

import (
	"go/ast"
	"go/parser"
	"go/token"
	"regexp"
	"slices"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestScriptsPublishTheEventConstants proves that the event verbs have one
// source: every verb a script publishes on the service channel is the value
// of one of the ev constants that the subscribers switch on, and each script
// publishes exactly the verbs listed here. It reads the scripts from
// scripts.go, where all of them live, so that a renamed constant or a verb
// typed anew in Lua fails here instead of going unheard.
func TestScriptsPublishTheEventConstants(t *testing.T) {
	want := map[string][]string{
		"heartbeatScript": {evJoin},
		"drainScript":     {evDrain},
		"leaveScript":     {evLeave},
		"membersScript":   {evLeave},
		"leadScript":      {evLeader},
		"writeScript":     {evAssign},
		"releaseScript":   {evRelease},
		"avoidScript":     {evAvoid},
		"pinScript":       {evRebalance},
		"unpinScript":     {evRebalance},
		"drainNodeScript": {evRebalance},
		"undrainScript":   {evRebalance},
		"freezeScript":    {evRebalance},
		"thawScript":      {evRebalance},
	}
	verbs := []string{evJoin, evDrain, evLeave, evLeader, evAssign, evRelease, evConfig, evRebalance,
		evRebalanced, evAvoid, evPrepared}

	f, err := parser.ParseFile(token.NewFileSet(), "scripts.go", nil, 0)
	require.NoError(t, err)
	// A verb is the first word of the string a script publishes.
	publish := regexp.MustCompile(`PUBLISH',\s*[^,]+,\s*'([^' ]*)[ ']`)
	got := map[string][]string{}
	scripts := 0
	for _, decl := range f.Decls {
		gd, ok := decl.(*ast.GenDecl)
		if !ok || gd.Tok != token.VAR {
			continue
		}
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			if len(vs.Values) != 1 {
				continue
			}
			call, ok := vs.Values[0].(*ast.CallExpr)
			if !ok || len(call.Args) != 1 {
				continue
			}
			fn, ok := call.Fun.(*ast.Ident)
			lit, isLit := call.Args[0].(*ast.BasicLit)
			if !ok || (fn.Name != "script" && fn.Name != "keepScript") || !isLit {
				continue
			}
			body, err := strconv.Unquote(lit.Value)
			require.NoError(t, err)
			scripts++
			name := vs.Names[0].Name
			for _, m := range publish.FindAllStringSubmatch(body, -1) {
				assert.Contains(t, verbs, m[1], "%s publishes %q, which no ev constant names", name, m[1])
				if !slices.Contains(got[name], m[1]) {
					got[name] = append(got[name], m[1])
				}
			}
		}
	}
	assert.Greater(t, scripts, 25, "the scripts were found in scripts.go")
	assert.Equal(t, want, got, "the verbs each script publishes")
}
