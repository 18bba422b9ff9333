#!/usr/bin/env python3
"""Writes the small synthesised camera buffers in tests/fixtures/v4l2/ (no camera needed).

Raw buffers use the standard library only; the MJPEG frames need Pillow (libjpeg, an encoder
independent of the Rust decoder under test):  python3 -m venv /tmp/v && /tmp/v/bin/pip install
pillow && /tmp/v/bin/python scripts/make-v4l2-fixtures.py

  yuyv_16x8.raw            16x8 YUYV, packed (stride 32): BT.601 colour bars, see BARS
  yuyv_16x8_stride40.raw   the same pixels with 8 padding bytes (0xEE) after every row
  grey_16x8.raw            16x8 GREY, pixel (x, y) = 2 * (16 y + x)
  rgb24_8x4_stride32.raw   8x4 RGB3, pixel (x, y) = (30 x, 60 y, 255 - 30 x - y), 8 pad bytes (0x77)
  mjpeg_16x8.jpg           16x8 JPEG 4:2:2, q95, standard Huffman tables: left half
                           (200, 60, 40), right half (40, 90, 200)
  mjpeg_16x8_nodht.jpg     the same file with its DHT segments removed (as many UVC cameras send)
  mjpeg_16x8_truncated.jpg the first 60% of mjpeg_16x8.jpg (a frame cut short)
"""
import os
import struct

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "v4l2")

# (Y, U, V) BT.601 limited range: black, white, red, green, blue, mid-grey, yellow, cyan.
BARS = [(16, 128, 128), (235, 128, 128), (81, 90, 240), (145, 54, 34),
        (41, 240, 110), (128, 128, 128), (210, 16, 146), (170, 166, 16)]


def yuyv_rows(w=16, h=8):
    rows = []
    for y in range(h):
        row = bytearray()
        for p in range(w // 2):
            yy, u, v = BARS[(p + y) % len(BARS)]
            # second pixel of the pair 8 steps brighter (clipped), to check per-pixel luma
            row += bytes([yy, u, min(yy + 8, 255), v])
        rows.append(bytes(row))
    return rows


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def main():
    os.makedirs(OUT, exist_ok=True)
    rows = yuyv_rows()
    write("yuyv_16x8.raw", b"".join(rows))
    write("yuyv_16x8_stride40.raw", b"".join(r + b"\xee" * 8 for r in rows))
    write("grey_16x8.raw", bytes(2 * (16 * y + x) for y in range(8) for x in range(16)))
    rgb = b""
    for y in range(4):
        for x in range(8):
            rgb += bytes([30 * x, 60 * y, 255 - 30 * x - y])
        rgb += b"\x77" * 8
    write("rgb24_8x4_stride32.raw", rgb)

    from PIL import Image  # only the JPEG fixtures need Pillow
    import io
    img = Image.new("RGB", (16, 8))
    for y in range(8):
        for x in range(16):
            img.putpixel((x, y), (200, 60, 40) if x < 8 else (40, 90, 200))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, subsampling=1, optimize=False)
    jpg = buf.getvalue()
    write("mjpeg_16x8.jpg", jpg)
    write("mjpeg_16x8_nodht.jpg", strip_dht(jpg))
    write("mjpeg_16x8_truncated.jpg", jpg[: len(jpg) * 6 // 10])


def strip_dht(jpg):
    """Removes every DHT (0xFFC4) segment before the first scan."""
    out, pos = bytearray(jpg[:2]), 2
    while True:
        marker = jpg[pos + 1]
        (length,) = struct.unpack(">H", jpg[pos + 2:pos + 4])
        if marker == 0xDA:
            out += jpg[pos:]
            return bytes(out)
        if marker != 0xC4:
            out += jpg[pos:pos + 2 + length]
        pos += 2 + length


if __name__ == "__main__":
    main()
