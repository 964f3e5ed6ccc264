package thumbnail

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"testing"
)

// halves is a w x h image, red on the left half and blue on the right.
func halves(w, h int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			c := color.RGBA{255, 0, 0, 255}
			if x >= w/2 {
				c = color.RGBA{0, 0, 255, 255}
			}
			img.SetRGBA(x, y, c)
		}
	}
	return img
}

// withOrientation inserts an EXIF APP1 segment (big-endian TIFF, IFD0 with
// one Orientation entry) right after the JPEG's SOI marker.
func withOrientation(jpg []byte, o uint16) []byte {
	var tiff bytes.Buffer
	tiff.WriteString("MM")
	_ = binary.Write(&tiff, binary.BigEndian, uint16(42))
	_ = binary.Write(&tiff, binary.BigEndian, uint32(8))
	_ = binary.Write(&tiff, binary.BigEndian, uint16(1)) // one entry
	_ = binary.Write(&tiff, binary.BigEndian, uint16(0x0112))
	_ = binary.Write(&tiff, binary.BigEndian, uint16(3)) // SHORT
	_ = binary.Write(&tiff, binary.BigEndian, uint32(1))
	_ = binary.Write(&tiff, binary.BigEndian, o)
	_ = binary.Write(&tiff, binary.BigEndian, uint16(0))
	_ = binary.Write(&tiff, binary.BigEndian, uint32(0)) // no next IFD
	payload := append([]byte("Exif\x00\x00"), tiff.Bytes()...)
	seg := []byte{0xFF, 0xE1, 0, 0}
	binary.BigEndian.PutUint16(seg[2:], uint16(len(payload)+2))
	out := append([]byte{}, jpg[:2]...)
	out = append(out, seg...)
	out = append(out, payload...)
	return append(out, jpg[2:]...)
}

func isRed(c color.Color) bool {
	r, g, b, _ := c.RGBA()
	return r > 0xA000 && g < 0x6000 && b < 0x6000
}

func isBlue(c color.Color) bool {
	r, g, b, _ := c.RGBA()
	return b > 0xA000 && r < 0x6000 && g < 0x6000
}

func TestEXIFOrientation(t *testing.T) {
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, halves(400, 200), &jpeg.Options{Quality: 95}); err != nil {
		t.Fatal(err)
	}
	// 6: the camera was turned 90 degrees clockwise; viewers rotate the
	// stored image 90 degrees clockwise, so the left (red) half ends up on
	// top and the image is portrait.
	rotated := withOrientation(buf.Bytes(), 6)
	info, err := Probe(bytes.NewReader(rotated))
	if err != nil || info.Orientation != 6 || info.Width != 200 || info.Height != 400 {
		t.Fatalf("Probe: %+v %v", info, err)
	}
	res, err := Make(bytes.NewReader(rotated), 100, 100, Scale, 1<<24)
	if err != nil {
		t.Fatal(err)
	}
	img, err := jpeg.Decode(bytes.NewReader(res.Data))
	if err != nil {
		t.Fatal(err)
	}
	b := img.Bounds()
	if b.Dx() != 50 || b.Dy() != 100 || res.Width != 50 || res.Height != 100 {
		t.Fatalf("thumbnail %dx%d (%dx%d), want 50x100", b.Dx(), b.Dy(), res.Width, res.Height)
	}
	if !isRed(img.At(25, 10)) || !isBlue(img.At(25, 90)) {
		t.Errorf("orientation not applied: top %v, bottom %v", img.At(25, 10), img.At(25, 90))
	}
	// Without the tag: landscape, red on the left.
	res, err = Make(bytes.NewReader(buf.Bytes()), 100, 100, Scale, 1<<24)
	if err != nil {
		t.Fatal(err)
	}
	img, _ = jpeg.Decode(bytes.NewReader(res.Data))
	if img.Bounds().Dx() != 100 || img.Bounds().Dy() != 50 || !isRed(img.At(10, 25)) || !isBlue(img.At(90, 25)) {
		t.Errorf("unrotated thumbnail %v", img.Bounds())
	}
	for o := uint16(1); o <= 8; o++ {
		if got := JPEGOrientation(bytes.NewReader(withOrientation(buf.Bytes(), o))); got != int(o) {
			t.Errorf("orientation %d read as %d", o, got)
		}
		if _, err := Make(bytes.NewReader(withOrientation(buf.Bytes(), o)), 32, 32, Crop, 1<<24); err != nil {
			t.Errorf("orientation %d: %v", o, err)
		}
	}
}

func TestCropAndScale(t *testing.T) {
	var buf bytes.Buffer
	_ = png.Encode(&buf, halves(300, 100))
	for _, c := range []struct {
		w, h   int
		method string
		ww, wh int
	}{
		{32, 32, Crop, 32, 32},
		{96, 96, Crop, 96, 96},
		{320, 240, Scale, 300, 100}, // never upscaled
		{150, 150, Scale, 150, 50},
		{640, 50, Scale, 150, 50},
		{400, 400, Crop, 300, 100},
	} {
		res, err := Make(bytes.NewReader(buf.Bytes()), c.w, c.h, c.method, 1<<24)
		if err != nil {
			t.Fatal(err)
		}
		cfg, format, err := image.DecodeConfig(bytes.NewReader(res.Data))
		if err != nil || format != "png" || cfg.Width != c.ww || cfg.Height != c.wh {
			t.Errorf("%dx%d %s: %dx%d %s %v, want %dx%d", c.w, c.h, c.method, cfg.Width, cfg.Height, format, err, c.ww, c.wh)
		}
	}
	// A square crop of a wide image keeps its centre: both colours.
	res, _ := Make(bytes.NewReader(buf.Bytes()), 32, 32, Crop, 1<<24)
	img, _ := png.Decode(bytes.NewReader(res.Data))
	if !isRed(img.At(2, 16)) || !isBlue(img.At(29, 16)) {
		t.Errorf("crop is not centred: %v %v", img.At(2, 16), img.At(29, 16))
	}
}

// webp1x1 is a 1x1 lossless WebP.
const webp1x1 = "UklGRhoAAABXRUJQVlA4TA0AAAAvAAAAEAcQERGIiP4HAA=="

func TestWebP(t *testing.T) {
	b, _ := base64.StdEncoding.DecodeString(webp1x1)
	info, err := Probe(bytes.NewReader(b))
	if err != nil || info.Format != "webp" || info.Width != 1 || info.Height != 1 {
		t.Fatalf("Probe: %+v %v", info, err)
	}
	res, err := Make(bytes.NewReader(b), 32, 32, Crop, 1<<24)
	if err != nil || res.ContentType != "image/png" || res.Width != 1 {
		t.Fatalf("Make: %+v %v", res, err)
	}
}

func TestBombRefusedBeforeDecoding(t *testing.T) {
	var buf bytes.Buffer
	_ = png.Encode(&buf, image.NewGray(image.Rect(0, 0, 2000, 2000)))
	if _, err := Make(bytes.NewReader(buf.Bytes()), 32, 32, Crop, 1_000_000); !errors.Is(err, ErrTooLarge) {
		t.Errorf("4M pixels with a 1M budget: %v", err)
	}
}

type colorColor = color.Color

var white = color.Gray{255}
