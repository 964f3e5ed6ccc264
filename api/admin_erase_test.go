package api_test

import (
	"context"
	"net/url"
	"testing"
	"time"

	englog "github.com/engram-hs/engram/log"
)

// TestDeactivateEraseErasesProfiles: a deactivation with erase, by an
// admin or by the user themself, erases every profile the user set from
// the log and the disk, not only from what the server answers.
func TestDeactivateEraseErasesProfiles(t *testing.T) {
	for _, route := range []string{"admin", "client"} {
		t.Run(route, func(t *testing.T) {
			ts := startServer(t)
			adm := ts.registerAdmin("root")
			bob := ts.register("bob")
			bobID := "@bob:" + serverName
			marker := "bob-profile-marker-e61c-" + route
			for _, name := range []string{marker + " one", marker + " two"} {
				if st, b := ts.do("PUT", "/_matrix/client/v3/profile/"+url.PathEscape(bobID)+"/displayname", bob.AccessToken, map[string]any{"displayname": name}); st != 200 {
					t.Fatalf("set displayname: %d %v", st, b)
				}
			}
			if hits, _ := englog.FilesHolding(ts.dir, []byte(marker)); len(hits) == 0 {
				t.Fatal("the display name is nowhere on disk before the erasure: the search cannot see it")
			}
			if route == "admin" {
				if st, b := ts.do("POST", "/_synapse/admin/v1/deactivate/"+url.PathEscape(bobID), adm, map[string]any{"erase": true}); st != 200 {
					t.Fatalf("deactivate with erase: %d %v", st, b)
				}
			} else {
				if st, b := ts.do("POST", "/_matrix/client/v3/account/deactivate", bob.AccessToken, map[string]any{"erase": true,
					"auth": map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "bob"}, "password": "pw-bob"}}); st != 200 {
					t.Fatalf("deactivate with erase: %d %v", st, b)
				}
			}
			if st, b := ts.do("GET", "/_synapse/admin/v2/users/"+url.PathEscape(bobID), adm, nil); st != 200 || b["deactivated"] != true || b["erased"] != true || b["displayname"] != nil {
				t.Fatalf("user details after the erasure: %d %v", st, b)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := ts.node.WaitErasures(ctx); err != nil {
				t.Fatal(err)
			}
			if hits, err := englog.FilesStillHolding(ctx, ts.dir, ts.node.DB(), []byte(marker)); err != nil || len(hits) > 0 {
				t.Fatalf("after the erasure the display name is still in %v (%v)", hits, err)
			}
		})
	}
}
