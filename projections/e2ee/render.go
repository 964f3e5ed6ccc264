package e2ee

import (
	"bytes"
	"encoding/json"
	"maps"
	"slices"
)

// Rendering keys as /keys/query (client or federation) answers them: the
// object as uploaded, with the added signatures the asker may see.

// Visible says whether signatures made by signer may be shown to the
// asker: the key owner's own always; others' only to whom they concern
// (the asker's own user-signing signatures, or a server's own users').
type Visible func(signer string) bool

// withSignatures returns the key object with the visible added
// signatures merged in, and extra fields (such as "unsigned") set.
func withSignatures(obj json.RawMessage, added map[string]map[string]string, visible Visible, set map[string]any) (json.RawMessage, error) {
	show := map[string]map[string]string{}
	for signer, sigs := range added {
		if visible(signer) {
			show[signer] = sigs
		}
	}
	if len(show) == 0 && len(set) == 0 {
		return obj, nil
	}
	if len(show) == 0 && len(obj) > 2 && obj[len(obj)-1] == '}' && !bytesContainsAny(obj, set) {
		// The common case (no added signatures): splice the fields in
		// instead of decoding and encoding the whole object.
		out := append([]byte(nil), obj[:len(obj)-1]...)
		for _, k := range slices.Sorted(maps.Keys(set)) {
			v, err := json.Marshal(set[k])
			if err != nil {
				return nil, err
			}
			kb, _ := json.Marshal(k)
			out = append(append(append(append(out, ','), kb...), ':'), v...)
		}
		return append(out, '}'), nil
	}
	var m map[string]any
	if err := json.Unmarshal(obj, &m); err != nil {
		return nil, err
	}
	if len(show) > 0 {
		sigs, _ := m["signatures"].(map[string]any)
		if sigs == nil {
			sigs = map[string]any{}
		}
		for _, signer := range slices.Sorted(maps.Keys(show)) {
			byKey, _ := sigs[signer].(map[string]any)
			if byKey == nil {
				byKey = map[string]any{}
			}
			for k, v := range show[signer] {
				byKey[k] = v
			}
			sigs[signer] = byKey
		}
		m["signatures"] = sigs
	}
	maps.Copy(m, set)
	return json.Marshal(m)
}

// QueryDevices renders the identity keys of a user's devices (all of them
// when wanted is empty), each with unsigned.device_display_name from
// displayName (which may return "").
func (v View) QueryDevices(user string, wanted []string, visible Visible, displayName func(device string) (string, error)) (map[string]json.RawMessage, error) {
	all, err := v.DeviceKeysOf(user)
	if err != nil {
		return nil, err
	}
	out := map[string]json.RawMessage{}
	for _, dev := range slices.Sorted(maps.Keys(all)) {
		if len(wanted) > 0 && !slices.Contains(wanted, dev) {
			continue
		}
		unsigned := map[string]any{}
		name, err := displayName(dev)
		if err != nil {
			return nil, err
		}
		if name != "" {
			unsigned["device_display_name"] = name
		}
		d := all[dev]
		b, err := withSignatures(d.Keys, d.Extra, visible, map[string]any{"unsigned": unsigned})
		if err != nil {
			return nil, err
		}
		out[dev] = b
	}
	return out, nil
}

// RenderedCrossSigning are a user's cross-signing keys as rendered for
// one asker; nil when absent.
type RenderedCrossSigning struct {
	Master, SelfSigning, UserSigning json.RawMessage
}

// QueryCrossSigning renders a user's cross-signing keys.
func (v View) QueryCrossSigning(user string, visible Visible) (RenderedCrossSigning, error) {
	cs, err := v.CrossSigning(user)
	if err != nil || cs == nil {
		return RenderedCrossSigning{}, err
	}
	render := func(k *CrossKey) (json.RawMessage, error) {
		if k == nil {
			return nil, nil
		}
		return withSignatures(k.Key, k.Extra, visible, nil)
	}
	var out RenderedCrossSigning
	if out.Master, err = render(cs.Master); err != nil {
		return out, err
	}
	if out.SelfSigning, err = render(cs.SelfSigning); err != nil {
		return out, err
	}
	out.UserSigning, err = render(cs.UserSigning)
	return out, err
}

// bytesContainsAny reports whether obj mentions one of the keys (then it
// may already hold the field, and the slow path replaces it).
func bytesContainsAny(obj []byte, set map[string]any) bool {
	for k := range set {
		if bytes.Contains(obj, []byte(`"`+k+`"`)) {
			return true
		}
	}
	return false
}
