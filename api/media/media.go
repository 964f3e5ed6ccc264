// Package media serves the client-server API's content repository:
// uploads (/_matrix/media/v3/upload, asynchronous uploads via
// /_matrix/media/v1/create), authenticated downloads and thumbnails under
// /_matrix/client/v1/media/, the deprecated unauthenticated
// /_matrix/media/v3/ paths (for media uploaded before authenticated media
// was enforced), the media config, URL previews, and the media admin API
// (/_synapse/admin/v1/...). The repository itself (blobs, facts,
// thumbnails) is package media at the top level.
package media

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/api/apihttp"
	"github.com/engram-hs/engram/internal/mxerr"
	englog "github.com/engram-hs/engram/log"
	repomedia "github.com/engram-hs/engram/media"
	mediaproj "github.com/engram-hs/engram/projections/media"
)

// Config is the API's share of the media configuration.
type Config struct {
	Repo    repomedia.Config
	Preview PreviewConfig
}

// API is the content repository's HTTP face.
type API struct {
	cfg     Config
	host    apihttp.Host
	repo    *repomedia.Repo
	limit   func(key string) error
	preview *previewer
	logger  zerolog.Logger
}

// New builds the endpoints and registers them with host.
func New(cfg Config, host apihttp.Host, repo *repomedia.Repo, logger zerolog.Logger) (*API, error) {
	a := &API{cfg: cfg, host: host, repo: repo, logger: logger,
		limit: func(user string) error { return host.RateLimit("rc_media_create", user) }}
	if cfg.Preview.Enabled {
		p, err := newPreviewer(cfg.Preview, a)
		if err != nil {
			return nil, err
		}
		a.preview = p
	}
	a.routes()
	a.adminRoutes()
	return a, nil
}

func (a *API) routes() {
	h := a.host
	h.HandleStream("POST", "/_matrix/media/v3/upload", a.authed(a.upload))
	h.HandleStream("POST", "/_matrix/media/r0/upload", a.authed(a.upload))
	h.HandleStream("PUT", "/_matrix/media/v3/upload/{serverName}/{mediaId}", a.authed(a.uploadTo))
	h.Handle("POST", "/_matrix/media/v1/create", a.authed(a.create))

	// Authenticated media (spec 1.11).
	h.Handle("GET", "/_matrix/client/v1/media/config", a.authed(a.config))
	h.Handle("GET", "/_matrix/client/v1/media/download/{serverName}/{mediaId}", a.authed(a.download(false)))
	h.Handle("GET", "/_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}", a.authed(a.download(false)))
	h.Handle("GET", "/_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}", a.authed(a.thumbnail(false)))
	h.Handle("GET", "/_matrix/client/v1/media/preview_url", a.authed(a.previewURL))

	// Deprecated paths: config and preview_url always wanted a token;
	// download and thumbnail are unauthenticated and serve only media
	// uploaded before authenticated media was enforced.
	for _, v := range []string{"v3", "r0"} {
		p := "/_matrix/media/" + v
		h.Handle("GET", p+"/config", a.authed(a.config))
		h.Handle("GET", p+"/preview_url", a.authed(a.previewURL))
		h.Handle("GET", p+"/download/{serverName}/{mediaId}", a.public(a.download(true)))
		h.Handle("GET", p+"/download/{serverName}/{mediaId}/{fileName}", a.public(a.download(true)))
		h.Handle("GET", p+"/thumbnail/{serverName}/{mediaId}", a.public(a.thumbnail(true)))
	}

	h.Handle("GET", repomedia.PeerBlobPath+"{sha256}", a.peerBlob)

}

type authedHandler func(w http.ResponseWriter, r *http.Request, c *apihttp.Caller) error

func (a *API) authed(fn authedHandler) apihttp.Handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		c, err := a.host.Authenticate(r)
		if err != nil {
			return err
		}
		return fn(w, r, c)
	}
}

func (a *API) public(fn authedHandler) apihttp.Handler {
	return func(w http.ResponseWriter, r *http.Request) error { return fn(w, r, nil) }
}

// matrixErr turns repository errors into the spec's answers.
func matrixErr(err error) error {
	switch {
	case errors.Is(err, repomedia.ErrNotFound):
		return mxerr.New(http.StatusNotFound, "M_NOT_FOUND", "Media not found")
	case errors.Is(err, repomedia.ErrQuarantined):
		return mxerr.New(http.StatusNotFound, "M_NOT_FOUND", "Media not found (quarantined by the server's administrators)")
	case errors.Is(err, repomedia.ErrTooLarge):
		return mxerr.New(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "The file is larger than this server's max_upload_size")
	case errors.Is(err, repomedia.ErrQuota):
		// Synapse answers 400 M_RESOURCE_LIMIT_EXCEEDED here (a plain
		// error: no limit_type or admin_contact), so clients see the same.
		return mxerr.New(http.StatusBadRequest, "M_RESOURCE_LIMIT_EXCEEDED", "Media upload limit exceeded (media_upload_limits): you uploaded too much recently; try again later")
	case errors.Is(err, repomedia.ErrNotYetUploaded):
		return mxerr.New(http.StatusGatewayTimeout, "M_NOT_YET_UPLOADED", "Content has not yet been uploaded")
	case errors.Is(err, repomedia.ErrOverwrite):
		return mxerr.New(http.StatusConflict, "M_CANNOT_OVERWRITE_MEDIA", "Media already uploaded")
	case errors.Is(err, repomedia.ErrNotOwner):
		return mxerr.New(http.StatusForbidden, "M_FORBIDDEN", "This media ID was created by another user")
	case errors.Is(err, repomedia.ErrTooManyPending):
		return mxerr.New(http.StatusTooManyRequests, "M_LIMIT_EXCEEDED", "Too many pending uploads; upload to the media IDs you created first").With("retry_after_ms", 60_000)
	case errors.Is(err, repomedia.ErrImageTooLarge):
		return mxerr.New(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "The image is too large to thumbnail (max_image_pixels)")
	case errors.Is(err, repomedia.ErrNotImage):
		return mxerr.New(http.StatusBadRequest, "M_UNKNOWN", "Cannot generate a thumbnail of this content")
	case errors.Is(err, repomedia.ErrRemoteTooLarge):
		return mxerr.New(http.StatusBadGateway, "M_TOO_LARGE", "The remote media is larger than this server's max_upload_size")
	case errors.Is(err, repomedia.ErrRemote):
		return mxerr.New(http.StatusBadGateway, "M_UNKNOWN", "%v", err)
	case errors.Is(err, englog.ErrNotLeader):
		return mxerr.New(http.StatusServiceUnavailable, "M_UNKNOWN", "This server cannot accept writes right now (no cluster leader); retry shortly")
	}
	return err
}

// ---- uploads ----

func (a *API) upload(w http.ResponseWriter, r *http.Request, c *apihttp.Caller) error {
	return a.store(w, r, c, "")
}

func (a *API) uploadTo(w http.ResponseWriter, r *http.Request, c *apihttp.Caller) error {
	server, id := r.PathValue("serverName"), r.PathValue("mediaId")
	if server != a.cfg.Repo.ServerName || !repomedia.ValidMediaID(id) {
		return mxerr.New(http.StatusNotFound, "M_NOT_FOUND", "Unknown media ID")
	}
	return a.store(w, r, c, id)
}

func (a *API) store(w http.ResponseWriter, r *http.Request, c *apihttp.Caller, id string) error {
	if c.Guest {
		return mxerr.New(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "Guest accounts may not upload media; register a full account")
	}
	if id == "" {
		if err := a.limit(c.UserID); err != nil {
			return err
		}
	}
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		ct = "application/octet-stream"
	}
	name, err := cleanFileName(r.URL.Query().Get("filename"))
	if err != nil {
		return err
	}
	m, err := a.repo.Upload(r.Context(), c.UserID, id, r.Body, r.ContentLength, ct, name)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return matrixErr(repomedia.ErrTooLarge)
		}
		return matrixErr(err)
	}
	zerolog.Ctx(r.Context()).Info().Str("media_id", m.MediaID).Int64("size", m.Size).Str("sha256", m.SHA256).Msg("media uploaded")
	if id != "" {
		apihttp.WriteJSON(w, http.StatusOK, map[string]any{})
		return nil
	}
	apihttp.WriteJSON(w, http.StatusOK, map[string]any{"content_uri": "mxc://" + m.Origin + "/" + m.MediaID})
	return nil
}

// cleanFileName refuses names with control characters (they would break
// Content-Disposition). A name is never used as a path: blobs are stored
// by hash, so "../../etc/passwd" is just a name.
func cleanFileName(name string) (string, error) {
	if len(name) > 255 {
		return "", mxerr.New(http.StatusBadRequest, "M_INVALID_PARAM", "filename is longer than 255 bytes")
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return "", mxerr.New(http.StatusBadRequest, "M_INVALID_PARAM", "filename contains control characters")
		}
	}
	return name, nil
}

func (a *API) create(w http.ResponseWriter, r *http.Request, c *apihttp.Caller) error {
	if c.Guest {
		return mxerr.New(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "Guest accounts may not upload media; register a full account")
	}
	if err := a.limit(c.UserID); err != nil {
		return err
	}
	id, exp, err := a.repo.Create(r.Context(), c.UserID)
	if err != nil {
		return matrixErr(err)
	}
	apihttp.WriteJSON(w, http.StatusOK, map[string]any{
		"content_uri": "mxc://" + a.cfg.Repo.ServerName + "/" + id, "unused_expires_at": exp})
	return nil
}

func (a *API) config(w http.ResponseWriter, r *http.Request, c *apihttp.Caller) error {
	body := map[string]any{}
	if a.cfg.Repo.MaxUploadSize > 0 {
		body["m.upload.size"] = a.cfg.Repo.MaxUploadSize
	}
	apihttp.WriteJSON(w, http.StatusOK, body)
	return nil
}

// ---- downloads ----

// maxWait bounds timeout_ms (the spec: servers SHOULD impose a maximum).
const maxWait = 60 * time.Second

func waitFor(r *http.Request) time.Duration {
	d := 20 * time.Second
	if s := r.URL.Query().Get("timeout_ms"); s != "" {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil && n >= 0 {
			d = time.Duration(n) * time.Millisecond
		}
	}
	return min(d, maxWait)
}

// lookup finds the item a download or thumbnail asks for, waiting for a
// pending upload up to timeout_ms.
func (a *API) lookup(r *http.Request, legacy bool) (*mediaproj.Media, error) {
	server, id := r.PathValue("serverName"), r.PathValue("mediaId")
	if !validServerName(server) || !repomedia.ValidMediaID(id) {
		return nil, matrixErr(repomedia.ErrNotFound)
	}
	allowRemote := r.URL.Query().Get("allow_remote") != "false"
	m, err := a.repo.Resolve(r.Context(), server, id, allowRemote)
	if errors.Is(err, repomedia.ErrNotYetUploaded) {
		if legacy && m.Authenticated {
			return nil, matrixErr(repomedia.ErrNotFound)
		}
		ctx, cancel := context.WithTimeout(r.Context(), waitFor(r))
		defer cancel()
		m, err = a.repo.WaitUploaded(ctx, server, id)
	}
	if err != nil {
		return nil, matrixErr(err)
	}
	if legacy && m.Authenticated {
		// Frozen (spec 1.11): only media from before authenticated media
		// was enforced is served without a token.
		return nil, mxerr.New(http.StatusNotFound, "M_NOT_FOUND", "Media not found; use the authenticated /_matrix/client/v1/media endpoints")
	}
	return m, nil
}

func (a *API) download(legacy bool) authedHandler {
	return func(w http.ResponseWriter, r *http.Request, c *apihttp.Caller) error {
		m, err := a.lookup(r, legacy)
		if err != nil {
			return err
		}
		s, err := a.repo.Open(r.Context(), m)
		if err != nil {
			return matrixErr(err)
		}
		defer s.Body.Close()
		name := m.FileName
		if n := r.PathValue("fileName"); n != "" {
			name = n
		}
		serve(w, r, s, name)
		return nil
	}
}

func (a *API) thumbnail(legacy bool) authedHandler {
	return func(w http.ResponseWriter, r *http.Request, c *apihttp.Caller) error {
		q := r.URL.Query()
		width, err1 := strconv.Atoi(q.Get("width"))
		height, err2 := strconv.Atoi(q.Get("height"))
		if err1 != nil || err2 != nil || width <= 0 || height <= 0 || width > 10000 || height > 10000 {
			return mxerr.New(http.StatusBadRequest, "M_INVALID_PARAM", "width and height must be positive integers")
		}
		method := q.Get("method")
		if method != "" && method != "crop" && method != "scale" {
			return mxerr.New(http.StatusBadRequest, "M_INVALID_PARAM", "method must be crop or scale")
		}
		m, err := a.lookup(r, legacy)
		if err != nil {
			return err
		}
		s, err := a.repo.Thumbnail(r.Context(), m, width, height, method)
		if err != nil {
			return matrixErr(err)
		}
		defer s.Body.Close()
		serve(w, r, s, "")
		return nil
	}
}

// serve writes content with the spec's headers: a restrictive CSP, no
// sniffing, cross-origin readable, and inline only for the spec's safe
// types (attachment otherwise). Range requests are answered.
func serve(w http.ResponseWriter, r *http.Request, s *repomedia.Served, fileName string) {
	h := w.Header()
	ct := s.ContentType
	if ct == "" {
		ct = "application/octet-stream"
	}
	repomedia.SetSecurityHeaders(h)
	h.Set("Content-Type", ct)
	h.Set("Content-Disposition", repomedia.ContentDisposition(ct, fileName))
	h.Set("Cache-Control", "private, max-age=31536000, immutable")
	http.ServeContent(w, r, "", time.Time{}, s.Body)
}

// validServerName checks the server-name segment of an mxc URI (appendix
// "Server name": a host name or IP literal, optionally with a port), so
// that it can never act as a path.
func validServerName(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	host, port := s, ""
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		if end < 0 {
			return false
		}
		host, port = s[1:end], strings.TrimPrefix(s[end+1:], ":")
		if s[end+1:] != "" && !strings.HasPrefix(s[end+1:], ":") {
			return false
		}
		for _, c := range host {
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' || c == ':' || c == '.') {
				return false
			}
		}
	} else {
		if i := strings.LastIndexByte(s, ':'); i >= 0 {
			host, port = s[:i], s[i+1:]
			if port == "" {
				return false
			}
		}
		for _, c := range host {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
				return false
			}
		}
	}
	if host == "" {
		return false
	}
	for _, c := range port {
		if c < '0' || c > '9' {
			return false
		}
	}
	return len(port) <= 5
}

// ---- cluster peers ----

func (a *API) peerBlob(w http.ResponseWriter, r *http.Request) error {
	if !a.repo.PeerAuthorized(r) {
		return mxerr.New(http.StatusForbidden, "M_FORBIDDEN", "Not a cluster peer")
	}
	b, n, err := a.repo.OpenLocalBlob(r.Context(), r.PathValue("sha256"))
	if err != nil {
		return matrixErr(err)
	}
	defer b.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	_, err = io.Copy(w, b)
	return err
}
