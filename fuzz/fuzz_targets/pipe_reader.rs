//! The `pipe` source's frame reader: `source::pipe::PipeSource` polled to the end over a file.
//!
//! Input layout: byte 0 the pixel format (even: rgb24, odd: gray8), bytes 1 and 2 the width
//! and height (0 is kept, to check the config error), then the stream bytes, written to a
//! scratch file that the source opens as its `path`.
#![no_main]

use std::sync::Arc;

use gradwatch::source::pipe::PipeSource;
use gradwatch::source::{PipeConfig, RawFormat, RealClock, Source, SourceEvent};
use libfuzzer_sys::fuzz_target;

#[path = "scratch.rs"]
mod scratch;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let pixel_format = if data[0] & 1 == 0 { RawFormat::Rgb24 } else { RawFormat::Gray8 };
    let (width, height) = (usize::from(data[1]), usize::from(data[2]));
    let path = scratch::write("pipe", "raw", &data[3..]);
    let config = PipeConfig { path, width, height, pixel_format, fps: 0.0, reopen: false, timeout_s: 5.0 };
    let Ok(mut source) = PipeSource::new(&config, Arc::new(RealClock)) else { return };
    let frame_bytes = config.frame_bytes().expect("a valid config has a frame size");
    let mut frames = 0;
    // Every frame consumes frame_bytes (>= 1) bytes, so the stream ends within len + 2 polls.
    for _ in 0..data.len() + 3 {
        match source.poll() {
            SourceEvent::End => {
                assert_eq!(frames, (data.len() - 3) / frame_bytes, "every whole frame is delivered");
                return;
            }
            SourceEvent::Frame { image, .. } => {
                assert_eq!((image.width, image.height, image.data.len()), (width, height, width * height * 3));
                frames += 1;
            }
            _ => {}
        }
    }
    panic!("the pipe source did not end after its input ended");
});
