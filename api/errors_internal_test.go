package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// A request the client abandoned is reported as such (499), not as an
// internal server error; a cancellation while the client is still there
// is a server fault (500).
func TestWriteErrorClientCancellation(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	cases := []struct {
		name   string
		ctx    context.Context
		err    error
		status int
	}{
		{"client gone", cancelled, fmt.Errorf("append to log: %w", context.Canceled), statusClientClosedRequest},
		{"client still there", context.Background(), fmt.Errorf("append to log: %w", context.Canceled), http.StatusInternalServerError},
		{"plain failure", context.Background(), errors.New("disk on fire"), http.StatusInternalServerError},
		{"matrix error", cancelled, errForbidden("no"), http.StatusForbidden},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/_matrix/client/v3/sync", nil).WithContext(c.ctx)
			w := httptest.NewRecorder()
			writeError(w, r, c.err)
			if w.Code != c.status {
				t.Fatalf("status %d, want %d (body %s)", w.Code, c.status, w.Body)
			}
		})
	}
}

func TestCheckDeviceID(t *testing.T) {
	for id, ok := range map[string]bool{
		"":                       true,
		"ABCDEFGH":               true,
		"phone \u00e9":           true,
		"a\x00b":                 false,
		"tab\there":              false,
		strings.Repeat("a", 256): false,
	} {
		if err := checkDeviceID(id); (err == nil) != ok {
			t.Errorf("checkDeviceID(%q) = %v, want ok=%v", id, err, ok)
		}
	}
}
