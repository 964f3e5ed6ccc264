// Package adminstate folds what server administrators decided about rooms and
// the server out of the log: blocked rooms, room deletions and their
// outcome, history purges, server notices rooms and the server name the
// data was created under, and the latest point-in-time restore. (Decisions about users, such as locks and
// shadow bans, live with the accounts they concern.)
package adminstate

import (
	"encoding/binary"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
)

const (
	pBlocked    = 'b' // b room -> Block
	pDeletion   = 'd' // d deleteID -> facts.RoomDeleted
	pRoomDelete = 'D' // D room 0 deleteID -> ""
	pGone       = 'g' // g room -> "" (deleted with purge)
	pPurged     = 'p' // p room -> offset (8 bytes BE): history hidden up to it
	pPurge      = 'P' // P purgeID -> facts.HistoryPurged
	pNotices    = 'n' // n user -> room ID of the user's server notices room
	pServerName = 's' // s -> the server name of the data (the first recorded)
	pRestored   = 'r' // r -> cut, offset (8 bytes BE each) of the latest restore
)

// Block is a blocked room.
type Block struct {
	By string `json:"user_id,omitempty"`
}

// Projection is the admin read model.
type Projection struct{ cache *Cache }

// New returns the projection to register on the engine.
func New() *Projection { return &Projection{cache: newCache()} }

func (*Projection) Name() string { return "adminstate" }
func (*Projection) Version() int { return 2 } // 2: restores

// Apply folds a batch.
func (*Projection) Apply(w projections.Writer, entries []englog.Entry) error {
	for _, e := range entries {
		if err := apply(w, e); err != nil {
			return err
		}
	}
	return nil
}

func apply(w projections.Writer, e englog.Entry) error {
	switch e.Kind {
	case englog.KindRoomBlocked:
		var f facts.RoomBlocked
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		if !f.Blocked {
			return w.Delete(projections.Key(pBlocked, f.RoomID))
		}
		return projections.PutJSON(w, projections.Key(pBlocked, f.RoomID), Block{By: f.By})
	case englog.KindRoomDeleted:
		var f facts.RoomDeleted
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		if err := projections.PutJSON(w, projections.Key(pDeletion, f.DeleteID), f); err != nil {
			return err
		}
		if err := w.Set(projections.Key(pRoomDelete, f.RoomID, f.DeleteID), nil); err != nil {
			return err
		}
		if f.Purge && f.Status == StatusComplete {
			return w.Set(projections.Key(pGone, f.RoomID), nil)
		}
	case englog.KindHistoryPurged:
		var f facts.HistoryPurged
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		if err := projections.PutJSON(w, projections.Key(pPurge, f.PurgeID), f); err != nil {
			return err
		}
		old, err := purgedUpTo(w, f.RoomID)
		if err != nil || old >= f.UpTo {
			return err
		}
		return w.Set(projections.Key(pPurged, f.RoomID), binary.BigEndian.AppendUint64(nil, f.UpTo))
	case englog.KindServerNoticeRoom:
		var f facts.ServerNoticeRoom
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return w.Set(projections.Key(pNotices, f.UserID), []byte(f.RoomID))
	case englog.KindServerNameSet:
		var f facts.ServerNameSet
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		if _, ok, err := w.Get([]byte{pServerName}); err != nil || ok {
			return err // the first one recorded is the data's name
		}
		return w.Set([]byte{pServerName}, []byte(f.ServerName))
	case englog.KindRestored:
		var f facts.Restored
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return w.Set([]byte{pRestored}, binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, f.Cut), e.Offset))
	}
	return nil
}

// Deletion statuses (Synapse's names).
const (
	StatusComplete = "complete"
	StatusFailed   = "failed"
)

func purgedUpTo(r projections.Reader, roomID string) (uint64, error) {
	b, ok, err := r.Get(projections.Key(pPurged, roomID))
	if err != nil || !ok || len(b) != 8 {
		return 0, err
	}
	return binary.BigEndian.Uint64(b), nil
}

// View answers queries over a Reader.
type View struct {
	r     projections.Reader
	cache *Cache // nil: every query reads r (Projection.View sets it)
}

// NewView wraps a reader of this projection's keyspace, without the
// cache (snapshots, tools, other packages' occasional reads).
func NewView(r projections.Reader) View { return View{r: r} }

// Blocked returns the room's block, or nil when it is not blocked.
func (v View) Blocked(roomID string) (*Block, error) {
	return projections.GetJSON[Block](v.r, projections.Key(pBlocked, roomID))
}

// Restore is the latest point-in-time restore of the log: entries after
// Cut were dropped and the Restored fact is at Offset.
type Restore struct{ Cut, Offset uint64 }

// Restored returns the latest restore, or nil if the log was never
// restored.
func (v View) Restored() (*Restore, error) {
	if v.cache != nil {
		return v.cachedRestored()
	}
	return restored(v.r)
}

func restored(r projections.Reader) (*Restore, error) {
	b, ok, err := r.Get([]byte{pRestored})
	if err != nil || !ok || len(b) != 16 {
		return nil, err
	}
	return &Restore{Cut: binary.BigEndian.Uint64(b), Offset: binary.BigEndian.Uint64(b[8:])}, nil
}

// Gone reports whether the room was deleted with purge.
func (v View) Gone(roomID string) (bool, error) {
	_, ok, err := v.r.Get(projections.Key(pGone, roomID))
	return ok, err
}

// Deletion returns a room deletion's outcome, or nil.
func (v View) Deletion(deleteID string) (*facts.RoomDeleted, error) {
	return projections.GetJSON[facts.RoomDeleted](v.r, projections.Key(pDeletion, deleteID))
}

// RoomDeletions lists the deletions of a room, in delete ID order.
func (v View) RoomDeletions(roomID string) ([]facts.RoomDeleted, error) {
	lower := append(projections.Key(pRoomDelete, roomID), 0)
	it := v.r.Iter(lower, projections.PrefixEnd(lower))
	var ids []string
	for ok := it.First(); ok; ok = it.Next() {
		ids = append(ids, string(it.Key()[len(lower):]))
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	var out []facts.RoomDeleted
	for _, id := range ids {
		d, err := v.Deletion(id)
		if err != nil {
			return nil, err
		}
		if d != nil {
			out = append(out, *d)
		}
	}
	return out, nil
}

// PurgedUpTo is the log offset up to which the room's history is hidden
// (0: none).
func (v View) PurgedUpTo(roomID string) (uint64, error) {
	if v.cache != nil {
		return v.cachedPurgedUpTo(roomID)
	}
	return purgedUpTo(v.r, roomID)
}

// Purge returns a history purge, or nil.
func (v View) Purge(purgeID string) (*facts.HistoryPurged, error) {
	return projections.GetJSON[facts.HistoryPurged](v.r, projections.Key(pPurge, purgeID))
}

// NoticesRoom is the room ID of the user's server notices room ("" when
// none was created).
func (v View) NoticesRoom(userID string) (string, error) {
	b, ok, err := v.r.Get(projections.Key(pNotices, userID))
	if err != nil || !ok {
		return "", err
	}
	return string(b), nil
}

// ServerName is the server name recorded in the data ("" when none).
func (v View) ServerName() (string, error) {
	b, ok, err := v.r.Get([]byte{pServerName})
	if err != nil || !ok {
		return "", err
	}
	return string(b), nil
}
