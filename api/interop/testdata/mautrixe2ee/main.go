// Command mautrixe2ee drives mautrix-go's crypto (through cryptohelper,
// with the pure-Go goolm) against a running homeserver: Alice and Bob talk
// in an encrypted room and decrypt each other, Alice bootstraps
// cross-signing (uploading with UIA where the spec asks) and signs her
// device, Bob's second device receives the room key of Alice's next
// message, and one-time keys are handed out once each.
//
// It is its own module (built with -tags goolm and CGO_ENABLED=0 by
// api/interop's TestMautrixE2EE) so that Engram's go.mod carries none of
// the crypto stack.
//
// Usage: mautrixe2ee HOMESERVER_URL RUN_ID. Prints "MAUTRIX E2EE OK" and
// exits 0, or says which step failed and exits 1. With
// `mautrixe2ee federated URL_A URL_B RUN_ID` it runs the flow of
// federated.go across two servers instead.
package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/cryptohelper"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

const password = "correct horse battery staple"

func fail(step string, err any) {
	fmt.Printf("FAIL %s: %v\n", step, err)
	os.Exit(1)
}

// device is one logged-in client with its crypto and the decrypted
// messages it received.
type device struct {
	name   string
	cli    *mautrix.Client
	helper *cryptohelper.CryptoHelper
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	received map[string]bool
}

func register(ctx context.Context, url, user string) {
	cli, _ := mautrix.NewClient(url, "", "")
	if _, err := cli.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: user, Password: password}); err != nil {
		fail("register "+user+" at "+url, err)
	}
}

func login(ctx context.Context, url, user, name string) *device {
	cli, err := mautrix.NewClient(url, "", "")
	if err != nil {
		fail("client "+name, err)
	}
	cli.Log = zerolog.New(os.Stderr).Level(zerolog.WarnLevel).With().Str("device", name).Logger()
	if _, err := cli.Login(ctx, &mautrix.ReqLogin{
		Type: mautrix.AuthTypePassword, Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: user},
		Password: password, InitialDeviceDisplayName: name, StoreCredentials: true,
	}); err != nil {
		fail("login "+name, err)
	}
	cli.StateStore = mautrix.NewMemoryStateStore()
	helper, err := cryptohelper.NewCryptoHelper(cli, []byte("pickle-"+name), crypto.NewMemoryStore(nil))
	if err != nil {
		fail("crypto helper "+name, err)
	}
	d := &device{name: name, cli: cli, helper: helper, received: map[string]bool{}, done: make(chan struct{})}
	syncer := cli.Syncer.(*mautrix.DefaultSyncer)
	// An unmanaged crypto store leaves the room state to us: the machine
	// reads members and m.room.encryption from it.
	syncer.OnEvent(cli.StateStoreSyncHandler)
	syncer.OnEventType(event.EventMessage, func(ctx context.Context, evt *event.Event) {
		if !evt.Mautrix.WasEncrypted {
			return
		}
		if c, ok := evt.Content.Parsed.(*event.MessageEventContent); ok {
			d.mu.Lock()
			d.received[c.Body] = true
			d.mu.Unlock()
		}
	})
	if err := helper.Init(ctx); err != nil {
		fail("crypto init "+name, err)
	}
	cli.Crypto = helper
	return d
}

func (d *device) start() {
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	go func() {
		defer close(d.done)
		if err := d.cli.SyncWithContext(ctx); err != nil && ctx.Err() == nil {
			fmt.Printf("sync of %s stopped: %v\n", d.name, err)
		}
	}()
}

func (d *device) stop() {
	if d.cancel != nil {
		d.cancel()
		<-d.done
		d.cancel = nil
	}
}

func waitFor(step string, cond func() bool) {
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			fail(step, "timed out")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (d *device) got(body string) func() bool {
	return func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.received[body]
	}
}

func send(ctx context.Context, d *device, room id.RoomID, body string) {
	if _, err := d.cli.SendMessageEvent(ctx, room, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: body}); err != nil {
		fail(d.name+" sends "+body, err)
	}
}

func main() {
	if len(os.Args) == 5 && os.Args[1] == "federated" {
		federated(os.Args[2], os.Args[3], os.Args[4])
		return
	}
	if len(os.Args) != 3 {
		fail("usage", "mautrixe2ee HOMESERVER_URL RUN_ID | mautrixe2ee federated URL_A URL_B RUN_ID")
	}
	url, run := os.Args[1], os.Args[2]
	ctx := context.Background()
	aliceName, bobName := "malice"+run, "mbob"+run
	for _, name := range []string{aliceName, bobName} {
		register(ctx, url, name)
	}
	alice := login(ctx, url, aliceName, "alice")
	bob := login(ctx, url, bobName, "bob")

	// Cross-signing: mautrix uploads the keys (UIA with the password when
	// the server asks), then signs its own device and master key.
	mach := alice.helper.Machine()
	if _, _, err := mach.GenerateAndUploadCrossSigningKeysWithPassword(ctx, password, "passphrase"); err != nil {
		fail("alice bootstraps cross-signing", err)
	}
	if err := mach.SignOwnMasterKey(ctx); err != nil {
		fail("alice signs her master key", err)
	}
	own := mach.OwnIdentity()
	if err := mach.SignOwnDevice(ctx, own); err != nil {
		fail("alice signs her device", err)
	}

	room, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{
		Preset: "private_chat", Invite: []id.UserID{bob.cli.UserID},
		InitialState: []*event.Event{{Type: event.StateEncryption, Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}}}},
	})
	if err != nil {
		fail("create encrypted room", err)
	}
	if _, err := bob.cli.JoinRoomByID(ctx, room.RoomID); err != nil {
		fail("bob joins", err)
	}
	alice.start()
	bob.start()
	waitFor("alice sees bob joined", func() bool {
		m, _ := alice.cli.StateStore.GetMember(ctx, room.RoomID, bob.cli.UserID)
		enc, _ := alice.cli.StateStore.IsEncrypted(ctx, room.RoomID)
		return m != nil && m.Membership == event.MembershipJoin && enc
	})
	send(ctx, alice, room.RoomID, "hello bob")
	waitFor("bob decrypts alice", bob.got("hello bob"))
	send(ctx, bob, room.RoomID, "hello alice")
	waitFor("alice decrypts bob", alice.got("hello alice"))

	// Bob sees Alice's device as cross-signed by her.
	dev, err := bob.helper.Machine().GetOrFetchDevice(ctx, alice.cli.UserID, alice.cli.DeviceID)
	if err != nil {
		fail("bob fetches alice's device", err)
	}
	if trust := bob.helper.Machine().ResolveTrust(dev); trust != id.TrustStateCrossSignedTOFU && trust != id.TrustStateCrossSignedVerified {
		fail("alice's device cross-signed as bob sees it", trust)
	}

	// Bob's second device gets the key of Alice's next message.
	bob2 := login(ctx, url, bobName, "bob2")
	bob2.start()
	waitFor("alice learns of bob2", func() bool {
		devs, err := alice.helper.Machine().CryptoStore.GetDevices(ctx, bob.cli.UserID)
		return err == nil && devs[bob2.cli.DeviceID] != nil
	})
	send(ctx, alice, room.RoomID, "hello both")
	waitFor("bob2 decrypts with the shared room key", bob2.got("hello both"))
	waitFor("bob decrypts the same message", bob.got("hello both"))

	// One-time keys: with bob2 not syncing (so not topping up), two claims
	// get two different keys and the count drops by two.
	bob2.stop()
	count := func() int {
		resp, err := bob2.cli.UploadKeys(ctx, &mautrix.ReqUploadKeys{})
		if err != nil {
			fail("count bob2's keys", err)
		}
		return resp.OneTimeKeyCounts.SignedCurve25519
	}
	before := count()
	if before < 2 {
		fail("bob2 has one-time keys", before)
	}
	claimed := map[id.KeyID]bool{}
	for range 2 {
		resp, err := alice.cli.ClaimKeys(ctx, &mautrix.ReqClaimKeys{OneTimeKeys: mautrix.OneTimeKeysRequest{
			bob.cli.UserID: {bob2.cli.DeviceID: id.KeyAlgorithmSignedCurve25519},
		}})
		if err != nil {
			fail("claim", err)
		}
		for k := range resp.OneTimeKeys[bob.cli.UserID][bob2.cli.DeviceID] {
			claimed[k] = true
		}
	}
	if len(claimed) != 2 {
		fail("two claims got two different keys", claimed)
	}
	if after := count(); after != before-2 {
		fail("count after two claims", fmt.Sprintf("%d before, %d after", before, after))
	}
	alice.stop()
	bob.stop()
	fmt.Println("MAUTRIX E2EE OK")
}
