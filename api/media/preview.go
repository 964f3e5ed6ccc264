package media

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/html"

	"github.com/engram-hs/engram/api/apihttp"
	"github.com/engram-hs/engram/internal/mxerr"
	"github.com/engram-hs/engram/media/thumbnail"
)

// PreviewConfig is the URL preview configuration (Synapse's keys).
type PreviewConfig struct {
	Enabled bool // url_preview_enabled
	// Blacklist is required when Enabled (url_preview_ip_range_blacklist):
	// CIDR ranges never fetched. Whitelist (url_preview_ip_range_whitelist)
	// overrides it and the built-in refusal of loopback, private,
	// link-local and other special addresses.
	Blacklist []string
	Whitelist []string
	// MaxSpiderSize bounds each fetch (max_spider_size, default 10M).
	MaxSpiderSize int64
	// Timeout bounds each fetch, redirects included (default 10 s).
	Timeout time.Duration
}

// previewer fetches pages for URL previews through a dialer that checks
// every address it connects to, after DNS resolution: a redirect to, or a
// DNS answer of, a refused address is refused the same way.
type previewer struct {
	cfg   PreviewConfig
	api   *API
	deny  []netip.Prefix
	allow []netip.Prefix
	hc    *http.Client

	mu    sync.Mutex
	cache map[string]cachedPreview
}

type cachedPreview struct {
	body    map[string]any
	expires time.Time
}

const (
	previewCacheTTL  = time.Hour
	previewCacheSize = 1000
	maxRedirects     = 5
)

func parsePrefixes(key string, ss []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range ss {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			a, err2 := netip.ParseAddr(strings.TrimSpace(s))
			if err2 != nil {
				return nil, fmt.Errorf("%s: %q is not a CIDR range (\"10.0.0.0/8\") or an IP address", key, s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

func newPreviewer(cfg PreviewConfig, a *API) (*previewer, error) {
	if len(cfg.Blacklist) == 0 {
		return nil, errors.New("url_preview_enabled is true but url_preview_ip_range_blacklist is empty; list the ranges previews must never fetch (at least the private, loopback and link-local ones), as in Synapse")
	}
	deny, err := parsePrefixes("url_preview_ip_range_blacklist", cfg.Blacklist)
	if err != nil {
		return nil, err
	}
	allow, err := parsePrefixes("url_preview_ip_range_whitelist", cfg.Whitelist)
	if err != nil {
		return nil, err
	}
	if cfg.MaxSpiderSize <= 0 {
		cfg.MaxSpiderSize = 10 << 20
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	p := &previewer{cfg: cfg, api: a, deny: deny, allow: allow, cache: map[string]cachedPreview{}}
	dialer := &net.Dialer{Timeout: cfg.Timeout, Control: p.control}
	p.hc = &http.Client{
		Transport: &http.Transport{
			Proxy:                 nil, // a proxy would dial for us, unchecked
			DialContext:           dialer.DialContext,
			TLSHandshakeTimeout:   cfg.Timeout,
			ResponseHeaderTimeout: cfg.Timeout,
			MaxIdleConns:          10,
			IdleConnTimeout:       30 * time.Second,
		},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= maxRedirects {
				return errors.New("too many redirects")
			}
			if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
				return fmt.Errorf("redirect to a %s URL", req.URL.Scheme)
			}
			return nil
		},
	}
	return p, nil
}

// errBlocked is returned (wrapped) by the dialer for a refused address.
var errBlocked = errors.New("the address is blocked for URL previews")

// control runs for every connection the preview client makes, with the
// address DNS resolved to.
func (p *previewer) control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %s", errBlocked, address)
	}
	if !p.allowed(ap.Addr()) {
		return fmt.Errorf("%w: %s", errBlocked, ap.Addr())
	}
	return nil
}

// allowed: whitelisted, or neither blacklisted nor special (loopback,
// private, link-local, unspecified, multicast).
func (p *previewer) allowed(a netip.Addr) bool {
	a = a.Unmap()
	for _, r := range p.allow {
		if r.Contains(a) {
			return true
		}
	}
	if a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() ||
		a.IsUnspecified() || a.IsMulticast() || a.IsInterfaceLocalMulticast() {
		return false
	}
	for _, r := range p.deny {
		if r.Contains(a) {
			return false
		}
	}
	return true
}

func (a *API) previewURL(w http.ResponseWriter, r *http.Request, c *apihttp.Caller) error {
	if a.preview == nil {
		return mxerr.New(http.StatusNotFound, "M_UNRECOGNIZED", "URL previews are disabled on this server (url_preview_enabled)")
	}
	raw := r.URL.Query().Get("url")
	u, err := url.Parse(raw)
	if raw == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return mxerr.New(http.StatusBadRequest, "M_INVALID_PARAM", "url must be an http or https URL")
	}
	u.Fragment = ""
	body, err := a.preview.get(r.Context(), u)
	if err != nil {
		return err
	}
	apihttp.WriteJSON(w, http.StatusOK, body)
	return nil
}

func (p *previewer) get(ctx context.Context, u *url.URL) (map[string]any, error) {
	key := u.String()
	now := time.Now()
	p.mu.Lock()
	if c, ok := p.cache[key]; ok && now.Before(c.expires) {
		p.mu.Unlock()
		return c.body, nil
	}
	p.mu.Unlock()
	body, err := p.build(ctx, u)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	if len(p.cache) >= previewCacheSize {
		for k, c := range p.cache {
			if now.After(c.expires) || len(p.cache) >= previewCacheSize {
				delete(p.cache, k)
			}
		}
	}
	p.cache[key] = cachedPreview{body: body, expires: now.Add(previewCacheTTL)}
	p.mu.Unlock()
	return body, nil
}

// fetch GETs u, reading at most MaxSpiderSize bytes.
func (p *previewer) fetch(ctx context.Context, u *url.URL) (data []byte, contentType string, final *url.URL, err error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, "", nil, mxerr.New(http.StatusBadRequest, "M_INVALID_PARAM", "Bad URL")
	}
	req.Header.Set("User-Agent", "Engram URL preview (Matrix homeserver)")
	req.Header.Set("Accept", "text/html,application/xhtml+xml,image/*;q=0.9,*/*;q=0.8")
	resp, err := p.hc.Do(req)
	if err != nil {
		if errors.Is(err, errBlocked) {
			return nil, "", nil, mxerr.New(http.StatusForbidden, "M_FORBIDDEN", "This URL resolves to an address URL previews may not fetch")
		}
		return nil, "", nil, mxerr.New(http.StatusBadGateway, "M_UNKNOWN", "Could not fetch the URL: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return nil, "", nil, mxerr.New(http.StatusBadGateway, "M_UNKNOWN", "The URL answered HTTP %d", resp.StatusCode)
	}
	data, err = io.ReadAll(io.LimitReader(resp.Body, p.cfg.MaxSpiderSize+1))
	if err != nil {
		return nil, "", nil, mxerr.New(http.StatusBadGateway, "M_UNKNOWN", "Could not read the URL: %v", err)
	}
	if int64(len(data)) > p.cfg.MaxSpiderSize {
		return nil, "", nil, mxerr.New(http.StatusBadGateway, "M_TOO_LARGE", "The page is larger than max_spider_size")
	}
	return data, resp.Header.Get("Content-Type"), resp.Request.URL, nil
}

func (p *previewer) build(ctx context.Context, u *url.URL) (map[string]any, error) {
	data, ct, final, err := p.fetch(ctx, u)
	if err != nil {
		return nil, err
	}
	mt, _, _ := mime.ParseMediaType(ct)
	body := map[string]any{}
	switch {
	case strings.HasPrefix(mt, "image/"):
		if err := p.storeImage(ctx, body, data, mt, final); err != nil {
			return nil, err
		}
		body["og:url"] = final.String()
	case mt == "text/html" || mt == "application/xhtml+xml":
		og := ParseOpenGraph(data, 0)
		for k, v := range og {
			body[k] = v
		}
		if img, ok := og["og:image"]; ok {
			delete(body, "og:image")
			if iu, err := final.Parse(img); err == nil && (iu.Scheme == "http" || iu.Scheme == "https") {
				if idata, ict, ifinal, err := p.fetch(ctx, iu); err == nil {
					imt, _, _ := mime.ParseMediaType(ict)
					_ = p.storeImage(ctx, body, idata, imt, ifinal)
				}
			}
		}
		if _, ok := body["og:url"]; !ok {
			body["og:url"] = final.String()
		}
	default:
		return nil, mxerr.New(http.StatusBadGateway, "M_UNKNOWN", "Cannot preview content of type %q", mt)
	}
	return body, nil
}

// storeImage keeps a fetched image as local media and describes it.
func (p *previewer) storeImage(ctx context.Context, body map[string]any, data []byte, ct string, from *url.URL) error {
	info, err := thumbnail.Probe(bytes.NewReader(data))
	if err != nil {
		return mxerr.New(http.StatusBadGateway, "M_UNKNOWN", "The URL's image could not be read")
	}
	if ct == "" || !strings.HasPrefix(ct, "image/") {
		ct = "image/" + info.Format
	}
	name := ""
	if i := strings.LastIndexByte(from.Path, '/'); i >= 0 {
		name = from.Path[i+1:]
	}
	if n, err := cleanFileName(name); err == nil {
		name = n
	} else {
		name = ""
	}
	m, err := p.api.repo.Upload(ctx, "", "", bytes.NewReader(data), int64(len(data)), ct, name)
	if err != nil {
		return matrixErr(err)
	}
	body["og:image"] = "mxc://" + m.Origin + "/" + m.MediaID
	body["og:image:type"] = ct
	body["og:image:width"] = info.Width
	body["og:image:height"] = info.Height
	body["matrix:image:size"] = m.Size
	return nil
}

// ParseOpenGraph reads OpenGraph properties (<meta property="og:...">)
// from an HTML page, with the <title> and the description meta tag as
// fallbacks for og:title and og:description. It reads at most maxTokens
// tokens (0: 100,000) so a hostile page cannot make it work forever.
func ParseOpenGraph(page []byte, maxTokens int) map[string]string {
	if maxTokens <= 0 {
		maxTokens = 100_000
	}
	og := map[string]string{}
	var title, desc string
	inTitle := false
	z := html.NewTokenizer(bytes.NewReader(page))
	z.SetMaxBuf(1 << 20)
	for i := 0; i < maxTokens; i++ {
		tt := z.Next()
		switch tt {
		case html.ErrorToken:
			i = maxTokens
		case html.StartTagToken, html.SelfClosingTagToken:
			name, hasAttr := z.TagName()
			switch string(name) {
			case "meta":
				var prop, nameAttr, content string
				for hasAttr {
					var k, v []byte
					k, v, hasAttr = z.TagAttr()
					switch strings.ToLower(string(k)) {
					case "property":
						prop = string(v)
					case "name":
						nameAttr = string(v)
					case "content":
						content = string(v)
					}
				}
				key := prop
				if key == "" {
					key = nameAttr
				}
				if strings.HasPrefix(key, "og:") && len(key) < 100 {
					if _, dup := og[key]; !dup {
						og[key] = truncate(content, 1000)
					}
				}
				if strings.EqualFold(nameAttr, "description") && desc == "" {
					desc = truncate(content, 1000)
				}
			case "title":
				inTitle = tt == html.StartTagToken
			case "body":
				if len(og) > 0 && title != "" {
					i = maxTokens // the head is done
				}
			}
		case html.EndTagToken:
			if n, _ := z.TagName(); string(n) == "title" {
				inTitle = false
			}
		case html.TextToken:
			if inTitle && title == "" {
				title = strings.TrimSpace(string(z.Text()))
			}
		}
	}
	if _, ok := og["og:title"]; !ok && title != "" {
		og["og:title"] = truncate(title, 1000)
	}
	if _, ok := og["og:description"]; !ok && desc != "" {
		og["og:description"] = desc
	}
	return og
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8Start(s[n]) {
		n--
	}
	return s[:n]
}

func utf8Start(b byte) bool { return b&0xC0 != 0x80 }
