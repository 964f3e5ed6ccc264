package media

import (
	"mime"
	"net/http"
	"strings"
)

// SetSecurityHeaders sets the headers every served media response carries
// (spec: content repository; Cross-Origin-Resource-Policy since 1.4).
func SetSecurityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cross-Origin-Resource-Policy", "cross-origin")
}

// inlineTypes are the spec's types safe to serve inline ("Serving inline
// content").
var inlineTypes = map[string]bool{
	"text/css": true, "text/plain": true, "text/csv": true, "application/json": true, "application/ld+json": true,
	"image/jpeg": true, "image/gif": true, "image/png": true, "image/apng": true, "image/webp": true, "image/avif": true,
	"video/mp4": true, "video/webm": true, "video/ogg": true, "video/quicktime": true,
	"audio/mp4": true, "audio/webm": true, "audio/aac": true, "audio/mpeg": true, "audio/ogg": true,
	"audio/wave": true, "audio/wav": true, "audio/x-wav": true, "audio/x-pn-wav": true, "audio/flac": true, "audio/x-flac": true,
}

// ContentDisposition is the header for content of type ct named name:
// inline for safe types, attachment otherwise, the name encoded per RFC
// 6266 (quoted ASCII, or filename*=utf-8”... for anything else).
func ContentDisposition(ct, name string) string {
	disp := "attachment"
	if mt, _, err := mime.ParseMediaType(ct); err == nil && inlineTypes[strings.ToLower(mt)] {
		disp = "inline"
	}
	if name == "" {
		return disp
	}
	if v := mime.FormatMediaType(disp, map[string]string{"filename": name}); v != "" {
		return v
	}
	return disp
}
