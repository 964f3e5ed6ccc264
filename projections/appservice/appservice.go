// Package appservice folds where each application service's delivery
// stands (KindAppserviceDelivered): the log offset it has been sent
// everything up to, and its latest transaction. api/appservice resumes
// from here after a restart or a leader change.
package appservice

import (
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
)

// Name is the projection's name.
const Name = "appservice"

const recCursor = 'c' // registration id -> Cursor

// Cursor is one appservice's delivery position.
type Cursor struct {
	Through   uint64 `json:"through"`
	LastTxn   string `json:"last_txn,omitempty"`
	Delivered int    `json:"delivered"` // transactions acknowledged
	Events    int    `json:"events"`    // events in them
}

// Projection is the appservice projection.
type Projection struct{}

// New returns the projection.
func New() *Projection { return &Projection{} }

func (*Projection) Name() string { return Name }
func (*Projection) Version() int { return 1 }

// Apply moves cursors forward; an acknowledgement older than the cursor
// (a retried transaction acknowledged twice) changes nothing.
func (*Projection) Apply(w projections.Writer, entries []englog.Entry) error {
	for _, e := range entries {
		if e.Kind != englog.KindAppserviceDelivered {
			continue
		}
		var f facts.AppserviceDelivered
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		k := projections.Key(recCursor, f.ID)
		c, err := projections.GetJSON[Cursor](w, k)
		if err != nil {
			return err
		}
		if c == nil {
			c = &Cursor{}
		} else if f.Through <= c.Through {
			continue
		}
		c.Through = f.Through
		if f.TxnID != "" {
			c.LastTxn = f.TxnID
			c.Delivered++
			c.Events += f.Events
		}
		if err := projections.PutJSON(w, k, c); err != nil {
			return err
		}
	}
	return nil
}

// View reads the projection.
type View struct{ r projections.Reader }

// NewView wraps a reader of the projection.
func NewView(r projections.Reader) View { return View{r} }

// Cursor is the appservice's position, nil before its first.
func (v View) Cursor(id string) (*Cursor, error) {
	return projections.GetJSON[Cursor](v.r, projections.Key(recCursor, id))
}
