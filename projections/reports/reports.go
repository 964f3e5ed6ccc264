// Package reports folds content reports (of events, rooms and users) out
// of the log, for server administrators: "every report ever filed, by
// report ID, oldest first".
//
// A report's ID is the log offset of the entry that filed it, and its
// time is that entry's time: both are facts of the log.
package reports

import (
	"encoding/binary"
	"encoding/json"
	"fmt"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
)

const (
	pReport = 'r' // r offset(8 BE) -> Report
	pCount  = 'n' // n -> number of reports (8 BE)
)

// Report is one filed report.
type Report struct {
	ID           uint64 `json:"id"`
	ReceivedTS   int64  `json:"received_ts"`
	Reporter     string `json:"reporter"`
	RoomID       string `json:"room_id,omitempty"`
	EventID      string `json:"event_id,omitempty"`
	TargetUserID string `json:"target_user_id,omitempty"`
	Reason       string `json:"reason,omitempty"`
	Score        *int   `json:"score,omitempty"`
}

// Projection is the reports read model.
type Projection struct{}

// New returns the projection.
func New() *Projection { return &Projection{} }

func (*Projection) Name() string { return "reports" }
func (*Projection) Version() int { return 1 }

func reportKey(id uint64) []byte { return binary.BigEndian.AppendUint64([]byte{pReport}, id) }

// Apply folds a batch.
func (*Projection) Apply(w projections.Writer, entries []englog.Entry) error {
	added, deleted := uint64(0), uint64(0)
	for _, e := range entries {
		if e.Kind == englog.KindReportDeleted {
			var f facts.ReportDeleted
			if err := facts.Decode(e, &f); err != nil {
				return err
			}
			if _, ok, err := w.Get(reportKey(f.ReportID)); err != nil {
				return err
			} else if ok {
				if err := w.Delete(reportKey(f.ReportID)); err != nil {
					return err
				}
				deleted++
			}
			continue
		}
		if e.Kind != englog.KindReportFiled {
			continue
		}
		var f facts.ReportFiled
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		b, err := json.Marshal(Report{ID: e.Offset, ReceivedTS: e.Time, Reporter: f.UserID, RoomID: f.RoomID,
			EventID: f.EventID, TargetUserID: f.TargetUserID, Reason: f.Reason, Score: f.Score})
		if err != nil {
			return err
		}
		if err := w.Set(reportKey(e.Offset), b); err != nil {
			return err
		}
		added++
	}
	if added == 0 && deleted == 0 {
		return nil
	}
	n, err := count(w)
	if err != nil {
		return err
	}
	return w.Set([]byte{pCount}, binary.BigEndian.AppendUint64(nil, n+added-deleted))
}

func count(r projections.Reader) (uint64, error) {
	b, ok, err := r.Get([]byte{pCount})
	if err != nil || !ok {
		return 0, err
	}
	if len(b) != 8 {
		return 0, fmt.Errorf("reports: corrupt count (%d bytes)", len(b))
	}
	return binary.BigEndian.Uint64(b), nil
}

// View answers queries.
type View struct{ r projections.Reader }

// NewView wraps a reader of this projection's keyspace.
func NewView(r projections.Reader) View { return View{r} }

// Count is the number of reports filed.
func (v View) Count() (uint64, error) { return count(v.r) }

// Report returns one report, or nil.
func (v View) Report(id uint64) (*Report, error) {
	b, ok, err := v.r.Get(reportKey(id))
	if err != nil || !ok {
		return nil, err
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		return nil, fmt.Errorf("reports: corrupt report %d: %w", id, err)
	}
	return &rep, nil
}

// List returns up to limit reports with IDs greater than after (oldest
// first), or, when newestFirst, with IDs less than after (0: from the
// newest).
func (v View) List(after uint64, limit int, newestFirst bool) ([]Report, error) {
	it := v.r.Iter([]byte{pReport}, []byte{pReport + 1})
	var out []Report
	var ok bool
	switch {
	case !newestFirst:
		ok = it.SeekGE(reportKey(after + 1))
	case after == 0:
		ok = it.Last()
	default:
		ok = it.SeekLT(reportKey(after))
	}
	for ; ok && len(out) < limit; ok = step(it, newestFirst) {
		var rep Report
		if err := json.Unmarshal(it.Value(), &rep); err != nil {
			it.Close()
			return nil, fmt.Errorf("reports: corrupt report: %w", err)
		}
		out = append(out, rep)
	}
	return out, it.Close()
}

func step(it projections.Iterator, backwards bool) bool {
	if backwards {
		return it.Prev()
	}
	return it.Next()
}
