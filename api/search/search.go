// Package search answers POST /_matrix/client/v3/search (spec:
// client-server-api, "Server Side Search") for the room_events category,
// over the search projection (projections/search). What it needs from the
// rest of the API (which rooms a user may search, whether they may see an
// event, how events are shown to clients) comes through Host.
package search

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	idx "github.com/engram-hs/engram/projections/search"
)

// Host is what the search handler needs from the client-server API.
type Host interface {
	// JoinedRooms are the rooms the user may search: those they are
	// joined to.
	JoinedRooms(userID string) ([]string, error)
	// Visible returns, for each hit, the event as the user is shown it,
	// or nil when history visibility hides it from them.
	Visible(userID string, hits []idx.Hit) ([]map[string]any, error)
	// Context returns events_before/events_after/start/end around an
	// event, with profile_info when asked.
	Context(userID, roomID, eventID string, before, after int, profiles bool) (map[string]any, error)
	// CurrentState returns the room's current state events.
	CurrentState(userID, roomID string) ([]map[string]any, error)
}

// Error is a Matrix error the caller writes as such.
type Error struct {
	Status int
	Code   string
	Msg    string
}

func (e *Error) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Msg) }

func badJSON(format string, a ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Code: "M_BAD_JSON", Msg: fmt.Sprintf(format, a...)}
}

// Request is the body of POST /search.
type Request struct {
	SearchCategories struct {
		RoomEvents *RoomEvents `json:"room_events"`
	} `json:"search_categories"`
}

// RoomEvents is the room_events category.
type RoomEvents struct {
	SearchTerm   *string  `json:"search_term"`
	Keys         []string `json:"keys"`
	Filter       *Filter  `json:"filter"`
	OrderBy      string   `json:"order_by"`
	EventContext *struct {
		BeforeLimit    *int `json:"before_limit"`
		AfterLimit     *int `json:"after_limit"`
		IncludeProfile bool `json:"include_profile"`
	} `json:"event_context"`
	IncludeState bool `json:"include_state"`
	Groupings    *struct {
		GroupBy []struct {
			Key string `json:"key"`
		} `json:"group_by"`
	} `json:"groupings"`
}

// Filter is the RoomEventFilter of a search.
type Filter struct {
	Limit      *int     `json:"limit"`
	Types      []string `json:"types"`
	NotTypes   []string `json:"not_types"`
	Senders    []string `json:"senders"`
	NotSenders []string `json:"not_senders"`
	Rooms      []string `json:"rooms"`
	NotRooms   []string `json:"not_rooms"`
}

const maxLimit = 100

// Handle runs one search for userID. body is the request body, nextBatch
// the next_batch query parameter.
func Handle(ctx context.Context, s *idx.Searcher, h Host, userID string, body []byte, nextBatch string) (any, error) {
	var req Request
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, badJSON("The body is not a valid search request: %v", err)
	}
	re := req.SearchCategories.RoomEvents
	if re == nil {
		// No category we know: an empty answer (spec: categories are
		// optional).
		return map[string]any{"search_categories": map[string]any{}}, nil
	}
	if re.SearchTerm == nil {
		return nil, &Error{Status: http.StatusBadRequest, Code: "M_MISSING_PARAM", Msg: "room_events needs a search_term"}
	}
	for _, k := range re.Keys {
		if !slices.Contains(idx.TextFields, k) {
			return nil, badJSON("Unknown search key %q: use content.body, content.name or content.topic", k)
		}
	}
	recent := false
	switch re.OrderBy {
	case "", "rank":
	case "recent":
		recent = true
	default:
		return nil, badJSON("order_by must be rank or recent")
	}
	groupByRoom, groupBySender := false, false
	if re.Groupings != nil {
		for _, g := range re.Groupings.GroupBy {
			switch g.Key {
			case "room_id":
				groupByRoom = true
			case "sender":
				groupBySender = true
			default:
				return nil, badJSON("Unknown group_by key %q: use room_id or sender", g.Key)
			}
		}
	}
	f := re.Filter
	if f == nil {
		f = &Filter{}
	}
	limit := 10
	if f.Limit != nil {
		if *f.Limit <= 0 {
			return nil, badJSON("filter.limit must be positive")
		}
		limit = min(*f.Limit, maxLimit)
	}

	joined, err := h.JoinedRooms(userID)
	if err != nil {
		return nil, err
	}
	rooms := joined[:0:0]
	for _, r := range joined {
		if (f.Rooms == nil || slices.Contains(f.Rooms, r)) && !slices.Contains(f.NotRooms, r) {
			rooms = append(rooms, r)
		}
	}
	q := idx.Query{
		Term: *re.SearchTerm, Rooms: rooms, Keys: re.Keys,
		Types: f.Types, NotTypes: f.NotTypes, Senders: f.Senders, NotSenders: f.NotSenders,
		Recent: recent, Limit: limit, Next: nextBatch, WithRoomCounts: groupByRoom,
	}

	// Hits the user may not see (history visibility) are dropped; keep
	// reading pages until one is full or the hits run out, within bounds.
	var (
		results []map[string]any
		hitsOut []idx.Hit
		res     *idx.Result
	)
	for pages := 0; len(results) < limit && pages < 20; pages++ {
		res, err = s.Search(ctx, q)
		if errors.Is(err, idx.ErrBadToken) {
			return nil, &Error{Status: http.StatusBadRequest, Code: "M_INVALID_PARAM", Msg: "next_batch is not a token this server gave"}
		}
		if err != nil {
			return nil, err
		}
		evs, err := h.Visible(userID, res.Hits)
		if err != nil {
			return nil, err
		}
		for i, ev := range evs {
			if ev == nil {
				continue
			}
			hit := res.Hits[i]
			r := map[string]any{"rank": hit.Rank, "result": ev}
			if re.EventContext != nil {
				before, after := 5, 5
				if re.EventContext.BeforeLimit != nil {
					before = max(0, min(*re.EventContext.BeforeLimit, maxLimit))
				}
				if re.EventContext.AfterLimit != nil {
					after = max(0, min(*re.EventContext.AfterLimit, maxLimit))
				}
				c, err := h.Context(userID, hit.RoomID, hit.EventID, before, after, re.EventContext.IncludeProfile)
				if err != nil {
					return nil, err
				}
				r["context"] = c
			}
			results = append(results, r)
			hitsOut = append(hitsOut, hit)
		}
		if res.Next == "" {
			break
		}
		q.Next = res.Next
	}
	out := map[string]any{
		"count":      res.Total,
		"highlights": highlights(*re.SearchTerm, res.Terms),
		"results":    nonNil(results),
	}
	if res.Next != "" {
		out["next_batch"] = res.Next
	}
	if re.IncludeState {
		state := map[string]any{}
		for _, h2 := range hitsOut {
			if _, done := state[h2.RoomID]; done {
				continue
			}
			st, err := h.CurrentState(userID, h2.RoomID)
			if err != nil {
				return nil, err
			}
			state[h2.RoomID] = st
		}
		out["state"] = state
	}
	if groupByRoom || groupBySender {
		groups := map[string]any{}
		if groupByRoom {
			groups["room_id"] = group(hitsOut, func(h idx.Hit) string { return h.RoomID }, res.Next)
		}
		if groupBySender {
			senders := map[string]string{}
			for i, r := range results {
				ev := r["result"].(map[string]any)
				senders[hitsOut[i].EventID] = senderOf(ev)
			}
			groups["sender"] = group(hitsOut, func(h idx.Hit) string { return senders[h.EventID] }, res.Next)
		}
		out["groups"] = groups
	}
	return map[string]any{"search_categories": map[string]any{"room_events": out}}, nil
}

func senderOf(ev map[string]any) string {
	switch s := ev["sender"].(type) {
	case string:
		return s
	case json.RawMessage:
		var v string
		_ = json.Unmarshal(s, &v)
		return v
	}
	return ""
}

// group lists the hits' event IDs per key, in result order; order is the
// rank of the group's best hit.
func group(hits []idx.Hit, key func(idx.Hit) string, next string) map[string]any {
	out := map[string]any{}
	order := 0
	for _, h := range hits {
		k := key(h)
		g, ok := out[k].(map[string]any)
		if !ok {
			order++
			g = map[string]any{"order": order, "results": []string{}}
			if next != "" {
				g["next_batch"] = next
			}
			out[k] = g
		}
		g["results"] = append(g["results"].([]string), h.EventID)
	}
	return out
}

// highlights are the words of the search term, and the index terms the
// term was analysed into (CJK bigrams), each once.
func highlights(term string, terms []string) []string {
	out := []string{}
	for _, w := range append(strings.Fields(term), terms...) {
		if !slices.Contains(out, w) {
			out = append(out, w)
		}
	}
	return out
}

func nonNil(r []map[string]any) []map[string]any {
	if r == nil {
		return []map[string]any{}
	}
	return r
}
