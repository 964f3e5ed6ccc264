package log

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"
)

// pduGen makes realistic m.room.message PDUs in canonical JSON (sorted
// keys, no spaces): random hashes, signatures and event IDs, auth events
// shared within a room, prev_events chaining, varied message text.
type pduGen struct {
	rng   *rand.Rand
	rooms []pduRoom
	ts    int64
}

type pduRoom struct {
	id      string
	auth    []string
	last    string
	depth   int
	senders []string
}

var words = strings.Fields(`the a to and of in is it you that he was for on are with as I his they be at one have this from or had by
hot word but what some we can out other were all there when up use your how said an each she which do their time if will way about many
then them write would like so these her long make thing see him two has look more day could go come did number sound no most people my
over know water than call first who may down side been now find any new work part take get place made live where after back little only
round man year came show every good me give our under name very through just form sentence great think say help low line differ turn
cause much mean before move right boy old too same tell does set three want air well also play small end put home read hand port large
spell add even land here must big high such follow act why ask men change went light kind off need house picture try us again animal
point mother world near build self earth father lunch tomorrow meeting deploy server matrix room sync federation ok thanks lol :) 👍`)

func randB64(r *rand.Rand, rawBytes int) string {
	b := make([]byte, rawBytes)
	r.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func newPDUGen(seed int64) *pduGen {
	g := &pduGen{rng: rand.New(rand.NewSource(seed)), ts: 1_700_000_000_000}
	for i := 0; i < 20; i++ {
		room := pduRoom{id: fmt.Sprintf("!%s:example.org", randB64(g.rng, 12)), depth: 10 + g.rng.Intn(1000)}
		for j := 0; j < 3; j++ {
			room.auth = append(room.auth, "$"+randB64(g.rng, 32))
		}
		room.last = "$" + randB64(g.rng, 32)
		for j := 0; j < 2+g.rng.Intn(8); j++ {
			room.senders = append(room.senders, fmt.Sprintf("@user%d:%s", g.rng.Intn(10000), []string{"example.org", "matrix.org", "chat.example.com"}[g.rng.Intn(3)]))
		}
		g.rooms = append(g.rooms, room)
	}
	return g
}

func (g *pduGen) next() []byte {
	r := &g.rooms[g.rng.Intn(len(g.rooms))]
	n := 1 + g.rng.Intn(30)
	if g.rng.Intn(10) == 0 {
		n += g.rng.Intn(150)
	}
	ws := make([]string, n)
	for i := range ws {
		ws[i] = words[g.rng.Intn(len(words))]
	}
	g.ts += int64(g.rng.Intn(5000))
	r.depth++
	sender := r.senders[g.rng.Intn(len(r.senders))]
	server := sender[strings.IndexByte(sender, ':')+1:]
	// encoding/json sorts map keys and emits no spaces: canonical enough
	// for ASCII-safe content (HTML escaping off below).
	pdu := map[string]any{
		"auth_events":      r.auth,
		"content":          map[string]any{"body": strings.Join(ws, " "), "msgtype": "m.text"},
		"depth":            r.depth,
		"hashes":           map[string]string{"sha256": randB64(g.rng, 32)},
		"origin_server_ts": g.ts,
		"prev_events":      []string{r.last},
		"room_id":          r.id,
		"sender":           sender,
		"signatures":       map[string]any{server: map[string]string{"ed25519:a_" + server[:4]: randB64(g.rng, 64)}},
		"type":             "m.room.message",
	}
	var sb strings.Builder
	enc := json.NewEncoder(&sb)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(pdu); err != nil {
		panic(err)
	}
	r.last = "$" + randB64(g.rng, 32)
	return []byte(strings.TrimSuffix(sb.String(), "\n"))
}

func quietNode(b *testing.B, dir string) *Node {
	b.Helper()
	n, err := Open(Config{Dir: dir, Logger: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// BenchmarkAppend measures group commit: b.N entries spread over the
// appenders, each Append one entry and one wait for durability.
func BenchmarkAppend(b *testing.B) {
	for _, appenders := range []int{1, 16, 256} {
		b.Run(fmt.Sprintf("appenders=%d", appenders), func(b *testing.B) {
			n := quietNode(b, b.TempDir())
			defer n.Close()
			g := newPDUGen(1)
			payloads := make([][]byte, 512)
			for i := range payloads {
				payloads[i] = g.next()
			}
			syncs0 := n.store.syncs.Load()
			var next sync.WaitGroup
			work := make(chan int, appenders)
			b.ResetTimer()
			for a := 0; a < appenders; a++ {
				next.Add(1)
				go func() {
					defer next.Done()
					for i := range work {
						if _, err := n.Append(context.Background(), Proposal{Kind: KindPDU, Payload: payloads[i%len(payloads)]}); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			for i := 0; i < b.N; i++ {
				work <- i
			}
			close(work)
			next.Wait()
			b.StopTimer()
			secs := b.Elapsed().Seconds()
			syncs := n.store.syncs.Load() - syncs0
			line, _ := json.Marshal(map[string]any{
				"bench": "append", "appenders": appenders, "entries": b.N,
				"entries_per_s":             float64(b.N) / secs,
				"durable_writes_per_s":      float64(syncs) / secs,
				"entries_per_durable_write": float64(b.N) / float64(max(syncs, 1)),
			})
			fmt.Println(string(line))
			b.ReportMetric(float64(b.N)/secs, "entries/s")
		})
	}
}

// BenchmarkDiskRatio reports bytes on disk per m.room.message entry over
// its canonical JSON size, after a flush and full compaction. It measures
// once per run whatever b.N is (-benchtime does not apply): the result is a
// size, not a speed.
func BenchmarkDiskRatio(b *testing.B) {
	const entries = 20000
	dir := b.TempDir()
	n := quietNode(b, dir)
	g := newPDUGen(7)
	var jsonBytes int64
	var wg sync.WaitGroup
	ch := make(chan []byte, 64)
	for a := 0; a < 16; a++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range ch {
				if _, err := n.Append(context.Background(), Proposal{Kind: KindPDU, Payload: p}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	for k := 0; k < entries; k++ {
		p := g.next()
		jsonBytes += int64(len(p))
		ch <- p
	}
	close(ch)
	wg.Wait()
	db := n.DB()
	if err := db.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := db.Compact(context.Background(), []byte{0}, []byte{0xff}, true); err != nil {
		b.Fatal(err)
	}
	logBytes, err := db.EstimateDiskUsage(prefixEntry, prefixEnd(prefixEntry))
	if err != nil {
		b.Fatal(err)
	}
	raftBytes, _ := db.EstimateDiskUsage(prefixRaft, prefixEnd(prefixRaft))
	n.Close()
	var dirBytes int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && strings.HasSuffix(fi.Name(), ".sst") {
			dirBytes += fi.Size()
		}
		return nil
	})
	line, _ := json.Marshal(map[string]any{
		"bench": "disk_ratio", "entries": entries,
		"avg_json_bytes":               float64(jsonBytes) / entries,
		"event_log_bytes_per_entry":    float64(logBytes) / entries,
		"ratio":                        float64(logBytes) / float64(jsonBytes),
		"raft_log_bytes":               raftBytes,
		"all_sst_bytes_per_json_bytes": float64(dirBytes) / float64(jsonBytes),
	})
	fmt.Println(string(line))
	b.ReportMetric(float64(logBytes)/float64(jsonBytes), "ratio")
}
