package thumbnail

import (
	"bytes"
	"encoding/base64"
	"image"
	"image/gif"
	"image/jpeg"
	"image/png"
	"testing"
)

func seeds(f *testing.F) {
	var p, j, g bytes.Buffer
	_ = png.Encode(&p, halves(40, 30))
	_ = jpeg.Encode(&j, halves(40, 30), nil)
	_ = gif.Encode(&g, image.NewPaletted(image.Rect(0, 0, 20, 20), []colorColor{white}), nil)
	w, _ := base64.StdEncoding.DecodeString(webp1x1)
	for _, s := range [][]byte{p.Bytes(), j.Bytes(), withOrientation(j.Bytes(), 6), g.Bytes(), w, nil, []byte("PK\x03\x04")} {
		f.Add(s)
	}
}

// FuzzMake: any bytes (uploads and remote media are untrusted) give a
// thumbnail no bigger than asked or an error, never a panic, and never a
// decode of more than the pixel budget.
func FuzzMake(f *testing.F) {
	seeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		res, err := Make(bytes.NewReader(data), 32, 24, Crop, 1<<20)
		if err == nil && (res.Width > 32 || res.Height > 24 || len(res.Data) == 0) {
			t.Fatalf("thumbnail %dx%d for a 32x24 crop", res.Width, res.Height)
		}
		res, err = Make(bytes.NewReader(data), 64, 64, Scale, 1<<20)
		if err == nil && (res.Width > 64 || res.Height > 64) {
			t.Fatalf("thumbnail %dx%d for a 64x64 scale", res.Width, res.Height)
		}
	})
}

// FuzzJPEGOrientation: the EXIF reader returns 1 to 8 whatever it reads.
func FuzzJPEGOrientation(f *testing.F) {
	seeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		if o := JPEGOrientation(bytes.NewReader(data)); o < 1 || o > 8 {
			t.Fatalf("orientation %d", o)
		}
	})
}
