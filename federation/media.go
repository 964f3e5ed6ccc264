package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"time"

	"github.com/engram-hs/engram/federation/transport"
	"github.com/engram-hs/engram/media"
	mediaproj "github.com/engram-hs/engram/projections/media"
)

// SetMedia serves the federation media endpoints from the media
// repository (spec 1.11, server-server "Content Repository").
func (s *Server) SetMedia(repo *media.Repo) {
	if repo == nil {
		return
	}
	s.HandleAuthed("GET /_matrix/federation/v1/media/download/{mediaId}", func(w http.ResponseWriter, r *http.Request, origin string) error {
		m, err := s.localMedia(repo, r)
		if err != nil {
			return err
		}
		sv, err := repo.Open(r.Context(), m)
		if err != nil {
			return mediaErr(err)
		}
		defer sv.Body.Close()
		return writeMultipart(w, sv, m.FileName)
	})
	s.HandleAuthed("GET /_matrix/federation/v1/media/thumbnail/{mediaId}", func(w http.ResponseWriter, r *http.Request, origin string) error {
		q := r.URL.Query()
		width, err1 := strconv.Atoi(q.Get("width"))
		height, err2 := strconv.Atoi(q.Get("height"))
		if err1 != nil || err2 != nil || width <= 0 || height <= 0 || width > 10000 || height > 10000 {
			return Errorf(http.StatusBadRequest, "M_INVALID_PARAM", "width and height must be positive integers")
		}
		method := q.Get("method")
		if method != "" && method != "crop" && method != "scale" {
			return Errorf(http.StatusBadRequest, "M_INVALID_PARAM", "method must be crop or scale")
		}
		m, err := s.localMedia(repo, r)
		if err != nil {
			return err
		}
		sv, err := repo.Thumbnail(r.Context(), m, width, height, method)
		if err != nil {
			return mediaErr(err)
		}
		defer sv.Body.Close()
		return writeMultipart(w, sv, "")
	})
}

// localMedia finds a local media item; remote media in the cache is not
// served over federation (it is its origin's to serve).
func (s *Server) localMedia(repo *media.Repo, r *http.Request) (*mediaproj.Media, error) {
	id := r.PathValue("mediaId")
	m, err := repo.Lookup(s.cfg.ServerName, id)
	if errors.Is(err, media.ErrNotYetUploaded) {
		ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
		defer cancel()
		m, err = repo.WaitUploaded(ctx, s.cfg.ServerName, id)
	}
	if err != nil {
		return nil, mediaErr(err)
	}
	return m, nil
}

func mediaErr(err error) error {
	switch {
	case errors.Is(err, media.ErrNotFound), errors.Is(err, media.ErrQuarantined):
		return Errorf(http.StatusNotFound, "M_NOT_FOUND", "Media not found")
	case errors.Is(err, media.ErrNotYetUploaded):
		return Errorf(http.StatusGatewayTimeout, "M_NOT_YET_UPLOADED", "Content has not yet been uploaded")
	case errors.Is(err, media.ErrImageTooLarge):
		return Errorf(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "The image is too large to thumbnail")
	case errors.Is(err, media.ErrNotImage):
		return Errorf(http.StatusBadRequest, "M_UNKNOWN", "Cannot generate a thumbnail of this content")
	}
	return err
}

// writeMultipart answers in the spec's multipart/mixed form: an empty
// JSON metadata part, then the bytes.
func writeMultipart(w http.ResponseWriter, sv *media.Served, fileName string) error {
	mw := multipart.NewWriter(w)
	w.Header().Set("Content-Type", "multipart/mixed; boundary="+mw.Boundary())
	w.WriteHeader(http.StatusOK)
	meta, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/json"}})
	if err != nil {
		return nil
	}
	_, _ = meta.Write([]byte("{}"))
	ct := sv.ContentType
	if ct == "" {
		ct = "application/octet-stream"
	}
	part, err := mw.CreatePart(textproto.MIMEHeader{
		"Content-Type":        {ct},
		"Content-Disposition": {media.ContentDisposition(ct, fileName)},
	})
	if err != nil {
		return nil
	}
	if _, err := io.Copy(part, sv.Body); err != nil {
		return nil // the status is sent; the peer sees a truncated body
	}
	return mw.Close()
}

// FetchMedia downloads media from its origin: the authenticated
// federation endpoint (spec 1.11), following its redirect form, or, when
// the origin does not know that endpoint, the deprecated unauthenticated
// /_matrix/media/v3/download path (allow_remote=false, so it cannot
// bounce the request elsewhere). The caller bounds the body's size.
func (rm *Remote) FetchMedia(ctx context.Context, origin, mediaID string) (*media.RemoteMedia, error) {
	path := "/_matrix/federation/v1/media/download/" + transport.PathEscape(mediaID)
	resp, err := rm.Client.Do(ctx, transport.Request{Destination: origin, Method: "GET", Path: path})
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusOK {
		if rm.Acted != nil {
			rm.Acted(origin)
		}
		return rm.readMultipart(ctx, resp)
	}
	legacy := resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed || resp.StatusCode == http.StatusBadRequest
	if legacy {
		// An older server answers an unknown endpoint with 404 or 405
		// M_UNRECOGNIZED; 404 M_NOT_FOUND is the media's absence.
		var e struct {
			Errcode string `json:"errcode"`
		}
		_ = json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&e)
		legacy = e.Errcode == "M_UNRECOGNIZED" || e.Errcode == ""
	}
	resp.Body.Close()
	if !legacy {
		if resp.StatusCode == http.StatusNotFound {
			return nil, fmt.Errorf("%w (%s answered 404)", media.ErrNotFound, origin)
		}
		return nil, fmt.Errorf("%s answered %d", origin, resp.StatusCode)
	}
	lpath := "/_matrix/media/v3/download/" + transport.PathEscape(origin) + "/" + transport.PathEscape(mediaID) + "?allow_remote=false"
	resp, err = rm.Client.Do(ctx, transport.Request{Destination: origin, Method: "GET", Path: lpath, Unsigned: true})
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound {
			return nil, fmt.Errorf("%w (%s answered 404 on the legacy media path)", media.ErrNotFound, origin)
		}
		return nil, fmt.Errorf("%s answered %d on the legacy media path", origin, resp.StatusCode)
	}
	return &media.RemoteMedia{Body: resp.Body, ContentType: resp.Header.Get("Content-Type"), FileName: dispositionName(resp.Header.Get("Content-Disposition"))}, nil
}

func (rm *Remote) readMultipart(ctx context.Context, resp *http.Response) (*media.RemoteMedia, error) {
	mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/mixed" || params["boundary"] == "" {
		resp.Body.Close()
		return nil, fmt.Errorf("the media answer is not multipart/mixed with a boundary (%q)", resp.Header.Get("Content-Type"))
	}
	mr := multipart.NewReader(resp.Body, params["boundary"])
	meta, err := mr.NextPart()
	if err != nil {
		resp.Body.Close()
		return nil, fmt.Errorf("the media answer has no metadata part: %w", err)
	}
	if _, err := io.Copy(io.Discard, io.LimitReader(meta, 64<<10)); err != nil {
		resp.Body.Close()
		return nil, err
	}
	part, err := mr.NextPart()
	if err != nil {
		resp.Body.Close()
		return nil, fmt.Errorf("the media answer has no content part: %w", err)
	}
	if loc := part.Header.Get("Location"); loc != "" {
		resp.Body.Close()
		u, err := url.Parse(loc)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") {
			return nil, fmt.Errorf("the media answer redirects to %q", loc)
		}
		plainClient := rm.Client.Plain()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return nil, err
		}
		r2, err := plainClient.Do(req)
		if err != nil {
			return nil, err
		}
		if r2.StatusCode != http.StatusOK {
			r2.Body.Close()
			return nil, fmt.Errorf("the media redirect answered %d", r2.StatusCode)
		}
		return &media.RemoteMedia{Body: r2.Body, ContentType: r2.Header.Get("Content-Type"), FileName: dispositionName(r2.Header.Get("Content-Disposition"))}, nil
	}
	return &media.RemoteMedia{Body: partBody{part, resp.Body}, ContentType: part.Header.Get("Content-Type"),
		FileName: dispositionName(part.Header.Get("Content-Disposition"))}, nil
}

// partBody reads a part and closes the response under it.
type partBody struct {
	io.Reader
	c io.Closer
}

func (p partBody) Close() error { return p.c.Close() }

func dispositionName(h string) string {
	if _, params, err := mime.ParseMediaType(h); err == nil {
		return params["filename"]
	}
	return ""
}
