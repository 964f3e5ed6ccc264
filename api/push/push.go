// Package push serves pushers and notifications (spec: client-server-api,
// "Push Notifications"): GET /pushers, POST /pushers/set and GET
// /notifications, over the notifications projection
// (projections/notifications). Pushers are facts in the log
// (KindPusherSet); delivery to push gateways is push/gateway's.
package push

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/engram-hs/engram/api/apihttp"
	"github.com/engram-hs/engram/internal/mxerr"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/notifications"
)

// Host is what the endpoints need from the client-server API beyond
// apihttp.Host.
type Host interface {
	apihttp.Host
	// ClientEvent is an event as the user is shown it (client format,
	// with room_id), nil when it is gone or they may not see it.
	ClientEvent(userID, deviceID, eventID string) (map[string]any, error)
	// CatchUp waits until the notifications and rooms projections have
	// folded what the log holds (read-your-writes).
	CatchUp(ctx context.Context) error
}

// API holds the endpoints.
type API struct {
	h      Host
	handle *projections.Handle
}

// New registers the endpoints on h.
func New(h Host, handle *projections.Handle) *API {
	a := &API{h: h, handle: handle}
	for _, p := range []string{"/_matrix/client/v3", "/_matrix/client/r0"} {
		h.Handle("GET", p+"/pushers", a.authed(a.getPushers))
		h.Handle("POST", p+"/pushers/set", a.authed(a.setPusher))
		h.Handle("GET", p+"/notifications", a.authed(a.getNotifications))
	}
	return a
}

func (a *API) view() notifications.View { return notifications.NewView(a.handle.Reader()) }

type authedHandler func(w http.ResponseWriter, r *http.Request, c *apihttp.Caller) error

func (a *API) authed(fn authedHandler) apihttp.Handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		c, err := a.h.Authenticate(r)
		if err != nil {
			return err
		}
		if c.Guest {
			return mxerr.New(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "Guest accounts cannot use push notifications; register an account.")
		}
		return fn(w, r, c)
	}
}

// pusherJSON is a pusher as GET /pushers shows it.
type pusherJSON struct {
	Pushkey           string          `json:"pushkey"`
	Kind              string          `json:"kind"`
	AppID             string          `json:"app_id"`
	AppDisplayName    string          `json:"app_display_name"`
	DeviceDisplayName string          `json:"device_display_name"`
	ProfileTag        string          `json:"profile_tag,omitempty"`
	Lang              string          `json:"lang"`
	Data              json.RawMessage `json:"data"`
}

func (a *API) getPushers(w http.ResponseWriter, r *http.Request, c *apihttp.Caller) error {
	ps, err := a.view().Pushers(c.UserID)
	if err != nil {
		return err
	}
	out := make([]pusherJSON, 0, len(ps))
	for _, p := range ps {
		data := p.Data
		if len(data) == 0 {
			data = json.RawMessage(`{}`)
		}
		out = append(out, pusherJSON{Pushkey: p.Pushkey, Kind: p.Kind, AppID: p.AppID, AppDisplayName: p.AppDisplayName,
			DeviceDisplayName: p.DeviceDisplayName, ProfileTag: p.ProfileTag, Lang: p.Lang, Data: data})
	}
	apihttp.WriteJSON(w, http.StatusOK, map[string]any{"pushers": out})
	return nil
}

// NotifyPath is the path a push gateway's URL must have (spec: data.url).
const NotifyPath = "/_matrix/push/v1/notify"

// Limits of the spec's pusher fields.
const (
	maxAppID   = 64  // characters
	maxPushkey = 512 // bytes
)

func (a *API) setPusher(w http.ResponseWriter, r *http.Request, c *apihttp.Caller) error {
	var body map[string]json.RawMessage
	if err := a.h.ReadJSON(r, &body); err != nil {
		return err
	}
	str := func(k string) (string, bool, error) {
		raw, ok := body[k]
		if !ok || string(raw) == "null" {
			return "", false, nil
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", true, mxerr.InvalidParam("%s must be a string", k)
		}
		return s, true, nil
	}
	kindRaw, hasKind := body["kind"]
	deleting := hasKind && string(kindRaw) == "null"
	required := []string{"kind", "app_id", "pushkey"}
	if !deleting {
		required = append(required, "app_display_name", "device_display_name", "lang", "data")
	}
	var missing []string
	vals := map[string]string{}
	for _, k := range required {
		if k == "data" {
			if raw, ok := body[k]; !ok || string(raw) == "null" {
				missing = append(missing, k)
			}
			continue
		}
		if k == "kind" && deleting {
			continue
		}
		s, ok, err := str(k)
		if err != nil {
			return err
		}
		if !ok {
			missing = append(missing, k)
		}
		vals[k] = s
	}
	if len(missing) > 0 {
		return mxerr.MissingParam("Missing parameters: %s", strings.Join(missing, ", "))
	}
	appID, pushkey := vals["app_id"], vals["pushkey"]
	if n := len([]rune(appID)); n > maxAppID || n == 0 {
		return mxerr.InvalidParam("app_id must be 1 to %d characters", maxAppID)
	}
	if len(pushkey) > maxPushkey || pushkey == "" {
		return mxerr.InvalidParam("pushkey must be 1 to %d bytes", maxPushkey)
	}
	f := facts.PusherSet{UserID: c.UserID, AppID: appID, Pushkey: pushkey, Reason: "client"}
	if !deleting {
		kind := vals["kind"]
		var data map[string]json.RawMessage
		if err := json.Unmarshal(body["data"], &data); err != nil {
			return mxerr.InvalidParam("data must be an object")
		}
		switch kind {
		case "http":
			if err := checkURL(data); err != nil {
				return err
			}
			if raw, ok := data["format"]; ok {
				var format string
				if json.Unmarshal(raw, &format) != nil || format != "event_id_only" {
					return mxerr.InvalidParam("data.format must be \"event_id_only\" or absent")
				}
			}
		case "email":
			return mxerr.InvalidParam("Email pushers are not supported by this server; use an http pusher")
		default:
			return mxerr.InvalidParam("Unknown pusher kind %q: use \"http\"", kind)
		}
		var profileTag string
		if s, _, err := str("profile_tag"); err != nil {
			return err
		} else {
			profileTag = s
		}
		var appendMode bool
		if raw, ok := body["append"]; ok && string(raw) != "null" {
			if json.Unmarshal(raw, &appendMode) != nil {
				return mxerr.InvalidParam("append must be a boolean")
			}
		}
		f.Append, f.Reason = appendMode, ""
		f.Pusher = &facts.Pusher{Kind: kind, AppDisplayName: vals["app_display_name"], DeviceDisplayName: vals["device_display_name"],
			ProfileTag: profileTag, Lang: vals["lang"], Data: body["data"], DeviceID: c.DeviceID}
	}
	p, err := facts.Encode(englog.KindPusherSet, f)
	if err != nil {
		return err
	}
	if _, err := a.h.Commit(r.Context(), []*projections.Handle{a.handle}, p); err != nil {
		return err
	}
	apihttp.WriteJSON(w, http.StatusOK, struct{}{})
	return nil
}

// checkURL checks an http pusher's data.url: an absolute http(s) URL
// whose path is the gateway's notify path. The spec asks for HTTPS; plain
// http is accepted, as Synapse does, for gateways on a private network.
func checkURL(data map[string]json.RawMessage) error {
	raw, ok := data["url"]
	if !ok {
		return mxerr.MissingParam("'url' required in data for HTTP pushers")
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return mxerr.InvalidParam("'url' in data must be a string")
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return mxerr.InvalidParam("'url' in data must be an absolute http or https URL")
	}
	if u.Path != NotifyPath {
		return mxerr.InvalidParam("'url' must have a path of '%s'", NotifyPath)
	}
	return nil
}

const (
	defaultNotificationsLimit = 20
	maxNotificationsLimit     = 100
)

func (a *API) getNotifications(w http.ResponseWriter, r *http.Request, c *apihttp.Caller) error {
	q := r.URL.Query()
	var before uint64
	if s := q.Get("from"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return mxerr.InvalidParam("from must be a next_token from an earlier response")
		}
		before = n
	}
	limit := defaultNotificationsLimit
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return mxerr.InvalidParam("limit must be a non-negative integer")
		}
		limit = min(n, maxNotificationsLimit)
	}
	only := q.Get("only")
	if err := a.h.CatchUp(r.Context()); err != nil {
		return err
	}
	v := a.view()
	out := []map[string]any{}
	var next uint64
	for limit > 0 {
		ns, err := v.Notifications(c.UserID, before, limit, only == "highlight")
		if err != nil {
			return err
		}
		for _, n := range ns {
			before = n.Offset
			ev, err := a.h.ClientEvent(c.UserID, c.DeviceID, n.EventID)
			if err != nil {
				return err
			}
			if ev == nil {
				continue
			}
			read, err := v.Read(c.UserID, n)
			if err != nil {
				return err
			}
			item := map[string]any{"actions": n.Actions, "event": ev, "read": read, "room_id": n.RoomID, "ts": n.TS}
			out = append(out, item)
			next = n.Offset
			if len(out) == limit {
				break
			}
		}
		if len(out) == limit || len(ns) < limit {
			break
		}
	}
	resp := map[string]any{"notifications": out}
	if limit > 0 && len(out) == limit && next > 0 {
		resp["next_token"] = strconv.FormatUint(next, 10)
	}
	apihttp.WriteJSON(w, http.StatusOK, resp)
	return nil
}
