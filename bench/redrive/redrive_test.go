package redrive_test

import (
	"context"
	"testing"

	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/bench/generate"
	"github.com/engram-hs/engram/bench/internal/benchserver"
	"github.com/engram-hs/engram/bench/redrive"
	"github.com/engram-hs/engram/bench/report"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/stateres"
)

// pduTypes counts the PDUs of a log by event type.
func pduTypes(t *testing.T, l englog.Log) map[string]int {
	t.Helper()
	out := map[string]int{}
	for from := uint64(1); ; {
		es, err := l.Read(from, 512)
		if err != nil {
			t.Fatal(err)
		}
		if len(es) == 0 {
			return out
		}
		for _, e := range es {
			if e.Kind != englog.KindPDU {
				continue
			}
			var f facts.PDU
			if err := facts.Decode(e, &f); err != nil {
				t.Fatal(err)
			}
			v, _ := stateres.Version(f.RoomVersion)
			ev, err := stateres.ParseEvent(v, f.Event)
			if err != nil {
				t.Fatal(err)
			}
			out[ev.Type()]++
		}
		from = es[len(es)-1].Offset + 1
	}
}

func TestRedriveGeneratedLog(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := generate.Options{Seed: 3, Users: 30, Rooms: 8, Events: 1500}
	gen, err := generate.Run(ctx, dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	target := benchserver.Start(t, "", "target.localhost")
	rec := report.NewRecorder("redrive", nil, nil)
	res, err := redrive.Run(ctx, redrive.Options{Dir: dir, URL: target.URL, Logger: zerolog.Nop()}, rec)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Errors) != 0 {
		t.Fatalf("errors: %v (inputs %v, skipped %v)", res.Errors, res.Inputs, res.Skipped)
	}
	if res.Entries != gen.Entries {
		t.Fatalf("read %d entries of %d", res.Entries, gen.Entries)
	}
	if got := res.Inputs["register"]; got != int64(opts.Users) {
		t.Errorf("registered %d users, the log has %d", got, opts.Users)
	}
	if got := res.Inputs["create_room"]; got != int64(opts.Rooms) {
		t.Errorf("created %d rooms, the log has %d", got, opts.Rooms)
	}
	sends := int64(gen.PDUsByType["m.room.message"] + gen.PDUsByType["m.reaction"])
	if got := res.Inputs["send"]; got != sends {
		t.Errorf("sent %d messages and reactions, the log has %d", got, sends)
	}
	if got, want := res.Inputs["redact"], int64(gen.PDUsByType["m.room.redaction"]); got != want {
		t.Errorf("redacted %d events, the log has %d redactions", got, want)
	}
	for _, op := range []string{"join", "leave", "typing", "receipt", "displayname", "state"} {
		if res.Inputs[op] == 0 {
			t.Errorf("no %s re-driven (inputs %v)", op, res.Inputs)
		}
	}
	// The target's own log holds what was re-driven.
	got := pduTypes(t, target.Node)
	if got["m.room.message"] != gen.PDUsByType["m.room.message"] || got["m.room.create"] != opts.Rooms {
		t.Errorf("target log has %d messages in %d rooms, source %d in %d", got["m.room.message"], got["m.room.create"], gen.PDUsByType["m.room.message"], opts.Rooms)
	}
	if v, ok := rec.Get("inputs_per_s"); !ok || v <= 0 {
		t.Errorf("inputs_per_s = %v", v)
	}
}
