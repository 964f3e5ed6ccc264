package thumbnail

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image/jpeg"
	"image/png"
	"os"
	"testing"
	"time"

	"github.com/engram-hs/engram/bench/report"
)

// BenchmarkThumbnail: thumbnails per second of a 1600x1200 photo-sized
// JPEG and PNG at the spec's sizes (decode, crop/scale, encode). Prints
// one JSON line per case.
func BenchmarkThumbnail(b *testing.B) {
	img := halves(1600, 1200)
	var j, p bytes.Buffer
	_ = jpeg.Encode(&j, img, &jpeg.Options{Quality: 85})
	_ = png.Encode(&p, img)
	for _, c := range []struct {
		name   string
		data   []byte
		w, h   int
		method string
	}{
		{"jpeg_96_crop", j.Bytes(), 96, 96, Crop},
		{"jpeg_320x240_scale", j.Bytes(), 320, 240, Scale},
		{"png_96_crop", p.Bytes(), 96, 96, Crop},
	} {
		b.Run(c.name, func(b *testing.B) {
			start := time.Now()
			for i := 0; i < b.N; i++ {
				if _, err := Make(bytes.NewReader(c.data), c.w, c.h, c.method, 32<<20); err != nil {
					b.Fatal(err)
				}
			}
			el := time.Since(start).Seconds()
			line, _ := json.Marshal(map[string]any{"bench": "thumbnail", "case": c.name, "source": "1600x1200",
				"n": b.N, "thumbnails_per_s": float64(b.N) / el, "commit": report.CurrentEnv().Commit, "loadavg": report.LoadAverage()})
			fmt.Fprintln(os.Stderr, string(line))
		})
	}
}
