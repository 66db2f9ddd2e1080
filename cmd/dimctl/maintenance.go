package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/go-dim/dim"
	"github.com/redis/rueidis"
)

// drain takes a node out of placement for -for.
func (o *options) drain(ctx context.Context, client rueidis.Client, stdout io.Writer) error {
	d := o.holdFor
	if d == 0 {
		d = dim.DefaultDrainFor
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	until, err := dim.DrainNode(ctx, client, o.dimService(), o.node, d)
	if err != nil {
		return err
	}
	return o.done(stdout, map[string]any{"drained": o.node, "until": until.UTC(), "for_ms": d.Milliseconds()},
		"drained %s in %q until %s (%v): its keys move to the other nodes; it stays a member\n",
		quote(o.node), o.service, until.Local().Format(time.DateTime), d)
}

// undrain gives a drained node keys again.
func (o *options) undrain(ctx context.Context, client rueidis.Client, stdout io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	was, err := dim.UndrainNode(ctx, client, o.dimService(), o.node)
	if err != nil {
		return err
	}
	if !was {
		return fmt.Errorf("%s is not drained in %q", quote(o.node), o.service)
	}
	return o.done(stdout, map[string]any{"undrained": o.node},
		"undrained %s in %q: the leader gives it keys again\n", quote(o.node), o.service)
}

// freeze holds voluntary moves back for -for.
func (o *options) freeze(ctx context.Context, client rueidis.Client, stdout io.Writer) error {
	d := o.holdFor
	if d == 0 {
		d = dim.DefaultFreezeFor
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	if err := dim.Freeze(ctx, client, o.dimService(), d); err != nil {
		return err
	}
	return o.done(stdout, map[string]any{"frozen": true, "for_ms": d.Milliseconds()},
		"froze %q for %v: joins, weight changes and rebalances move nothing; failures and drains still do\n", o.service, d)
}

// thaw ends a freeze.
func (o *options) thaw(ctx context.Context, client rueidis.Client, stdout io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	was, err := dim.Thaw(ctx, client, o.dimService())
	if err != nil {
		return err
	}
	if !was {
		return fmt.Errorf("%q is not frozen", o.service)
	}
	return o.done(stdout, map[string]any{"frozen": false}, "thawed %q: the leader balances again\n", o.service)
}

// pin pins a key to a node.
func (o *options) pin(ctx context.Context, client rueidis.Client, stdout io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	if err := dim.Pin(ctx, client, o.dimService(), o.node, o.pinTo); err != nil {
		return err
	}
	return o.done(stdout, map[string]any{"pinned": o.node, "node": o.pinTo},
		"pinned %s to %s in %q: it stays there while the node is live and meets the key's requirements\n", quote(o.node), quote(o.pinTo), o.service)
}

// unpin removes a key's pin.
func (o *options) unpin(ctx context.Context, client rueidis.Client, stdout io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	was, err := dim.Unpin(ctx, client, o.dimService(), o.node)
	if err != nil {
		return err
	}
	if !was {
		return fmt.Errorf("%s is not pinned in %q", quote(o.node), o.service)
	}
	return o.done(stdout, map[string]any{"unpinned": o.node}, "unpinned %s in %q\n", quote(o.node), o.service)
}

// done prints what a command did: a sentence, or with -json an object of
// fields, the service's name among them.
func (o *options) done(w io.Writer, fields map[string]any, format string, args ...any) error {
	if o.json {
		fields["service"] = o.service
		return json.NewEncoder(w).Encode(fields)
	}
	_, err := fmt.Fprintf(w, format, args...)
	return err
}
