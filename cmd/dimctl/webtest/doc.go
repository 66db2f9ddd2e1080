// Package webtest tests dimctl web in a real headless Chromium against a
// live three-node service. It is a module of its own so that dim's go.mod
// gains no browser dependency; its only content is its test.
package webtest
