package media_test

import (
	"bytes"
	"image"
	"mime"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/engram-hs/engram/api"
	repomedia "github.com/engram-hs/engram/media"
)

func queryEscape(s string) string { return url.QueryEscape(s) }

func TestUploadAndDownload(t *testing.T) { eachBackend(t, testUploadAndDownload) }

func testUploadAndDownload(t *testing.T, be option) {
	ts := startServer(t, be)
	alice := ts.register("alice")
	tok := alice.AccessToken
	content := testPNG(t, 40, 20)
	id := ts.upload(tok, content, "image/png", "cat.png")

	for _, path := range []string{
		"/_matrix/client/v1/media/download/" + serverName + "/" + id,
		"/_matrix/client/v1/media/download/" + serverName + "/" + id + "/other.png",
	} {
		r := ts.do("GET", path, tok, nil)
		if r.Status != 200 || !bytes.Equal(r.Body, content) {
			t.Fatalf("GET %s: %d, %d bytes", path, r.Status, len(r.Body))
		}
		if ct := r.Header.Get("Content-Type"); ct != "image/png" {
			t.Errorf("Content-Type %q", ct)
		}
		want := map[string]string{
			"Content-Security-Policy":      "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';",
			"X-Content-Type-Options":       "nosniff",
			"Cross-Origin-Resource-Policy": "cross-origin",
		}
		for k, v := range want {
			if got := r.Header.Get(k); got != v {
				t.Errorf("%s: %q, want %q", k, got, v)
			}
		}
		disp, params, err := mime.ParseMediaType(r.Header.Get("Content-Disposition"))
		wantName := "cat.png"
		if strings.HasSuffix(path, "other.png") {
			wantName = "other.png"
		}
		if err != nil || disp != "inline" || params["filename"] != wantName {
			t.Errorf("Content-Disposition %q (%v), want inline; filename=%s", r.Header.Get("Content-Disposition"), err, wantName)
		}
	}

	// A range request is answered with the range.
	r := ts.do("GET", "/_matrix/client/v1/media/download/"+serverName+"/"+id, tok, nil, "Range", "bytes=0-9")
	if r.Status != 206 || !bytes.Equal(r.Body, content[:10]) {
		t.Errorf("range: %d, %d bytes", r.Status, len(r.Body))
	}
	// Authenticated media needs a token.
	if r := ts.do("GET", "/_matrix/client/v1/media/download/"+serverName+"/"+id, "", nil); r.Status != 401 || r.errcode() != "M_MISSING_TOKEN" {
		t.Errorf("without a token: %d %s", r.Status, r.Body)
	}
	// New media is frozen out of the deprecated unauthenticated path.
	if r := ts.do("GET", "/_matrix/media/v3/download/"+serverName+"/"+id, "", nil); r.Status != 404 || r.errcode() != "M_NOT_FOUND" {
		t.Errorf("legacy download of new media: %d %s", r.Status, r.Body)
	}
	// Unknown media.
	if r := ts.do("GET", "/_matrix/client/v1/media/download/"+serverName+"/nosuchmedia", tok, nil); r.Status != 404 || r.errcode() != "M_NOT_FOUND" {
		t.Errorf("unknown media: %d %s", r.Status, r.Body)
	}
	// Config.
	if r := ts.do("GET", "/_matrix/client/v1/media/config", tok, nil); r.Status != 200 || r.json(t)["m.upload.size"] != float64(1<<20) {
		t.Errorf("config: %d %s", r.Status, r.Body)
	}
	if r := ts.do("GET", "/_matrix/media/v3/config", tok, nil); r.Status != 200 || r.json(t)["m.upload.size"] != float64(1<<20) {
		t.Errorf("legacy config: %d %s", r.Status, r.Body)
	}
}

// Media uploaded while authenticated media was off stays reachable on the
// deprecated paths after it is turned on; media uploaded after is not.
// The mark is a fact of each item, so a rebuild keeps it.
func TestLegacyEndpointsServeOnlyOlderMedia(t *testing.T) {
	eachBackend(t, testLegacyEndpointsServeOnlyOlderMedia)
}

func testLegacyEndpointsServeOnlyOlderMedia(t *testing.T, be option) {
	dir := t.TempDir()
	off := func(c *api.Config) { c.Media.Repo.AuthenticatedMedia = false }
	ts := startServerIn(t, dir, be, off)
	alice := ts.register("alice")
	old := ts.upload(alice.AccessToken, []byte("old file"), "text/plain", "old.txt")
	if r := ts.do("GET", "/_matrix/media/v3/download/"+serverName+"/"+old, "", nil); r.Status != 200 || string(r.Body) != "old file" {
		t.Fatalf("legacy download while authenticated media is off: %d %s", r.Status, r.Body)
	}
	ts.stop()

	ts = startServerIn(t, dir, be)
	newID := ts.upload(alice.AccessToken, []byte("new file"), "text/plain", "new.txt")
	if r := ts.do("GET", "/_matrix/media/v3/download/"+serverName+"/"+old, "", nil); r.Status != 200 || string(r.Body) != "old file" {
		t.Errorf("legacy download of older media: %d %s", r.Status, r.Body)
	}
	if r := ts.do("GET", "/_matrix/media/r0/download/"+serverName+"/"+old+"/x.txt", "", nil); r.Status != 200 {
		t.Errorf("r0 legacy download of older media: %d %s", r.Status, r.Body)
	}
	if r := ts.do("GET", "/_matrix/media/v3/download/"+serverName+"/"+newID, "", nil); r.Status != 404 {
		t.Errorf("legacy download of newer media: %d %s", r.Status, r.Body)
	}
	if r := ts.do("GET", "/_matrix/client/v1/media/download/"+serverName+"/"+newID, alice.AccessToken, nil); r.Status != 200 || string(r.Body) != "new file" {
		t.Errorf("authenticated download of newer media: %d %s", r.Status, r.Body)
	}
}

func TestAsyncUpload(t *testing.T) { eachBackend(t, testAsyncUpload) }

func testAsyncUpload(t *testing.T, be option) {
	ts := startServer(t, be)
	alice, bob := ts.register("alice"), ts.register("bob")
	r := ts.do("POST", "/_matrix/media/v1/create", alice.AccessToken, nil)
	if r.Status != 200 {
		t.Fatalf("create: %d %s", r.Status, r.Body)
	}
	body := r.json(t)
	uri, _ := body["content_uri"].(string)
	if _, ok := body["unused_expires_at"].(float64); !ok {
		t.Errorf("no unused_expires_at: %s", r.Body)
	}
	id := strings.TrimPrefix(uri, "mxc://"+serverName+"/")
	dl := "/_matrix/client/v1/media/download/" + serverName + "/" + id

	if r := ts.do("GET", dl+"?timeout_ms=50", alice.AccessToken, nil); r.Status != 504 || r.errcode() != "M_NOT_YET_UPLOADED" {
		t.Errorf("download before upload: %d %s", r.Status, r.Body)
	}
	put := "/_matrix/media/v3/upload/" + serverName + "/" + id
	if r := ts.do("PUT", put, bob.AccessToken, strings.NewReader("bob's"), "Content-Type", "text/plain"); r.Status != 403 || r.errcode() != "M_FORBIDDEN" {
		t.Errorf("upload by another user: %d %s", r.Status, r.Body)
	}
	if r := ts.do("PUT", "/_matrix/media/v3/upload/"+serverName+"/neverCreated", alice.AccessToken, strings.NewReader("x")); r.Status != 404 || r.errcode() != "M_NOT_FOUND" {
		t.Errorf("upload to an ID never created: %d %s", r.Status, r.Body)
	}
	// A download waiting for the upload gets it as soon as it lands.
	done := make(chan response, 1)
	go func() { done <- ts.do("GET", dl+"?timeout_ms=20000", alice.AccessToken, nil) }()
	if r := ts.do("PUT", put, alice.AccessToken, strings.NewReader("hello"), "Content-Type", "text/plain"); r.Status != 200 || string(r.Body) != "{}" {
		t.Fatalf("upload: %d %s", r.Status, r.Body)
	}
	if r := <-done; r.Status != 200 || string(r.Body) != "hello" {
		t.Errorf("waiting download: %d %s", r.Status, r.Body)
	}
	if r := ts.do("PUT", put, alice.AccessToken, strings.NewReader("again"), "Content-Type", "text/plain"); r.Status != 409 || r.errcode() != "M_CANNOT_OVERWRITE_MEDIA" {
		t.Errorf("second upload: %d %s", r.Status, r.Body)
	}
	// At most five pending reservations.
	var last response
	for i := 0; i < 6; i++ {
		last = ts.do("POST", "/_matrix/media/v1/create", alice.AccessToken, nil)
	}
	if last.Status != 429 || last.errcode() != "M_LIMIT_EXCEEDED" {
		t.Errorf("sixth pending create: %d %s", last.Status, last.Body)
	}
}

func TestUploadTooLarge(t *testing.T) { eachBackend(t, testUploadTooLarge) }

func testUploadTooLarge(t *testing.T, be option) {
	ts := startServer(t, be)
	tok := ts.register("alice").AccessToken
	big := bytes.Repeat([]byte("x"), 1<<20+1)
	r := ts.do("POST", "/_matrix/media/v3/upload", tok, bytes.NewReader(big), "Content-Type", "application/octet-stream")
	if r.Status != 413 || r.errcode() != "M_TOO_LARGE" {
		t.Errorf("declared too large: %d %s", r.Status, r.Body)
	}
	// Without a Content-Length, the limit is found while streaming.
	r = ts.do("POST", "/_matrix/media/v3/upload", tok, io_NoLen(big), "Content-Type", "application/octet-stream")
	if r.Status != 413 || r.errcode() != "M_TOO_LARGE" {
		t.Errorf("streamed too large: %d %s", r.Status, r.Body)
	}
	// Exactly the limit is fine.
	ts.upload(tok, big[:1<<20], "application/octet-stream", "")
	// Nothing of the refused uploads is left behind.
	ents, _ := os.ReadDir(filepath.Join(ts.dir, "media", "blobs", "tmp"))
	if len(ents) != 0 {
		t.Errorf("%d temporary files left", len(ents))
	}
}

// Media IDs and server names are checked against the spec's character
// sets; file names are never paths (blobs are stored by hash).
func TestPathTraversal(t *testing.T) { eachBackend(t, testPathTraversal) }

func testPathTraversal(t *testing.T, be option) {
	ts := startServer(t, be)
	tok := ts.register("alice").AccessToken
	for _, p := range []string{
		"/_matrix/client/v1/media/download/" + serverName + "/..%2F..%2Fdb",
		"/_matrix/client/v1/media/download/" + serverName + "/..",
		"/_matrix/client/v1/media/download/..%2F..%2F/abc",
		"/_matrix/client/v1/media/download/" + serverName + "/%2e%2e%2fetc",
		"/_matrix/client/v1/media/thumbnail/" + serverName + "/..%5C..%5Cdb?width=32&height=32",
		"/_matrix/media/v3/upload/" + serverName + "/..%2F..%2Fx",
	} {
		method := "GET"
		if strings.Contains(p, "/upload/") {
			method = "PUT"
		}
		r := ts.do(method, p, tok, strings.NewReader("x"))
		if r.Status != 404 {
			t.Errorf("%s %s: %d %s", method, p, r.Status, r.Body)
		}
	}
	evil := "../../../../tmp/engram-evil"
	id := ts.upload(tok, []byte("payload"), "text/plain", evil)
	if _, err := os.Stat("/tmp/engram-evil"); err == nil {
		t.Fatal("a file name became a path")
	}
	r := ts.do("GET", "/_matrix/client/v1/media/download/"+serverName+"/"+id, tok, nil)
	_, params, _ := mime.ParseMediaType(r.Header.Get("Content-Disposition"))
	if r.Status != 200 || string(r.Body) != "payload" || params["filename"] != evil {
		t.Errorf("download: %d %q %q", r.Status, r.Body, r.Header.Get("Content-Disposition"))
	}
	if r := ts.do("POST", "/_matrix/media/v3/upload?filename=a%0Ab", tok, strings.NewReader("x")); r.Status != 400 {
		t.Errorf("file name with a newline: %d %s", r.Status, r.Body)
	}
}

func TestContentDisposition(t *testing.T) {
	for _, c := range []struct{ ct, name, disp, wantName string }{
		{"image/png", "a.png", "inline", "a.png"},
		{"text/plain; charset=utf-8", "notes.txt", "inline", "notes.txt"},
		{"IMAGE/JPEG", "", "inline", ""},
		{"text/html", "page.html", "attachment", "page.html"},
		{"image/svg+xml", "x.svg", "attachment", "x.svg"},
		{"application/octet-stream", "name;with;semicolons", "attachment", "name;with;semicolons"},
		{"image/png", "☃ snow \"man\".png", "inline", "☃ snow \"man\".png"},
		{"not a type", "f", "attachment", "f"},
	} {
		h := repomedia.ContentDisposition(c.ct, c.name)
		disp, params, err := mime.ParseMediaType(h)
		if err != nil || disp != c.disp || params["filename"] != c.wantName {
			t.Errorf("ContentDisposition(%q, %q) = %q: %s %q %v", c.ct, c.name, h, disp, params["filename"], err)
		}
	}
}

func decodeDims(t *testing.T, b []byte) (int, int, string) {
	t.Helper()
	cfg, format, err := image.DecodeConfig(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("thumbnail does not decode: %v", err)
	}
	return cfg.Width, cfg.Height, format
}

// media_upload_limits: what one user uploaded within the period counts
// against the limit; other users have their own.
func TestUploadLimits(t *testing.T) { eachBackend(t, testUploadLimits) }

func testUploadLimits(t *testing.T, be option) {
	ts := startServer(t, be, func(c *api.Config) {
		c.Media.Repo.UploadLimits = []repomedia.UploadLimit{{TimePeriod: time.Hour, MaxSize: 100}}
	})
	alice, bob := ts.register("alice").AccessToken, ts.register("bob").AccessToken
	ts.upload(alice, bytes.Repeat([]byte("a"), 60), "text/plain", "")
	// Synapse's answer: 400 M_RESOURCE_LIMIT_EXCEEDED.
	overLimit := func(what string, r response) {
		t.Helper()
		if r.Status != 400 || r.errcode() != "M_RESOURCE_LIMIT_EXCEEDED" {
			t.Errorf("%s: %d %s", what, r.Status, r.Body)
		}
	}
	overLimit("an upload over alice's limit", ts.do("POST", "/_matrix/media/v3/upload", alice, bytes.NewReader(bytes.Repeat([]byte("b"), 60)), "Content-Type", "text/plain"))
	// Streamed (no length declared), the limit is found while reading.
	overLimit("a streamed upload over alice's limit", ts.do("POST", "/_matrix/media/v3/upload", alice, io_NoLen(bytes.Repeat([]byte("c"), 60)), "Content-Type", "text/plain"))
	// The asynchronous upload to a created media ID meets the same limit.
	r := ts.do("POST", "/_matrix/media/v1/create", alice, nil)
	if r.Status != 200 {
		t.Fatalf("create: %d %s", r.Status, r.Body)
	}
	id := strings.TrimPrefix(r.json(t)["content_uri"].(string), "mxc://"+serverName+"/")
	overLimit("an asynchronous upload over alice's limit", ts.do("PUT", "/_matrix/media/v3/upload/"+serverName+"/"+id, alice, bytes.NewReader(bytes.Repeat([]byte("f"), 60)), "Content-Type", "text/plain"))
	ts.upload(alice, bytes.Repeat([]byte("d"), 40), "text/plain", "") // exactly the rest
	ts.upload(bob, bytes.Repeat([]byte("e"), 100), "text/plain", "")
}
