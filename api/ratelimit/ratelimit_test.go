package ratelimit

import (
	"math/rand"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestBucket(t *testing.T) {
	c := &clock{time.Unix(1000, 0)}
	l := NewWithClock(c.now)
	r := Rule{PerSecond: 2, BurstCount: 3}
	for i := 0; i < 3; i++ {
		if w := l.Take("m", r, "k"); w != 0 {
			t.Fatalf("burst request %d limited (%v)", i, w)
		}
	}
	w := l.Take("m", r, "k")
	if w <= 0 || w > 500*time.Millisecond {
		t.Fatalf("4th request: wait %v, want (0, 500ms]", w)
	}
	if w := l.Take("m", r, "other"); w != 0 {
		t.Fatal("buckets are not per subject")
	}
	if w := l.Take("other-rule", r, "k"); w != 0 {
		t.Fatal("buckets are not per rule")
	}
	c.t = c.t.Add(600 * time.Millisecond)
	if w := l.Take("m", r, "k"); w != 0 {
		t.Fatalf("refilled bucket still limited: %v", w)
	}
	if w := l.Take("m", Rule{}, "k"); w != 0 {
		t.Fatal("a zero rule limited")
	}
}

// TestCheckRecord: failures recorded past the burst keep the subject
// waiting longer; Check never spends.
func TestCheckRecord(t *testing.T) {
	c := &clock{time.Unix(1000, 0)}
	l := NewWithClock(c.now)
	r := Defaults().LoginFailedAttempts
	for i := 0; i < 10; i++ {
		if w := l.Check("f", r, "@a:x"); w != 0 {
			t.Fatal("Check spent")
		}
	}
	for i := 0; i < 6; i++ {
		l.Record("f", r, "@a:x")
	}
	w := l.Check("f", r, "@a:x")
	if w < time.Duration(3.9/r.PerSecond*float64(time.Second)) {
		t.Fatalf("after 6 failures with burst 3: wait %v", w)
	}
	if l.Check("f", r, "@b:x") != 0 {
		t.Fatal("another account is limited")
	}
}

// TestHumanPaceNeverLimited simulates an hour of a person chatting under
// Synapse's default rc_message: a message every 5 to 60 s, sometimes three
// in a row a second apart. None is refused.
func TestHumanPaceNeverLimited(t *testing.T) {
	c := &clock{time.Unix(1000, 0)}
	l := NewWithClock(c.now)
	rule := Defaults().Message
	rng := rand.New(rand.NewSource(1))
	sent := 0
	for end := c.t.Add(time.Hour); c.t.Before(end); {
		n := 1
		if rng.Intn(5) == 0 {
			n = 3
		}
		for i := 0; i < n; i++ {
			if w := l.Take("message", rule, "@alice:x"); w != 0 {
				t.Fatalf("message %d at %v limited (wait %v)", sent, c.t, w)
			}
			sent++
			c.t = c.t.Add(time.Second)
		}
		c.t = c.t.Add(time.Duration(5+rng.Intn(56)) * time.Second)
	}
	if sent < 100 {
		t.Fatalf("only %d messages simulated", sent)
	}
	// A script sending as fast as it can is limited after the burst.
	for i := 0; i < 10; i++ {
		l.Take("message", rule, "@bot:x")
	}
	if l.Take("message", rule, "@bot:x") == 0 {
		t.Fatal("a sender over rc_message was not limited")
	}
}
