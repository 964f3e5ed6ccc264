package e2e

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/engram-hs/engram/internal/testca"
)

func get(t *testing.T, s server, path, token string) (int, []byte, http.Header) {
	t.Helper()
	req, _ := http.NewRequest("GET", s.URL+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp.Header
}

// A second server serves a remote image and its thumbnail to its own
// users: fetched once over the federation media endpoint (multipart),
// cached (it keeps serving with the origin gone), thumbnailed locally.
func TestRemoteMediaBetweenTwoServers(t *testing.T) {
	ca := testca.New(t)
	a, b := start(t, ca), start(t, ca)
	alice := register(t, a, "alice")
	bob := register(t, b, "bob")

	img := image.NewRGBA(image.Rect(0, 0, 640, 480))
	for y := 0; y < 480; y++ {
		for x := 0; x < 640; x++ {
			img.Set(x, y, color.RGBA{uint8(x), uint8(y), 128, 255})
		}
	}
	var buf bytes.Buffer
	_ = png.Encode(&buf, img)
	content := buf.Bytes()
	req, _ := http.NewRequest("POST", a.URL+"/_matrix/media/v3/upload?filename=photo.png", bytes.NewReader(content))
	req.Header.Set("Authorization", "Bearer "+alice)
	req.Header.Set("Content-Type", "image/png")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	uri := string(raw)
	i := strings.Index(uri, "mxc://")
	if resp.StatusCode != 200 || i < 0 {
		t.Fatalf("upload: %d %s", resp.StatusCode, raw)
	}
	mxc := strings.TrimSuffix(strings.TrimSuffix(uri[i+len("mxc://"):], "}"), `"`)
	server, id, _ := strings.Cut(mxc, "/")
	if server != a.name {
		t.Fatalf("mxc %q", mxc)
	}

	st, body, h := get(t, b, "/_matrix/client/v1/media/download/"+server+"/"+id, bob)
	if st != 200 || !bytes.Equal(body, content) {
		t.Fatalf("remote download through b: %d %q\n%s", st, body[:min(len(body), 200)], b.Logs())
	}
	if h.Get("Content-Type") != "image/png" || !strings.Contains(h.Get("Content-Disposition"), "photo.png") {
		t.Errorf("remote download headers: %q %q", h.Get("Content-Type"), h.Get("Content-Disposition"))
	}
	st, body, _ = get(t, b, "/_matrix/client/v1/media/thumbnail/"+server+"/"+id+"?width=96&height=96&method=crop", bob)
	if st != 200 {
		t.Fatalf("remote thumbnail: %d %s", st, body)
	}
	if cfg, _, err := image.DecodeConfig(bytes.NewReader(body)); err != nil || cfg.Width != 96 || cfg.Height != 96 {
		t.Errorf("remote thumbnail: %dx%d %v", cfg.Width, cfg.Height, err)
	}
	// Remote media cached now is "new": not on the unauthenticated path.
	if st, _, _ := get(t, b, "/_matrix/media/v3/download/"+server+"/"+id, ""); st != 404 {
		t.Errorf("legacy download of freshly cached remote media: %d", st)
	}
	// allow_remote=false does not fetch.
	if st, _, _ := get(t, b, "/_matrix/client/v1/media/download/"+server+"/neverUploaded?allow_remote=false", bob); st != 404 {
		t.Errorf("allow_remote=false: %d", st)
	}
	// Unknown remote media: the origin says 404, and so does b.
	if st, _, _ := get(t, b, "/_matrix/client/v1/media/download/"+server+"/neverUploaded", bob); st != 404 {
		t.Errorf("unknown remote media: %d", st)
	}
	// With the origin gone, b serves from its cache.
	a.Stop()
	if st, body, _ := get(t, b, "/_matrix/client/v1/media/download/"+server+"/"+id, bob); st != 200 || !bytes.Equal(body, content) {
		t.Errorf("cached remote download with the origin stopped: %d", st)
	}
}
