package main

import (
	"context"
	"fmt"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// federated: Alice on server A and Bob on server B, each with mautrix's
// crypto, in an encrypted direct chat that Alice creates with Bob in
// invite. Everything E2EE crosses the federation: Bob's server asks
// Alice's for her device keys (user/keys/query) and one-time keys
// (user/keys/claim), the Olm-encrypted room keys travel as
// m.direct_to_device, a new device on either side reaches the other
// through m.device_list_update, and Alice's cross-signing keys and
// signatures through m.signing_key_update and m.device_list_update.
func federated(urlA, urlB, run string) {
	ctx := context.Background()
	aliceName, bobName := "falice"+run, "fbob"+run
	register(ctx, urlA, aliceName)
	register(ctx, urlB, bobName)
	alice := login(ctx, urlA, aliceName, "alice")
	bob := login(ctx, urlB, bobName, "bob")

	room, err := alice.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{
		Preset: "trusted_private_chat", IsDirect: true, RoomVersion: "11", Invite: []id.UserID{bob.cli.UserID},
		InitialState: []*event.Event{{Type: event.StateEncryption, Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}}}},
	})
	if err != nil {
		fail("alice creates an encrypted DM inviting bob of the other server", err)
	}
	if _, err := bob.cli.JoinRoomByID(ctx, room.RoomID); err != nil {
		fail("bob joins over federation", err)
	}
	alice.start()
	bob.start()
	defer alice.stop()
	defer bob.stop()
	for _, d := range []*device{alice, bob} {
		other := map[*device]*device{alice: bob, bob: alice}[d]
		waitFor(d.name+" sees "+other.name+" joined the encrypted room", func() bool {
			m, _ := d.cli.StateStore.GetMember(ctx, room.RoomID, other.cli.UserID)
			enc, _ := d.cli.StateStore.IsEncrypted(ctx, room.RoomID)
			return m != nil && m.Membership == event.MembershipJoin && enc
		})
	}
	send(ctx, alice, room.RoomID, "hello bob")
	waitFor("bob decrypts alice across servers", bob.got("hello bob"))
	send(ctx, bob, room.RoomID, "hello alice")
	waitFor("alice decrypts bob across servers", alice.got("hello alice"))

	// Alice cross-signs now that the servers share a room: B learns of
	// her keys from the EDUs, and Bob's client sees her device signed.
	mach := alice.helper.Machine()
	if _, _, err := mach.GenerateAndUploadCrossSigningKeysWithPassword(ctx, password, "passphrase"); err != nil {
		fail("alice bootstraps cross-signing", err)
	}
	if err := mach.SignOwnMasterKey(ctx); err != nil {
		fail("alice signs her master key", err)
	}
	if err := mach.SignOwnDevice(ctx, mach.OwnIdentity()); err != nil {
		fail("alice signs her device", err)
	}
	waitFor("bob sees alice's device cross-signed", func() bool {
		dev, err := bob.helper.Machine().GetOrFetchDevice(ctx, alice.cli.UserID, alice.cli.DeviceID)
		if err != nil {
			return false
		}
		trust := bob.helper.Machine().ResolveTrust(dev)
		return trust == id.TrustStateCrossSignedTOFU || trust == id.TrustStateCrossSignedVerified
	})

	// A new device on B: Alice's client learns of it through the device
	// list update, and it decrypts Alice's next message.
	bob2 := login(ctx, urlB, bobName, "bob2")
	bob2.start()
	defer bob2.stop()
	waitFor("alice learns of bob2 over federation", knows(ctx, alice, bob.cli.UserID, bob2.cli.DeviceID))
	send(ctx, alice, room.RoomID, "hello both bobs")
	waitFor("bob2 decrypts alice", bob2.got("hello both bobs"))
	waitFor("bob decrypts the same message", bob.got("hello both bobs"))

	// And the other way: a new device on A decrypts Bob's next message.
	alice2 := login(ctx, urlA, aliceName, "alice2")
	alice2.start()
	defer alice2.stop()
	waitFor("bob learns of alice2 over federation", knows(ctx, bob, alice.cli.UserID, alice2.cli.DeviceID))
	send(ctx, bob, room.RoomID, "hello both alices")
	waitFor("alice2 decrypts bob", alice2.got("hello both alices"))
	waitFor("alice decrypts the same message", alice.got("hello both alices"))
	fmt.Println("MAUTRIX FEDERATED E2EE OK")
}

// knows: d's crypto store has user's device.
func knows(ctx context.Context, d *device, user id.UserID, dev id.DeviceID) func() bool {
	return func() bool {
		devs, err := d.helper.Machine().CryptoStore.GetDevices(ctx, user)
		return err == nil && devs[dev] != nil
	}
}
