package media_test

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/gif"
	"image/jpeg"
	"testing"
	"time"

	"path/filepath"

	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/api"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/media"
	"github.com/engram-hs/engram/projections"
	mediaproj "github.com/engram-hs/engram/projections/media"
)

func TestThumbnails(t *testing.T) { eachBackend(t, testThumbnails) }

func testThumbnails(t *testing.T, be option) {
	ts := startServer(t, be)
	tok := ts.register("alice").AccessToken
	id := ts.upload(tok, testPNG(t, 1000, 500), "image/png", "wide.png")
	thumb := func(q string) response {
		return ts.do("GET", "/_matrix/client/v1/media/thumbnail/"+serverName+"/"+id+"?"+q, tok, nil)
	}
	for _, c := range []struct {
		q            string
		wantW, wantH int
	}{
		{"width=32&height=32&method=crop", 32, 32},
		{"width=90&height=90&method=crop", 96, 96},
		{"width=32&height=32&method=scale", 320, 160}, // the smallest scale size: 320x240, aspect kept
		{"width=700&height=500&method=scale", 800, 400},
		{"width=2000&height=2000&method=scale", 800, 400}, // the largest configured size
	} {
		r := thumb(c.q)
		if r.Status != 200 {
			t.Fatalf("%s: %d %s", c.q, r.Status, r.Body)
		}
		w, h, format := decodeDims(t, r.Body)
		if w != c.wantW || h != c.wantH || format != "png" || r.Header.Get("Content-Type") != "image/png" {
			t.Errorf("%s: %dx%d %s (%s), want %dx%d png", c.q, w, h, format, r.Header.Get("Content-Type"), c.wantW, c.wantH)
		}
		if r.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: no security headers", c.q)
		}
	}
	// Stored on first request: a second request is answered from the store
	// (same bytes), and the metadata is in the projection.
	a, b := thumb("width=32&height=32&method=crop"), thumb("width=32&height=32&method=crop")
	if !bytes.Equal(a.Body, b.Body) {
		t.Error("the stored thumbnail differs from the first one")
	}
	// A small image is served as it is (never upscaled).
	small := testPNG(t, 20, 10)
	sid := ts.upload(tok, small, "image/png", "small.png")
	r := ts.do("GET", "/_matrix/client/v1/media/thumbnail/"+serverName+"/"+sid+"?width=32&height=32&method=scale", tok, nil)
	if r.Status != 200 || !bytes.Equal(r.Body, small) {
		t.Errorf("small image: %d, %d bytes", r.Status, len(r.Body))
	}
	// JPEG in, JPEG out; GIF's first frame.
	var jb bytes.Buffer
	img, _, _ := image.Decode(bytes.NewReader(testPNG(t, 640, 480)))
	_ = jpeg.Encode(&jb, img, nil)
	jid := ts.upload(tok, jb.Bytes(), "image/jpeg", "p.jpg")
	r = ts.do("GET", "/_matrix/client/v1/media/thumbnail/"+serverName+"/"+jid+"?width=96&height=96&method=crop", tok, nil)
	if w, h, f := decodeDims(t, r.Body); r.Status != 200 || w != 96 || h != 96 || f != "jpeg" {
		t.Errorf("jpeg: %d %dx%d %s", r.Status, w, h, f)
	}
	var gb bytes.Buffer
	pal := image.NewPaletted(image.Rect(0, 0, 400, 400), []color_Color{black, white})
	_ = gif.EncodeAll(&gb, &gif.GIF{Image: []*image.Paletted{pal, pal}, Delay: []int{10, 10}})
	gid := ts.upload(tok, gb.Bytes(), "image/gif", "a.gif")
	r = ts.do("GET", "/_matrix/client/v1/media/thumbnail/"+serverName+"/"+gid+"?width=32&height=32&method=crop", tok, nil)
	if w, h, f := decodeDims(t, r.Body); r.Status != 200 || w != 32 || h != 32 || f != "png" {
		t.Errorf("gif: %d %dx%d %s", r.Status, w, h, f)
	}
	// Bad parameters.
	for _, q := range []string{"width=0&height=32", "width=a&height=32", "height=32", "width=32&height=32&method=zoom"} {
		if r := thumb(q); r.Status != 400 {
			t.Errorf("%s: %d %s", q, r.Status, r.Body)
		}
	}

	// A rebuild of the media projection recreates the index exactly.
	before, err := ts.eng.Digest("media")
	if err != nil {
		t.Fatal(err)
	}
	ts.stop()
	node, err := englog.Open(englog.Config{Dir: filepath.Join(ts.dir, "db"), Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	eng := projections.NewEngine(node, node.DB(), zerolog.Nop(), nil)
	eng.Register(mediaproj.New())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := eng.Rebuild(ctx, "media"); err != nil {
		t.Fatal(err)
	}
	after, err := eng.Digest("media")
	if err != nil {
		t.Fatal(err)
	}
	_ = eng.Close()
	if !bytes.Equal(before, after) {
		t.Error("the rebuilt media projection differs")
	}
}

// thumbnail_sizes replaces the default sizes; with dynamic_thumbnails the
// requested size itself is made (and stored), never bigger than the image.
func TestThumbnailSizesConfig(t *testing.T) { eachBackend(t, testThumbnailSizesConfig) }

func testThumbnailSizesConfig(t *testing.T, be option) {
	for _, c := range []struct {
		name    string
		sizes   []media.ThumbnailSize
		dynamic bool
		cases   []struct {
			q            string
			wantW, wantH int
		}
	}{
		{name: "configured sizes", sizes: []media.ThumbnailSize{{Width: 50, Height: 50, Method: "crop"}, {Width: 200, Height: 200, Method: "scale"}},
			cases: []struct {
				q            string
				wantW, wantH int
			}{
				{"width=32&height=32&method=crop", 50, 50},    // the one crop size, not the default 32x32
				{"width=96&height=96&method=crop", 50, 50},    // the largest crop size
				{"width=32&height=32&method=scale", 200, 100}, // 200x200 box, aspect kept
			}},
		{name: "dynamic", dynamic: true,
			cases: []struct {
				q            string
				wantW, wantH int
			}{
				{"width=45&height=30&method=crop", 45, 30},
				{"width=100&height=100&method=scale", 100, 50},
				{"width=33&height=77&method=crop", 33, 77},
				{"width=5000&height=5000&method=crop", 1000, 500}, // never bigger than the image
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ts := startServer(t, be, func(cfg *api.Config) {
				cfg.Media.Repo.ThumbnailSizes = c.sizes
				cfg.Media.Repo.DynamicThumbnails = c.dynamic
			})
			tok := ts.register("alice").AccessToken
			id := ts.upload(tok, testPNG(t, 1000, 500), "image/png", "wide.png")
			for _, tc := range c.cases {
				r := ts.do("GET", "/_matrix/client/v1/media/thumbnail/"+serverName+"/"+id+"?"+tc.q, tok, nil)
				if r.Status != 200 {
					t.Fatalf("%s: %d %s", tc.q, r.Status, r.Body)
				}
				if w, h, _ := decodeDims(t, r.Body); w != tc.wantW || h != tc.wantH {
					t.Errorf("%s: %dx%d, want %dx%d", tc.q, w, h, tc.wantW, tc.wantH)
				}
			}
			if !c.dynamic {
				return
			}
			// Stored: the projection holds the dynamic size.
			th, err := mediaproj.NewView(ts.api.MediaRepo().Handle().Reader()).Thumbnail(serverName, id, "crop", 45, 30)
			if err != nil || th == nil {
				t.Errorf("the 45x30 crop is not in the media index: %v %v", th, err)
			}
		})
	}
}

// Hostile and broken images are refused with a Matrix error; the server
// keeps serving.
func TestThumbnailBadInput(t *testing.T) { eachBackend(t, testThumbnailBadInput) }

func testThumbnailBadInput(t *testing.T, be option) {
	ts := startServer(t, be)
	tok := ts.register("alice").AccessToken
	good := testPNG(t, 200, 200)
	var zb bytes.Buffer
	zw := zip.NewWriter(&zb)
	f, _ := zw.Create("readme.txt")
	_, _ = f.Write(bytes.Repeat([]byte("zip "), 100))
	_ = zw.Close()
	corrupt := append([]byte{}, good...)
	for i := 60; i < len(corrupt)-20; i += 7 {
		corrupt[i] ^= 0x5a
	}
	cases := []struct {
		name   string
		data   []byte
		status int
		code   string
	}{
		{"bomb", pngBomb(t, 20000, 20000), 413, "M_TOO_LARGE"},
		{"truncated", good[:len(good)/2], 400, "M_UNKNOWN"},
		{"header only", good[:33], 400, "M_UNKNOWN"},
		{"corrupt", corrupt, 400, "M_UNKNOWN"},
		{"zip", zb.Bytes(), 400, "M_UNKNOWN"},
		{"empty", nil, 400, "M_UNKNOWN"},
	}
	for _, c := range cases {
		id := ts.upload(tok, c.data, "image/png", c.name+".png")
		r := ts.do("GET", "/_matrix/client/v1/media/thumbnail/"+serverName+"/"+id+"?width=96&height=96&method=crop", tok, nil)
		if r.Status != c.status || r.errcode() != c.code {
			t.Errorf("%s: %d %s, want %d %s", c.name, r.Status, r.Body, c.status, c.code)
		}
		// The original is still served as uploaded.
		if r := ts.do("GET", "/_matrix/client/v1/media/download/"+serverName+"/"+id, tok, nil); r.Status != 200 || !bytes.Equal(r.Body, c.data) {
			t.Errorf("%s: download %d", c.name, r.Status)
		}
	}
	id := ts.upload(tok, good, "image/png", "ok.png")
	if r := ts.do("GET", "/_matrix/client/v1/media/thumbnail/"+serverName+"/"+id+"?width=32&height=32", tok, nil); r.Status != 200 {
		t.Errorf("after the bad inputs: %d", r.Status)
	}
}

// pngBomb is a valid PNG header (signature and IHDR) declaring w x h
// pixels followed by a tiny IDAT: a few hundred bytes that would decode
// into w*h*4 bytes.
func pngBomb(t *testing.T, w, h uint32) []byte {
	var b bytes.Buffer
	b.Write([]byte("\x89PNG\r\n\x1a\n"))
	chunk := func(typ string, data []byte) {
		_ = binary.Write(&b, binary.BigEndian, uint32(len(data)))
		b.WriteString(typ)
		b.Write(data)
		crc := crc32.NewIEEE()
		crc.Write([]byte(typ))
		crc.Write(data)
		_ = binary.Write(&b, binary.BigEndian, crc.Sum32())
	}
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], w)
	binary.BigEndian.PutUint32(ihdr[4:], h)
	ihdr[8], ihdr[9] = 8, 6 // 8-bit RGBA
	chunk("IHDR", ihdr)
	chunk("IDAT", []byte{0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01})
	chunk("IEND", nil)
	return b.Bytes()
}
