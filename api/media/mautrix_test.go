package media_test

import (
	"bytes"
	"context"
	"image"
	_ "image/jpeg"
	"io"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// A real client: mautrix-go uploads an avatar and an image, sets them, and
// another user downloads the original and a thumbnail through mautrix's
// authenticated media calls, decoding the thumbnail's dimensions.
func TestMautrixAvatarAndImage(t *testing.T) { eachBackend(t, testMautrixAvatarAndImage) }

func testMautrixAvatarAndImage(t *testing.T, be option) {
	ts := startServer(t, be)
	alice, bob := ts.register("alice"), ts.register("bob")
	ctx := context.Background()

	avatar := testPNG(t, 256, 256)
	up, err := alice.UploadMedia(ctx, mautrix.ReqUploadMedia{ContentBytes: avatar, ContentType: "image/png", FileName: "me.png"})
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.SetAvatarURL(ctx, up.ContentURI); err != nil {
		t.Fatal(err)
	}
	photo := testPNG(t, 1200, 900)
	async, err := alice.UploadAsync(ctx, mautrix.ReqUploadMedia{ContentBytes: photo, ContentType: "image/png", FileName: "photo.png"})
	if err != nil {
		t.Fatal(err)
	}
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Invite: []id.UserID{bob.UserID}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.SendMessageEvent(ctx, room.RoomID, event.EventMessage, &event.MessageEventContent{
		MsgType: event.MsgImage, Body: "photo.png", URL: async.ContentURI.CUString(),
		Info: &event.FileInfo{MimeType: "image/png", Width: 1200, Height: 900, Size: len(photo)},
	}); err != nil {
		t.Fatal(err)
	}

	// Bob reads alice's avatar from her profile and the image from the
	// room, as a client would.
	prof, err := bob.GetProfile(ctx, alice.UserID)
	if err != nil {
		t.Fatal(err)
	}
	if prof.AvatarURL != up.ContentURI {
		t.Fatalf("avatar_url %q, want %q", prof.AvatarURL, up.ContentURI)
	}
	got, err := bob.DownloadBytes(ctx, prof.AvatarURL)
	if err != nil || !bytes.Equal(got, avatar) {
		t.Fatalf("avatar download: %v (%d bytes)", err, len(got))
	}
	msgs, err := bob.Messages(ctx, room.RoomID, "", "", mautrix.DirectionBackward, nil, 20)
	if err != nil {
		t.Fatal(err)
	}
	var imageURL id.ContentURIString
	for _, ev := range msgs.Chunk {
		if ev.Type == event.EventMessage {
			_ = ev.Content.ParseRaw(ev.Type)
			if c := ev.Content.AsMessage(); c.MsgType == event.MsgImage {
				imageURL = c.URL
			}
		}
	}
	mxc, err := imageURL.Parse()
	if err != nil {
		t.Fatalf("image URL %q: %v", imageURL, err)
	}
	got, err = bob.DownloadBytes(ctx, mxc)
	if err != nil || !bytes.Equal(got, photo) {
		t.Fatalf("image download: %v (%d bytes)", err, len(got))
	}
	for _, c := range []struct {
		w, h         int
		method       string
		wantW, wantH int
	}{
		{320, 240, "scale", 320, 240},
		{96, 96, "crop", 96, 96},
	} {
		resp, err := bob.DownloadThumbnail(ctx, mxc, c.h, c.w, mautrix.DownloadThumbnailExtra{Method: c.method})
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cfg, _, err := image.DecodeConfig(bytes.NewReader(body))
		if err != nil || cfg.Width != c.wantW || cfg.Height != c.wantH {
			t.Errorf("thumbnail %dx%d %s: %dx%d (%v), want %dx%d", c.w, c.h, c.method, cfg.Width, cfg.Height, err, c.wantW, c.wantH)
		}
	}
	// And the avatar's 32x32 crop, as member lists show it.
	resp, err := bob.DownloadThumbnail(ctx, prof.AvatarURL, 32, 32, mautrix.DownloadThumbnailExtra{Method: "crop"})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if cfg, _, err := image.DecodeConfig(bytes.NewReader(body)); err != nil || cfg.Width != 32 || cfg.Height != 32 {
		t.Errorf("avatar thumbnail: %dx%d %v", cfg.Width, cfg.Height, err)
	}
}
