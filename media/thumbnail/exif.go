package thumbnail

import (
	"encoding/binary"
	"io"
)

// JPEGOrientation returns the EXIF orientation tag (0x0112) of a JPEG
// stream, or 1 when it has none or the EXIF data is malformed. It reads
// markers up to the start of scan and never more than one APP1 segment's
// worth of memory (at most 64 KiB).
func JPEGOrientation(r io.Reader) int {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:2]); err != nil || hdr[0] != 0xFF || hdr[1] != 0xD8 {
		return 1
	}
	for {
		if _, err := io.ReadFull(r, hdr[:4]); err != nil || hdr[0] != 0xFF {
			return 1
		}
		marker := hdr[1]
		n := int(binary.BigEndian.Uint16(hdr[2:4])) - 2
		if marker == 0xDA || marker == 0xD9 || n < 0 {
			return 1 // start of scan: no EXIF before the pixels
		}
		seg := make([]byte, n)
		if _, err := io.ReadFull(r, seg); err != nil {
			return 1
		}
		if marker == 0xE1 && len(seg) >= 6 && string(seg[:6]) == "Exif\x00\x00" {
			return exifOrientation(seg[6:])
		}
	}
}

// exifOrientation reads the orientation from a TIFF structure (the EXIF
// payload): byte order, IFD0 offset, then IFD0's entries.
func exifOrientation(t []byte) int {
	if len(t) < 8 {
		return 1
	}
	var bo binary.ByteOrder
	switch string(t[:2]) {
	case "II":
		bo = binary.LittleEndian
	case "MM":
		bo = binary.BigEndian
	default:
		return 1
	}
	if bo.Uint16(t[2:4]) != 42 {
		return 1
	}
	off := bo.Uint32(t[4:8])
	if off > uint32(len(t)) || uint64(off)+2 > uint64(len(t)) {
		return 1
	}
	count := int(bo.Uint16(t[off : off+2]))
	p := int(off) + 2
	for i := 0; i < count; i++ {
		e := p + 12*i
		if e+12 > len(t) {
			return 1
		}
		if bo.Uint16(t[e:e+2]) != 0x0112 {
			continue
		}
		typ, n := bo.Uint16(t[e+2:e+4]), bo.Uint32(t[e+4:e+8])
		if typ != 3 || n != 1 { // SHORT, one value
			return 1
		}
		v := int(bo.Uint16(t[e+8 : e+10]))
		if v < 1 || v > 8 {
			return 1
		}
		return v
	}
	return 1
}
