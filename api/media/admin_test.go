package media_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"github.com/engram-hs/engram/api"
	"github.com/engram-hs/engram/internal/objstore"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
)

func withSecret(c *api.Config) { c.RegistrationSharedSecret = "s3cret" }

func (ts *testServer) registerAdmin(name string) string {
	ts.t.Helper()
	r := ts.do("GET", "/_synapse/admin/v1/register", "", nil)
	nonce := r.json(ts.t)["nonce"].(string)
	mac := hmac.New(sha1.New, []byte("s3cret"))
	mac.Write([]byte(nonce + "\x00" + name + "\x00pw-" + name + "\x00admin"))
	body, _ := json.Marshal(map[string]any{"nonce": nonce, "username": name, "password": "pw-" + name, "admin": true, "mac": hex.EncodeToString(mac.Sum(nil))})
	r = ts.do("POST", "/_synapse/admin/v1/register", "", strings.NewReader(string(body)))
	if r.Status != 200 {
		ts.t.Fatalf("register admin: %d %s", r.Status, r.Body)
	}
	return r.json(ts.t)["access_token"].(string)
}

func TestMediaAdmin(t *testing.T) { eachBackend(t, testMediaAdmin) }

func testMediaAdmin(t *testing.T, be option) {
	ts := startServer(t, be, withSecret)
	admin := ts.registerAdmin("root")
	alice := ts.register("alice")
	inRoom := ts.upload(alice.AccessToken, testPNG(t, 10, 10), "image/png", "room.png")
	other := ts.upload(alice.AccessToken, []byte("notes"), "text/plain", "notes.txt")
	ctx := context.Background()
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.SendMessageEvent(ctx, room.RoomID, event.EventMessage, map[string]any{
		"msgtype": "m.image", "body": "room.png", "url": "mxc://" + serverName + "/" + inRoom,
		"info": map[string]any{"thumbnail_url": "mxc://elsewhere.example/remoteThumb"},
	}); err != nil {
		t.Fatal(err)
	}
	dl := func(id string) int {
		return ts.do("GET", "/_matrix/client/v1/media/download/"+serverName+"/"+id, alice.AccessToken, nil).Status
	}
	p := "/_synapse/admin/v1"
	roomPath := url.PathEscape(string(room.RoomID))
	userPath := url.PathEscape(string(alice.UserID))

	// Only admins.
	for _, ep := range []string{"POST /media/quarantine/" + serverName + "/" + inRoom, "POST /room/" + roomPath + "/media/quarantine",
		"POST /user/" + userPath + "/media/quarantine", "GET /users/" + userPath + "/media", "DELETE /media/" + serverName + "/" + other,
		"POST /purge_media_cache?before_ts=1", "GET /room/" + roomPath + "/media", "DELETE /users/" + userPath + "/media"} {
		method, path, _ := strings.Cut(ep, " ")
		if r := ts.do(method, p+path, alice.AccessToken, nil); r.Status != 403 || r.errcode() != "M_FORBIDDEN" {
			t.Errorf("%s as a non-admin: %d %s", ep, r.Status, r.Body)
		}
		if r := ts.do(method, p+path, "", nil); r.Status != 401 {
			t.Errorf("%s without a token: %d %s", ep, r.Status, r.Body)
		}
	}

	r := ts.do("GET", p+"/room/"+roomPath+"/media", admin, nil)
	if m := r.json(t); r.Status != 200 || fmt.Sprint(m["local"]) != "[mxc://"+serverName+"/"+inRoom+"]" || fmt.Sprint(m["remote"]) != "[mxc://elsewhere.example/remoteThumb]" {
		t.Errorf("room media: %d %s", r.Status, r.Body)
	}
	r = ts.do("GET", p+"/users/"+userPath+"/media?order_by=media_length&dir=b", admin, nil)
	var list struct {
		Media []struct {
			MediaID    string `json:"media_id"`
			Length     int64  `json:"media_length"`
			UploadName string `json:"upload_name"`
		} `json:"media"`
		Total int `json:"total"`
	}
	_ = json.Unmarshal(r.Body, &list)
	if r.Status != 200 || list.Total != 2 || len(list.Media) != 2 || list.Media[0].MediaID != inRoom || list.Media[1].UploadName != "notes.txt" {
		t.Errorf("user media: %d %s", r.Status, r.Body)
	}

	// A room's media: only what this server holds counts.
	r = ts.do("POST", p+"/room/"+roomPath+"/media/quarantine", admin, nil)
	if r.Status != 200 || r.json(t)["num_quarantined"] != float64(1) {
		t.Errorf("quarantine room: %d %s", r.Status, r.Body)
	}
	if dl(inRoom) != 404 || dl(other) != 200 {
		t.Errorf("after quarantining the room: %d %d", dl(inRoom), dl(other))
	}
	if r := ts.do("POST", p+"/media/unquarantine/"+serverName+"/"+inRoom, admin, nil); r.Status != 200 || dl(inRoom) != 200 {
		t.Errorf("unquarantine: %d, download %d", r.Status, dl(inRoom))
	}
	if r := ts.do("POST", p+"/media/quarantine/"+serverName+"/"+other, admin, nil); r.Status != 200 || dl(other) != 404 {
		t.Errorf("quarantine one: %d, download %d", r.Status, dl(other))
	}
	r = ts.do("POST", p+"/user/"+userPath+"/media/quarantine", admin, nil)
	if r.Status != 200 || r.json(t)["num_quarantined"] != float64(1) || dl(inRoom) != 404 {
		t.Errorf("quarantine user: %d %s", r.Status, r.Body)
	}
	r = ts.do("GET", p+"/media/"+serverName+"/"+other, admin, nil)
	if info, _ := r.json(t)["media_info"].(map[string]any); r.Status != 200 || info["quarantined_by"] != "@root:"+serverName {
		t.Errorf("media info: %d %s", r.Status, r.Body)
	}

	// Deletion.
	r = ts.do("DELETE", p+"/media/"+serverName+"/"+other, admin, nil)
	if r.Status != 200 || r.json(t)["total"] != float64(1) {
		t.Errorf("delete: %d %s", r.Status, r.Body)
	}
	if r := ts.do("GET", p+"/media/"+serverName+"/"+other, admin, nil); r.Status != 404 {
		t.Errorf("info after delete: %d", r.Status)
	}
	if r := ts.do("POST", p+"/media/delete?before_ts=99999999999999", admin, nil); r.Status != 400 {
		t.Errorf("delete older with keep_profiles left at its default: %d %s", r.Status, r.Body)
	}
	r = ts.do("POST", p+"/media/delete?before_ts=99999999999999&keep_profiles=false", admin, nil)
	if r.Status != 200 || r.json(t)["total"] != float64(1) {
		t.Errorf("delete older: %d %s", r.Status, r.Body)
	}
	if r := ts.do("POST", p+"/purge_media_cache", admin, nil); r.Status != 400 || r.errcode() != "M_MISSING_PARAM" {
		t.Errorf("purge without before_ts: %d %s", r.Status, r.Body)
	}
	if r := ts.do("POST", p+"/purge_media_cache?before_ts=99999999999999", admin, nil); r.Status != 200 || r.json(t)["deleted"] != float64(0) {
		t.Errorf("purge: %d %s", r.Status, r.Body)
	}
}

// media_retention is applied by MediaDeleted facts the janitor records;
// blobs nothing refers to then leave the disk.
func TestRetention(t *testing.T) { eachBackend(t, testRetention) }

func testRetention(t *testing.T, be option) {
	ts := startServer(t, be, func(c *api.Config) {
		c.Media.Repo.LocalMediaLifetime = 300 * time.Millisecond
		c.Media.Repo.JanitorInterval = 50 * time.Millisecond
		c.Media.Repo.JanitorGrace = 100 * time.Millisecond
	})
	tok := ts.register("alice").AccessToken
	id := ts.upload(tok, []byte("short-lived"), "text/plain", "x.txt")
	var blobs []string
	_ = filepath.Walk(filepath.Join(ts.dir, "media", "blobs"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && !strings.Contains(p, "/blobs/tmp/") {
			blobs = append(blobs, p)
		}
		return nil
	})
	if len(blobs) != 1 {
		t.Fatalf("%d blobs on disk", len(blobs))
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := os.Stat(blobs[0])
		st := ts.do("GET", "/_matrix/client/v1/media/download/"+serverName+"/"+id, tok, nil).Status
		if st == 404 && os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 20 s: download %d, blob %v", st, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	entries, err := ts.node.Read(1, 10000)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range entries {
		if e.Kind == englog.KindMediaDeleted {
			var f facts.MediaDeleted
			if facts.Decode(e, &f) == nil && f.Reason == "retention" && len(f.Media) == 1 && f.Media[0].MediaID == id {
				found = true
			}
		}
	}
	if !found {
		t.Error("no MediaDeleted retention fact in the log")
	}
	if ts.bucket != nil {
		sum := sha256.Sum256([]byte("short-lived"))
		for {
			_, err := ts.bucket.Stat(context.Background(), blobKey(hex.EncodeToString(sum[:])))
			if errors.Is(err, objstore.ErrNotFound) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after 20 s the blob is still in the bucket (%v)", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}
