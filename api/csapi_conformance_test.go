package api_test

import (
	"testing"
)

// TestFilterRefusesMalformedIDs: a filter naming rooms or senders by
// something that is not a room or user ID is refused with 400, and a
// well-formed one is still stored.
func TestFilterRefusesMalformedIDs(t *testing.T) {
	ts := startServer(t)
	alice := ts.register("alice")
	path := "/_matrix/client/v3/user/" + alice.UserID.String() + "/filter"
	for _, f := range []map[string]any{
		{"room": map[string]any{"timeline": map[string]any{"rooms": []string{"not_a_room_id"}}}},
		{"room": map[string]any{"timeline": map[string]any{"senders": []string{"not_a_sender_id"}}}},
		{"room": map[string]any{"state": map[string]any{"not_senders": []string{"@nohost"}}}},
		{"room": map[string]any{"not_rooms": []string{"#alias:example.org"}}},
		{"presence": map[string]any{"senders": []string{"!room:example.org"}}},
	} {
		if code, body := ts.do("POST", path, alice.AccessToken, f); code != 400 || body["errcode"] != "M_INVALID_PARAM" {
			t.Errorf("filter %v: %d %v, want 400 M_INVALID_PARAM", f, code, body)
		}
	}
	ok := map[string]any{"room": map[string]any{
		"rooms":    []string{"!abc:example.org"},
		"timeline": map[string]any{"senders": []string{alice.UserID.String()}, "not_rooms": []string{"!def:example.org"}},
	}}
	if code, body := ts.do("POST", path, alice.AccessToken, ok); code != 200 || body["filter_id"] == nil {
		t.Errorf("a well-formed filter: %d %v, want 200 with filter_id", code, body)
	}
}

// TestInvalidUTF8IsNotJSON: a body with invalid UTF-8 is refused as
// M_NOT_JSON before /register looks at authentication.
func TestInvalidUTF8IsNotJSON(t *testing.T) {
	ts := startServer(t)
	if code, body := ts.do("POST", "/_matrix/client/v3/register", "", []byte("{ \"test\":\"a\x81\" }")); code != 400 || body["errcode"] != "M_NOT_JSON" {
		t.Errorf("invalid UTF-8 to /register: %d %v, want 400 M_NOT_JSON", code, body)
	}
	if code, body := ts.do("POST", "/_matrix/client/v3/register", "", []byte(`{"test":"a\u00e9"}`)); code != 401 || body["flows"] == nil {
		t.Errorf("valid UTF-8 to /register: %d %v, want 401 with flows", code, body)
	}
}
