//! Frames: the RGB8 images that flow from sources to the model.

use std::time::SystemTime;

/// An 8-bit RGB image, row-major, 3 bytes a pixel, no padding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height * width * 3` bytes, RGB order.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// Wraps `data`, or returns `None` when its length is not `width * height * 3`.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Option<Self> {
        (data.len() == width * height * 3).then_some(Self { width, height, data })
    }

    /// A black image.
    pub fn zeros(width: usize, height: usize) -> Self {
        Self { width, height, data: vec![0; width * height * 3] }
    }

    /// The pixel at (x, y).
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    /// Sets the pixel at (x, y).
    pub fn set_pixel(&mut self, x: usize, y: usize, p: [u8; 3]) {
        let i = (y * self.width + x) * 3;
        self.data[i..i + 3].copy_from_slice(&p);
    }

    /// The rectangle `[x, x+w) x [y, y+h)`, clamped to the image.
    pub fn crop(&self, x: usize, y: usize, w: usize, h: usize) -> RgbImage {
        let x0 = x.min(self.width);
        let y0 = y.min(self.height);
        let w = w.min(self.width - x0);
        let h = h.min(self.height - y0);
        let mut data = Vec::with_capacity(w * h * 3);
        for row in y0..y0 + h {
            let s = (row * self.width + x0) * 3;
            data.extend_from_slice(&self.data[s..s + w * 3]);
        }
        RgbImage { width: w, height: h, data }
    }

    /// Bilinear resize (pixel centres aligned, as OpenCV's `INTER_LINEAR`).
    pub fn resize(&self, width: usize, height: usize) -> RgbImage {
        if width == self.width && height == self.height {
            return self.clone();
        }
        let mut out = RgbImage::zeros(width, height);
        if self.width == 0 || self.height == 0 {
            return out;
        }
        let sx = self.width as f32 / width as f32;
        let sy = self.height as f32 / height as f32;
        for y in 0..height {
            let fy = ((y as f32 + 0.5) * sy - 0.5).max(0.0);
            let y0 = (fy as usize).min(self.height - 1);
            let y1 = (y0 + 1).min(self.height - 1);
            let wy = fy - y0 as f32;
            for x in 0..width {
                let fx = ((x as f32 + 0.5) * sx - 0.5).max(0.0);
                let x0 = (fx as usize).min(self.width - 1);
                let x1 = (x0 + 1).min(self.width - 1);
                let wx = fx - x0 as f32;
                let (a, b, c, d) = (self.pixel(x0, y0), self.pixel(x1, y0), self.pixel(x0, y1), self.pixel(x1, y1));
                let mut p = [0u8; 3];
                for k in 0..3 {
                    let top = a[k] as f32 * (1.0 - wx) + b[k] as f32 * wx;
                    let bot = c[k] as f32 * (1.0 - wx) + d[k] as f32 * wx;
                    p[k] = (top * (1.0 - wy) + bot * wy).round().clamp(0.0, 255.0) as u8;
                }
                out.set_pixel(x, y, p);
            }
        }
        out
    }
}

/// One captured frame of a named stream.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Name of the stream (source) it came from.
    pub stream: String,
    /// Sequence number within the stream, from 0.
    pub seq: u64,
    /// Wall-clock capture time.
    pub captured_at: SystemTime,
    /// The pixels.
    pub image: RgbImage,
    /// Free-form label of what the source did to it (e.g. `haze:3` for a replay window), for reports.
    pub tag: Option<String>,
}
