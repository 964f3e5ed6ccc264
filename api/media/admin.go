package media

import (
	"encoding/json"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"github.com/engram-hs/engram/api/apihttp"
	"github.com/engram-hs/engram/internal/mxerr"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	mediaproj "github.com/engram-hs/engram/projections/media"
)

// The media part of Synapse's admin API, with its shapes, for admins
// only (401 without a token, 403 M_FORBIDDEN for everybody else). Every
// change is one log fact (MediaQuarantined, MediaDeleted) naming the
// items the handler resolved, so a rebuild repeats it exactly.
func (a *API) adminRoutes() {
	h := a.host
	p := "/_synapse/admin/v1"
	h.Handle("POST", p+"/media/quarantine/{serverName}/{mediaId}", a.admin(a.quarantineOne(true)))
	h.Handle("POST", p+"/media/unquarantine/{serverName}/{mediaId}", a.admin(a.quarantineOne(false)))
	h.Handle("POST", p+"/room/{roomId}/media/quarantine", a.admin(a.quarantineRoom))
	h.Handle("POST", p+"/quarantine_media/{roomId}", a.admin(a.quarantineRoom)) // Synapse's older path
	h.Handle("POST", p+"/user/{userId}/media/quarantine", a.admin(a.quarantineUser))
	h.Handle("GET", p+"/room/{roomId}/media", a.admin(a.listRoomMedia))
	h.Handle("GET", p+"/media/{serverName}/{mediaId}", a.admin(a.mediaInfo))
	h.Handle("DELETE", p+"/media/{serverName}/{mediaId}", a.admin(a.deleteOne))
	h.Handle("POST", p+"/media/delete", a.admin(a.deleteOlder))
	h.Handle("POST", p+"/media/{serverName}/delete", a.admin(a.deleteOlder)) // older path
	h.Handle("POST", p+"/purge_media_cache", a.admin(a.purgeCache))
	h.Handle("GET", p+"/users/{userId}/media", a.admin(a.listUserMedia))
	h.Handle("DELETE", p+"/users/{userId}/media", a.admin(a.deleteUserMedia))
}

func (a *API) admin(fn authedHandler) apihttp.Handler {
	return a.authed(func(w http.ResponseWriter, r *http.Request, c *apihttp.Caller) error {
		if !c.Admin {
			return mxerr.Forbidden("You are not a server admin")
		}
		return fn(w, r, c)
	})
}

func (a *API) local() string { return a.cfg.Repo.ServerName }

func (a *API) quarantineOne(on bool) authedHandler {
	return func(w http.ResponseWriter, r *http.Request, c *apihttp.Caller) error {
		ref := facts.MediaRef{Origin: r.PathValue("serverName"), MediaID: r.PathValue("mediaId")}
		if err := a.commitWait(r, c, facts.MediaQuarantined{Media: []facts.MediaRef{ref}, Quarantined: on, By: c.UserID}); err != nil {
			return err
		}
		apihttp.WriteJSON(w, http.StatusOK, map[string]any{})
		return nil
	}
}

// commitWait records a media admin fact and waits until the media
// projection applied it.
func (a *API) commitWait(r *http.Request, c *apihttp.Caller, fact any) error {
	var p englog.Proposal
	switch f := fact.(type) {
	case facts.MediaQuarantined:
		p = facts.MustEncode(englog.KindMediaQuarantined, f)
	case facts.MediaDeleted:
		p = facts.MustEncode(englog.KindMediaDeleted, f)
	}
	_, err := a.host.Commit(r.Context(), []*projections.Handle{a.repo.Handle()}, p)
	return matrixErr(err)
}

// roomMedia lists the mxc URIs the room's events refer to (url,
// thumbnail_url, avatar_url, and any other string value that is one).
func (a *API) roomMedia(r *http.Request, roomID string) ([]facts.MediaRef, error) {
	contents, err := a.host.RoomEventContents(r.Context(), roomID)
	if err != nil {
		return nil, err
	}
	seen := map[facts.MediaRef]bool{}
	var out []facts.MediaRef
	for _, c := range contents {
		var v any
		if json.Unmarshal(c, &v) != nil {
			continue
		}
		walkMXC(v, func(ref facts.MediaRef) {
			if !seen[ref] {
				seen[ref] = true
				out = append(out, ref)
			}
		})
	}
	return out, nil
}

// ParseMXC splits mxc://server/id, checking both parts.
func ParseMXC(s string) (facts.MediaRef, bool) {
	rest, ok := strings.CutPrefix(s, "mxc://")
	if !ok {
		return facts.MediaRef{}, false
	}
	server, id, ok := strings.Cut(rest, "/")
	if !ok || !validServerName(server) || !validMediaIDChars(id) {
		return facts.MediaRef{}, false
	}
	return facts.MediaRef{Origin: server, MediaID: id}, true
}

func validMediaIDChars(id string) bool {
	if id == "" {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func walkMXC(v any, fn func(facts.MediaRef)) {
	switch x := v.(type) {
	case string:
		if ref, ok := ParseMXC(x); ok {
			fn(ref)
		}
	case map[string]any:
		for _, e := range x {
			walkMXC(e, fn)
		}
	case []any:
		for _, e := range x {
			walkMXC(e, fn)
		}
	}
}

func (a *API) quarantineRoom(w http.ResponseWriter, r *http.Request, c *apihttp.Caller) error {
	refs, err := a.roomMedia(r, r.PathValue("roomId"))
	if err != nil {
		return err
	}
	refs = a.existing(refs)
	if len(refs) > 0 {
		if err := a.commitWait(r, c, facts.MediaQuarantined{Media: refs, Quarantined: true, By: c.UserID}); err != nil {
			return err
		}
	}
	apihttp.WriteJSON(w, http.StatusOK, map[string]any{"num_quarantined": len(refs)})
	return nil
}

// existing keeps the references this server holds (local media, or
// remote media in the cache).
func (a *API) existing(refs []facts.MediaRef) []facts.MediaRef {
	var out []facts.MediaRef
	for _, ref := range refs {
		if m, err := a.repo.View().Get(ref.Origin, ref.MediaID, false); err == nil && m != nil {
			out = append(out, ref)
		}
	}
	return out
}

func (a *API) quarantineUser(w http.ResponseWriter, r *http.Request, c *apihttp.Caller) error {
	items, err := a.repo.View().UserMedia(r.PathValue("userId"))
	if err != nil {
		return err
	}
	var refs []facts.MediaRef
	for _, m := range items {
		if !m.Quarantined {
			refs = append(refs, facts.MediaRef{Origin: m.Origin, MediaID: m.MediaID})
		}
	}
	if len(refs) > 0 {
		if err := a.commitWait(r, c, facts.MediaQuarantined{Media: refs, Quarantined: true, By: c.UserID}); err != nil {
			return err
		}
	}
	apihttp.WriteJSON(w, http.StatusOK, map[string]any{"num_quarantined": len(refs)})
	return nil
}

func (a *API) listRoomMedia(w http.ResponseWriter, r *http.Request, c *apihttp.Caller) error {
	refs, err := a.roomMedia(r, r.PathValue("roomId"))
	if err != nil {
		return err
	}
	local, remote := []string{}, []string{}
	for _, ref := range refs {
		uri := "mxc://" + ref.Origin + "/" + ref.MediaID
		if ref.Origin == a.local() {
			local = append(local, uri)
		} else {
			remote = append(remote, uri)
		}
	}
	apihttp.WriteJSON(w, http.StatusOK, map[string]any{"local": local, "remote": remote})
	return nil
}

// mediaJSON is Synapse's shape of a media item in the admin API.
func mediaJSON(m mediaproj.Media) map[string]any {
	out := map[string]any{
		"media_id": m.MediaID, "media_type": m.ContentType, "media_length": m.Size,
		"upload_name": nilIfEmpty(m.FileName), "created_ts": m.CreatedTS, "last_access_ts": m.CreatedTS,
		"quarantined_by": nilIfEmpty(m.QuarantinedBy), "safe_from_quarantine": false,
		"user_id": nilIfEmpty(m.UserID), "sha256": m.SHA256,
	}
	return out
}

func nilIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func (a *API) mediaInfo(w http.ResponseWriter, r *http.Request, c *apihttp.Caller) error {
	m, err := a.repo.View().Get(r.PathValue("serverName"), r.PathValue("mediaId"), false)
	if err != nil {
		return err
	}
	if m == nil {
		return mxerr.NotFound("Unknown media")
	}
	apihttp.WriteJSON(w, http.StatusOK, map[string]any{"media_info": mediaJSON(*m)})
	return nil
}

func (a *API) deleteOne(w http.ResponseWriter, r *http.Request, c *apihttp.Caller) error {
	server, id := r.PathValue("serverName"), r.PathValue("mediaId")
	if server != a.local() {
		return mxerr.New(http.StatusBadRequest, "M_INVALID_PARAM", "Can only delete local media; use purge_media_cache for remote media")
	}
	m, err := a.repo.View().Get(server, id, false)
	if err != nil {
		return err
	}
	if m == nil {
		return mxerr.NotFound("Unknown media")
	}
	ref := facts.MediaRef{Origin: server, MediaID: id}
	if err := a.commitWait(r, c, facts.MediaDeleted{Media: []facts.MediaRef{ref}, Reason: "admin"}); err != nil {
		return err
	}
	apihttp.WriteJSON(w, http.StatusOK, map[string]any{"deleted_media": []string{id}, "total": 1})
	return nil
}

func queryInt64(r *http.Request, name string, def int64) (int64, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, mxerr.InvalidParam("%s must be a non-negative integer", name)
	}
	return n, nil
}

// deleteOlder deletes local media created before before_ts (required),
// larger than size_gt. Synapse's keep_profiles (default true) spares
// media used as avatars; this server cannot tell those apart yet, so it
// refuses rather than delete avatars unasked: keep_profiles=false must be
// given.
func (a *API) deleteOlder(w http.ResponseWriter, r *http.Request, c *apihttp.Caller) error {
	if r.URL.Query().Get("keep_profiles") != "false" {
		return mxerr.New(http.StatusBadRequest, "M_INVALID_PARAM", "keep_profiles=true (the default) is not supported yet: this server cannot tell avatars from other media; pass keep_profiles=false to delete avatars too")
	}
	if r.URL.Query().Get("before_ts") == "" {
		return mxerr.MissingParam("Missing integer query parameter 'before_ts'")
	}
	before, err := queryInt64(r, "before_ts", 0)
	if err != nil {
		return err
	}
	sizeGT, err := queryInt64(r, "size_gt", 0)
	if err != nil {
		return err
	}
	var refs []facts.MediaRef
	var ids []string
	err = a.repo.View().ForEach(func(m mediaproj.Media) bool {
		if m.Origin == a.local() && m.CreatedTS < before && m.Size > sizeGT {
			refs = append(refs, facts.MediaRef{Origin: m.Origin, MediaID: m.MediaID})
			ids = append(ids, m.MediaID)
		}
		return true
	})
	if err != nil {
		return err
	}
	if len(refs) > 0 {
		if err := a.commitWait(r, c, facts.MediaDeleted{Media: refs, Reason: "admin"}); err != nil {
			return err
		}
	}
	if ids == nil {
		ids = []string{}
	}
	apihttp.WriteJSON(w, http.StatusOK, map[string]any{"deleted_media": ids, "total": len(ids)})
	return nil
}

func (a *API) purgeCache(w http.ResponseWriter, r *http.Request, c *apihttp.Caller) error {
	if r.URL.Query().Get("before_ts") == "" {
		return mxerr.MissingParam("Missing integer query parameter 'before_ts'")
	}
	before, err := queryInt64(r, "before_ts", 0)
	if err != nil {
		return err
	}
	refs, err := a.repo.RemoteOlderThan(before)
	if err != nil {
		return err
	}
	if len(refs) > 0 {
		if err := a.commitWait(r, c, facts.MediaDeleted{Media: refs, Reason: "purge_media_cache"}); err != nil {
			return err
		}
	}
	apihttp.WriteJSON(w, http.StatusOK, map[string]any{"deleted": len(refs)})
	return nil
}

func (a *API) userMediaSorted(r *http.Request) ([]mediaproj.Media, error) {
	items, err := a.repo.View().UserMedia(r.PathValue("userId"))
	if err != nil {
		return nil, err
	}
	orderBy := r.URL.Query().Get("order_by")
	if orderBy == "" {
		orderBy = "created_ts"
	}
	less := map[string]func(x, y mediaproj.Media) bool{
		"created_ts":     func(x, y mediaproj.Media) bool { return x.CreatedTS < y.CreatedTS },
		"last_access_ts": func(x, y mediaproj.Media) bool { return x.CreatedTS < y.CreatedTS },
		"media_id":       func(x, y mediaproj.Media) bool { return x.MediaID < y.MediaID },
		"upload_name":    func(x, y mediaproj.Media) bool { return x.FileName < y.FileName },
		"media_length":   func(x, y mediaproj.Media) bool { return x.Size < y.Size },
		"media_type":     func(x, y mediaproj.Media) bool { return x.ContentType < y.ContentType },
		"quarantined_by": func(x, y mediaproj.Media) bool { return x.QuarantinedBy < y.QuarantinedBy },
	}[orderBy]
	if less == nil {
		return nil, mxerr.New(http.StatusBadRequest, "M_INVALID_PARAM", "Unknown value for order_by")
	}
	dir := r.URL.Query().Get("dir")
	if dir != "" && dir != "f" && dir != "b" {
		return nil, mxerr.New(http.StatusBadRequest, "M_INVALID_PARAM", "Unknown direction: %s", dir)
	}
	sort.SliceStable(items, func(i, j int) bool {
		if dir == "b" {
			return less(items[j], items[i])
		}
		return less(items[i], items[j])
	})
	return items, nil
}

func (a *API) listUserMedia(w http.ResponseWriter, r *http.Request, c *apihttp.Caller) error {
	items, err := a.userMediaSorted(r)
	if err != nil {
		return err
	}
	from, err := queryInt64(r, "from", 0)
	if err != nil {
		return err
	}
	limit, err := queryInt64(r, "limit", 100)
	if err != nil {
		return err
	}
	total := len(items)
	page := []map[string]any{}
	for i := int(from); i < total && int64(len(page)) < limit; i++ {
		page = append(page, mediaJSON(items[i]))
	}
	body := map[string]any{"media": page, "total": total}
	if next := int(from) + len(page); next < total {
		body["next_token"] = next
	}
	apihttp.WriteJSON(w, http.StatusOK, body)
	return nil
}

func (a *API) deleteUserMedia(w http.ResponseWriter, r *http.Request, c *apihttp.Caller) error {
	items, err := a.userMediaSorted(r)
	if err != nil {
		return err
	}
	var refs []facts.MediaRef
	ids := []string{}
	for _, m := range items {
		refs = append(refs, facts.MediaRef{Origin: m.Origin, MediaID: m.MediaID})
		ids = append(ids, m.MediaID)
	}
	if len(refs) > 0 {
		if err := a.commitWait(r, c, facts.MediaDeleted{Media: refs, Reason: "admin"}); err != nil {
			return err
		}
	}
	apihttp.WriteJSON(w, http.StatusOK, map[string]any{"deleted_media": ids, "total": len(ids)})
	return nil
}
