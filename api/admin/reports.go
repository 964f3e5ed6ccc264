package admin

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/engram-hs/engram/internal/mxerr"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/reports"
)

// Event reports (Synapse's admin API over the reports projection).

func (a *API) reportEndpoints() []endpoint {
	return []endpoint{
		{"GET", "/v1/event_reports", a.listReports},
		{"GET", "/v1/event_reports/{reportId}", a.getReport},
		{"DELETE", "/v1/event_reports/{reportId}", a.deleteReport},
	}
}

// reportJSON is an event report in Synapse's shape; full adds the event.
func (a *API) reportJSON(rep reports.Report, full bool) (map[string]any, error) {
	out := map[string]any{
		"id": rep.ID, "received_ts": rep.ReceivedTS, "room_id": rep.RoomID, "event_id": rep.EventID,
		"user_id": rep.Reporter, "reason": nil, "score": nil, "sender": nil, "name": nil, "canonical_alias": nil,
	}
	if rep.Reason != "" {
		out["reason"] = rep.Reason
	}
	if rep.Score != nil {
		out["score"] = *rep.Score
	}
	rv := a.host.Rooms()
	var name struct {
		Name string `json:"name"`
	}
	if ok, err := stateContent(rv, rep.RoomID, "m.room.name", "", &name); err != nil {
		return nil, err
	} else if ok && name.Name != "" {
		out["name"] = name.Name
	}
	var alias struct {
		Alias string `json:"alias"`
	}
	if ok, err := stateContent(rv, rep.RoomID, "m.room.canonical_alias", "", &alias); err != nil {
		return nil, err
	} else if ok && alias.Alias != "" {
		out["canonical_alias"] = alias.Alias
	}
	ev, err := rv.Event(rep.EventID)
	if err != nil {
		return nil, err
	}
	if ev != nil {
		if pdu, err := ev.PDU(); err == nil {
			out["sender"] = pdu.Sender()
		}
		if full {
			out["event_json"] = json.RawMessage(ev.JSON)
		}
	}
	return out, nil
}

func (a *API) listReports(w http.ResponseWriter, r *http.Request, c Caller) error {
	from, err := queryInt(r, "from", 0)
	if err != nil {
		return err
	}
	limit, err := queryInt(r, "limit", 100)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	dir := q.Get("dir")
	if dir == "" {
		dir = "b"
	}
	if dir != "f" && dir != "b" {
		return mxerr.InvalidParam("Unknown direction: %q (use f or b)", dir)
	}
	all, err := a.host.Reports().List(0, 1<<30, false)
	if err != nil {
		return err
	}
	var matching []reports.Report
	for _, rep := range all {
		if rep.EventID == "" {
			continue // a report about a room or a user
		}
		if rid := q.Get("room_id"); rid != "" && rep.RoomID != rid {
			continue
		}
		if uid := q.Get("user_id"); uid != "" && rep.Reporter != uid {
			continue
		}
		matching = append(matching, rep)
	}
	if dir == "b" {
		for i, j := 0, len(matching)-1; i < j; i, j = i+1, j-1 {
			matching[i], matching[j] = matching[j], matching[i]
		}
	}
	total := len(matching)
	page := []map[string]any{}
	for i := from; i < total && i < from+limit; i++ {
		m, err := a.reportJSON(matching[i], false)
		if err != nil {
			return err
		}
		page = append(page, m)
	}
	out := map[string]any{"event_reports": page, "total": total}
	if from+limit < total {
		out["next_token"] = from + limit
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (a *API) report(r *http.Request) (*reports.Report, error) {
	id, err := strconv.ParseUint(r.PathValue("reportId"), 10, 64)
	if err != nil {
		return nil, mxerr.InvalidParam("The report_id parameter must be a string representing a positive integer.")
	}
	rep, err := a.host.Reports().Report(id)
	if err != nil {
		return nil, err
	}
	if rep == nil || rep.EventID == "" {
		return nil, mxerr.NotFound("Event report not found")
	}
	return rep, nil
}

func (a *API) getReport(w http.ResponseWriter, r *http.Request, c Caller) error {
	rep, err := a.report(r)
	if err != nil {
		return err
	}
	m, err := a.reportJSON(*rep, true)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, m)
	return nil
}

func (a *API) deleteReport(w http.ResponseWriter, r *http.Request, c Caller) error {
	rep, err := a.report(r)
	if err != nil {
		return err
	}
	if err := a.commit(r.Context(), c, "delete_event_report", strconv.FormatUint(rep.ID, 10), map[string]any{"room_id": rep.RoomID, "event_id": rep.EventID},
		facts.MustEncode(englog.KindReportDeleted, facts.ReportDeleted{ReportID: rep.ID})); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}
