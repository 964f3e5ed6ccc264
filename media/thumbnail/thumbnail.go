// Package thumbnail makes thumbnails of images (JPEG, PNG, GIF's first
// frame, WebP) by the spec's two methods: "crop" fills the requested box
// exactly, "scale" fits inside it keeping the aspect ratio. Images are
// never upscaled.
//
// Input is untrusted: dimensions are read from the header and checked
// against a pixel budget before any pixel is decoded (a 20,000 x 20,000
// PNG is a few kilobytes of zeros that would decode into 1.6 GB), and a
// decoder panic on corrupt input is turned into an error.
package thumbnail

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/draw"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"

	xdraw "golang.org/x/image/draw"
	_ "golang.org/x/image/webp" // registers the WebP decoder
)

// ErrTooLarge: the image has more pixels than allowed.
var ErrTooLarge = errors.New("thumbnail: image has too many pixels")

// ErrNotImage: the bytes are not an image of a supported format.
var ErrNotImage = errors.New("thumbnail: not an image of a supported format")

// Methods.
const (
	Crop  = "crop"
	Scale = "scale"
)

// Info is what the header of an image says.
type Info struct {
	Format        string // "jpeg", "png", "gif", "webp"
	Width, Height int    // as displayed (after EXIF orientation)
	Orientation   int    // EXIF orientation, 1 (none) to 8
}

// Probe reads the image's format and dimensions from its header, without
// decoding pixels.
func Probe(r io.ReadSeeker) (Info, error) {
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		return Info{}, err
	}
	cfg, format, err := image.DecodeConfig(bufio.NewReader(r))
	if err != nil {
		return Info{}, ErrNotImage
	}
	info := Info{Format: format, Width: cfg.Width, Height: cfg.Height, Orientation: 1}
	if format == "jpeg" {
		if _, err := r.Seek(0, io.SeekStart); err != nil {
			return Info{}, err
		}
		info.Orientation = JPEGOrientation(io.LimitReader(r, 1<<20))
		if info.Orientation >= 5 { // 90 or 270 degrees: width and height swap
			info.Width, info.Height = info.Height, info.Width
		}
	}
	if info.Width <= 0 || info.Height <= 0 {
		return Info{}, ErrNotImage
	}
	return info, nil
}

// Result is an encoded thumbnail.
type Result struct {
	Data          []byte
	ContentType   string
	Width, Height int
}

// Target is the size of the thumbnail of a w x h image for a requested
// box and method, never larger than the image.
func Target(w, h, reqW, reqH int, method string) (int, int) {
	if method == Crop {
		return min(reqW, w), min(reqH, h)
	}
	// Scale: the largest size inside the box with the image's aspect.
	if reqW*h < reqH*w {
		tw, th := reqW, max(1, reqW*h/w)
		if tw >= w {
			return w, h
		}
		return tw, th
	}
	tw, th := max(1, reqH*w/h), reqH
	if th >= h {
		return w, h
	}
	return tw, th
}

// Make decodes the image in r and makes its thumbnail for a box of reqW x
// reqH by method. maxPixels bounds the decoded image (Synapse's
// max_image_pixels).
func Make(r io.ReadSeeker, reqW, reqH int, method string, maxPixels int64) (res *Result, err error) {
	if reqW <= 0 || reqH <= 0 {
		return nil, fmt.Errorf("thumbnail: bad size %dx%d", reqW, reqH)
	}
	info, err := Probe(r)
	if err != nil {
		return nil, err
	}
	if int64(info.Width)*int64(info.Height) > maxPixels {
		return nil, ErrTooLarge
	}
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	defer func() {
		// The standard decoders are meant not to panic, but this is
		// untrusted input on a server: a panic must not take it down.
		if p := recover(); p != nil {
			res, err = nil, fmt.Errorf("%w: decoder failed: %v", ErrNotImage, p)
		}
	}()
	var src image.Image
	br := bufio.NewReader(r)
	switch info.Format {
	case "gif":
		src, err = gif.Decode(br) // the first frame
	default:
		src, _, err = image.Decode(br)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotImage, err)
	}
	// Thumbnail first, orient after: rotating and mirroring commute with
	// centred crops and scales, and turning the small image is cheap.
	b := src.Bounds()
	w, h := b.Dx(), b.Dy()
	if info.Orientation >= 5 {
		w, h = h, w
	}
	tw, th := Target(w, h, reqW, reqH, method)
	pw, ph := tw, th // the size before orienting
	if info.Orientation >= 5 {
		pw, ph = th, tw
	}
	var dst *image.RGBA
	if method == Crop {
		dst = cropScale(src, pw, ph)
	} else {
		dst = image.NewRGBA(image.Rect(0, 0, pw, ph))
		xdraw.BiLinear.Scale(dst, dst.Bounds(), src, b, draw.Src, nil)
	}
	img := orient(dst, info.Orientation)
	var buf bytes.Buffer
	ct := "image/png"
	if info.Format == "jpeg" {
		ct = "image/jpeg"
		err = jpeg.Encode(&buf, img, &jpeg.Options{Quality: 80})
	} else {
		err = (&png.Encoder{CompressionLevel: png.BestSpeed}).Encode(&buf, img)
	}
	if err != nil {
		return nil, err
	}
	return &Result{Data: buf.Bytes(), ContentType: ct, Width: tw, Height: th}, nil
}

// cropScale scales src to cover tw x th, then cuts the centre.
func cropScale(src image.Image, tw, th int) *image.RGBA {
	b := src.Bounds()
	w, h := b.Dx(), b.Dy()
	// The source rectangle with the target's aspect ratio, centred.
	sw, sh := w, h
	if w*th > h*tw {
		sw = max(1, h*tw/th)
	} else {
		sh = max(1, w*th/tw)
	}
	x0 := b.Min.X + (w-sw)/2
	y0 := b.Min.Y + (h-sh)/2
	dst := image.NewRGBA(image.Rect(0, 0, tw, th))
	xdraw.BiLinear.Scale(dst, dst.Bounds(), src, image.Rect(x0, y0, x0+sw, y0+sh), draw.Src, nil)
	return dst
}

// orient applies an EXIF orientation (1 to 8) so the image is upright.
func orient(src *image.RGBA, o int) image.Image {
	if o <= 1 || o > 8 {
		return src
	}
	b := src.Bounds()
	w, h := b.Dx(), b.Dy()
	dw, dh := w, h
	if o >= 5 {
		dw, dh = h, w
	}
	dst := image.NewRGBA(image.Rect(0, 0, dw, dh))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			var dx, dy int
			switch o {
			case 2: // mirrored horizontally
				dx, dy = w-1-x, y
			case 3: // rotated 180
				dx, dy = w-1-x, h-1-y
			case 4: // mirrored vertically
				dx, dy = x, h-1-y
			case 5: // transposed
				dx, dy = y, x
			case 6: // rotated 90 clockwise
				dx, dy = h-1-y, x
			case 7: // transversed
				dx, dy = h-1-y, w-1-x
			case 8: // rotated 90 counter-clockwise
				dx, dy = y, w-1-x
			}
			dst.SetRGBA(dx, dy, src.RGBAAt(b.Min.X+x, b.Min.Y+y))
		}
	}
	return dst
}
