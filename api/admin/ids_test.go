package admin

import (
	"strings"
	"testing"
)

// TestRandomIDsFitACommandLine: the IDs an admin gets back (purge and
// delete IDs) go on synadm's command line, where one starting with "-" is
// taken for an option (TestSynadm failed so on a base64url purge ID).
func TestRandomIDsFitACommandLine(t *testing.T) {
	seen := map[string]bool{}
	for range 2000 {
		id := randomID()
		if strings.HasPrefix(id, "-") || strings.Trim(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") != "" || len(id) != 26 {
			t.Fatalf("randomID() = %q: want 26 characters of A-Z and 2-7", id)
		}
		if seen[id] {
			t.Fatalf("randomID() gave %q twice", id)
		}
		seen[id] = true
	}
}
