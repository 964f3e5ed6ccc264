package admin

import (
	"net/http"
	"sort"
	"strings"

	"github.com/engram-hs/engram/internal/mxerr"
)

// MediaUsage is what the media store reports per user for the media
// statistics; the media package provides it (Config.Media).
type MediaUsage interface {
	// UserMedia returns how many media the user uploaded between fromTS
	// and untilTS (Unix ms; 0: unbounded) and their total size in bytes.
	UserMedia(userID string, fromTS, untilTS int64) (count, bytes int64, err error)
}

func (a *API) statsEndpoints() []endpoint {
	return []endpoint{
		{"GET", "/v1/statistics/users/media", a.userMediaStats},
		{"GET", "/v1/statistics/database/rooms", a.roomSizes},
	}
}

// userMediaStats is Synapse's "Users' media usage statistics". Without a
// media store (Config.Media nil) no user has uploaded anything, and each
// counts zero.
func (a *API) userMediaStats(w http.ResponseWriter, r *http.Request, c Caller) error {
	from, err := queryInt(r, "from", 0)
	if err != nil {
		return err
	}
	limit, err := queryInt(r, "limit", 100)
	if err != nil {
		return err
	}
	fromTS, err := queryInt(r, "from_ts", 0)
	if err != nil {
		return err
	}
	untilTS, err := queryInt(r, "until_ts", 0)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	orderBy := q.Get("order_by")
	if orderBy == "" {
		orderBy = "user_id"
	}
	switch orderBy {
	case "user_id", "displayname", "media_length", "media_count":
	default:
		return mxerr.InvalidParam("Unknown value for order_by: %s", orderBy)
	}
	dir := q.Get("dir")
	if dir != "" && dir != "f" && dir != "b" {
		return mxerr.InvalidParam("Unknown direction: %s", dir)
	}
	search := strings.ToLower(q.Get("search_term"))
	accs, err := a.host.Accounts().Accounts()
	if err != nil {
		return err
	}
	var list []map[string]any
	for _, acc := range accs {
		p, err := a.host.Accounts().Profile(acc.UserID)
		if err != nil {
			return err
		}
		var dn any
		if p.DisplayName != nil {
			dn = *p.DisplayName
		}
		if search != "" {
			d, _ := dn.(string)
			if !strings.Contains(strings.ToLower(acc.UserID), search) && !strings.Contains(strings.ToLower(d), search) {
				continue
			}
		}
		var count, size int64
		if a.cfg.Media != nil {
			if count, size, err = a.cfg.Media.UserMedia(acc.UserID, int64(fromTS), int64(untilTS)); err != nil {
				return err
			}
		}
		if count == 0 {
			continue // Synapse lists only users with media
		}
		list = append(list, map[string]any{"user_id": acc.UserID, "displayname": dn, "media_count": count, "media_length": size})
	}
	sort.SliceStable(list, func(i, j int) bool {
		less, equal := compareField(list[i][orderBy], list[j][orderBy])
		if equal {
			return list[i]["user_id"].(string) < list[j]["user_id"].(string)
		}
		return less
	})
	if dir == "b" {
		for i, j := 0, len(list)-1; i < j; i, j = i+1, j-1 {
			list[i], list[j] = list[j], list[i]
		}
	}
	total := len(list)
	page := []map[string]any{}
	if from < total {
		page = list[from:min(total, from+limit)]
	}
	out := map[string]any{"users": page, "total": total}
	if from+limit < total {
		out["next_token"] = from + limit
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// roomSizes is Synapse's GET /v1/statistics/database/rooms: the rooms by
// the bytes of their events, largest first.
func (a *API) roomSizes(w http.ResponseWriter, r *http.Request, c Caller) error {
	rv := a.host.Rooms()
	ids, err := rv.RoomIDs()
	if err != nil {
		return err
	}
	type size struct {
		RoomID        string `json:"room_id"`
		EstimatedSize int64  `json:"estimated_size"`
	}
	out := []size{}
	for _, id := range ids {
		var total int64
		from := uint64(0)
		for {
			page, err := rv.Timeline(id, from, true, 500, 0)
			if err != nil {
				return err
			}
			for _, te := range page {
				ev, err := rv.Event(te.EventID)
				if err != nil {
					return err
				}
				if ev != nil {
					total += int64(len(ev.JSON))
				}
			}
			if len(page) < 500 {
				break
			}
			from = page[len(page)-1].Offset
		}
		out = append(out, size{id, total})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].EstimatedSize > out[j].EstimatedSize })
	writeJSON(w, http.StatusOK, map[string]any{"rooms": out})
	return nil
}
