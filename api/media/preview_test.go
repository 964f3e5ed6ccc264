package media_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/engram-hs/engram/api"
	apimedia "github.com/engram-hs/engram/api/media"
)

func TestURLPreview(t *testing.T) { eachBackend(t, testURLPreview) }

func testURLPreview(t *testing.T, be option) {
	png := testPNG(t, 279, 129)
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/page.html":
			w.Header().Set("Content-Type", "text/html")
			_, _ = w.Write([]byte(`<html><head><title>T</title><meta property="og:title" content="The Rock"><meta property="og:image" content="/i.png"></head><body></body></html>`))
		case "/i.png":
			w.Header().Set("Content-Type", "image/png")
			_, _ = w.Write(png)
		case "/to-metadata":
			http.Redirect(w, r, "http://169.254.169.254/latest/meta-data/", http.StatusFound)
		}
	}))
	defer web.Close()
	preview := func(ts *testServer, tok, target string) response {
		return ts.do("GET", "/_matrix/client/v1/media/preview_url?url="+url.QueryEscape(target), tok, nil)
	}

	// Off by default.
	ts := startServer(t, be)
	tok := ts.register("alice").AccessToken
	if r := preview(ts, tok, web.URL+"/page.html"); r.Status != 404 {
		t.Errorf("disabled: %d %s", r.Status, r.Body)
	}
	ts.stop()

	// Loopback and link-local are refused when only the required
	// blacklist is set.
	ts = startServer(t, be, func(c *api.Config) {
		c.Media.Preview = apimedia.PreviewConfig{Enabled: true, Blacklist: []string{"10.0.0.0/8"}}
	})
	tok = ts.register("alice").AccessToken
	for _, target := range []string{web.URL + "/page.html", "http://169.254.169.254/latest/meta-data/", "http://[::1]:1/", "http://localhost:" + strings.Split(web.URL, ":")[2] + "/page.html"} {
		if r := preview(ts, tok, target); r.Status != 403 {
			t.Errorf("%s: %d %s", target, r.Status, r.Body)
		}
	}
	ts.stop()

	// Whitelisted loopback: OpenGraph with the image stored as media; a
	// redirect to the metadata address is still refused (checked at dial
	// time).
	ts = startServer(t, be, func(c *api.Config) {
		c.Media.Preview = apimedia.PreviewConfig{Enabled: true, Blacklist: []string{"10.0.0.0/8"}, Whitelist: []string{"127.0.0.1/32"}}
	})
	tok = ts.register("alice").AccessToken
	r := preview(ts, tok, web.URL+"/page.html")
	body := r.json(t)
	img, _ := body["og:image"].(string)
	if r.Status != 200 || body["og:title"] != "The Rock" || !strings.HasPrefix(img, "mxc://") || body["og:image:width"] != float64(279) ||
		body["og:image:height"] != float64(129) || body["matrix:image:size"] != float64(len(png)) {
		t.Errorf("preview: %d %s", r.Status, r.Body)
	}
	if r := preview(ts, tok, web.URL+"/to-metadata"); r.Status != 403 {
		t.Errorf("redirect to 169.254.169.254: %d %s", r.Status, r.Body)
	}
	ts.stop()

}
