//! IP cameras over RTSP: the `retina` client (TCP-interleaved by default, UDP optional,
//! basic/digest auth), H.264 decoded by OpenH264 ([`super::h264`]: the system's library or one
//! built from source), MJPEG by `image`;
//! reconnection with exponential backoff, a stall timeout.
//!
//! ```toml
//! [[stream]]
//! name = "gate"
//! kind = "rtsp"
//! url = "rtsp://192.0.2.10:554/Streaming/Channels/101"   # required; no password in it
//! username = "viewer"                # default none
//! password_file = "%d/gate-password" # first line is the password; needs `username`
//! transport = "tcp"                  # tcp (default, interleaved on the RTSP connection) or udp
//! timeout_s = 5.0                    # no frame for this long = down, reconnect; default 5.0
//! reconnect_initial_s = 0.5          # first wait after a failure; default 0.5
//! reconnect_max_s = 30.0             # backoff doubles up to this; default 30.0
//! score_fps = 5                      # common key: also skips decoding where the stream allows
//! ```
//!
//! `password_file` is read like the MQTT sink's: a path starting with `%d/` (or relative,
//! under systemd) is looked up in `$CREDENTIALS_DIRECTORY` (`LoadCredential=`). A URL with a
//! password in it is refused when `password_file` is given, and a URL's `user:pass@` is never
//! logged: it is taken out of the URL and sent as credentials.
//!
//! H.265 is refused with a message naming the alternative: ffmpeg decoding into a `pipe`
//! stream (see [`super::pipe`]).
//!
//! The session runs on its own thread (a single-threaded tokio runtime), which connects,
//! reads, decodes and hands frames to [`RtspSource::poll`] through a small channel. Every
//! failure (refused connection, wrong password, unsupported codec, no frame for `timeout_s`,
//! the server ending the session) is a [`SourceEvent::Down`] naming the cause, followed by a
//! wait from the backoff schedule, so a wrong password costs one attempt per backoff step, not
//! a tight loop. Resolution changes are followed: each frame has the size the decoder gives.
//!
//! `score_fps`: H.264 frames that no other frame refers to (`nal_ref_idc = 0`, retina's
//! `is_disposable`: B-frames of most encoders, the non-reference layer of cameras with
//! temporal scalability) are not decoded unless the stream's next scored slot is due; every
//! reference frame must be decoded (later frames are predicted from it), and goes to the
//! pipeline, which picks the scored ones as for any source. A camera that sends only I and P
//! frames (most do) is therefore decoded in full.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use serde::{Deserialize, Serialize};

use crate::base::clock::Clock;
// The timing keys are the v4l2 camera's: same defaults, same checks.
use super::v4l2::{
    checked_backoff, default_reconnect_initial_s, default_reconnect_max_s, default_timeout_s, positive_secs, Backoff,
};
use super::{Source, SourceError, SourceEvent};
use crate::frame::RgbImage;

/// How RTP packets travel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RtspTransport {
    /// Interleaved on the RTSP TCP connection (works through NAT and firewalls; default).
    #[default]
    Tcp,
    /// Separate UDP ports (LANs only: no reordering, lost packets are lost frames).
    Udp,
}

/// Config of a `kind = "rtsp"` stream.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RtspConfig {
    /// `rtsp://host[:port]/path`. Required.
    pub url: String,
    /// User name for basic/digest auth. Default none.
    #[serde(default)]
    pub username: Option<String>,
    /// File whose first line is the password (needs `username`). Default none.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub transport: RtspTransport,
    /// Seconds without a frame (or without an answer while connecting) after which the stream
    /// counts as down and is reconnected. Default 5.0.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Seconds to wait before the first reconnection attempt. Default 0.5.
    #[serde(default = "default_reconnect_initial_s")]
    pub reconnect_initial_s: f64,
    /// The wait doubles after each failed attempt, up to this many seconds. Default 30.0.
    #[serde(default = "default_reconnect_max_s")]
    pub reconnect_max_s: f64,
}

/// A URL split into the address to connect to (no credentials) and any `user:pass@`.
struct Target {
    url: url::Url,
    user: Option<String>,
    password: Option<String>,
}

impl RtspConfig {
    /// The URL without credentials, and the credentials it held.
    fn target(&self) -> Result<Target, SourceError> {
        let bad = |m: String| Err(SourceError::Config(m));
        let mut url = match url::Url::parse(&self.url) {
            Ok(u) => u,
            Err(e) => {
                return bad(format!("`url` {:?} is not a URL ({e}); use rtsp://host:554/path", redact(&self.url)))
            }
        };
        if url.scheme() != "rtsp" {
            return bad(format!(
                "`url` scheme is `{}`; only rtsp:// is supported (use rtsp://host:554/path)",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return bad(format!("`url` {:?} names no host; use rtsp://host:554/path", redact(&self.url)));
        }
        let user = (!url.username().is_empty()).then(|| pct_decode(url.username()));
        let password = url.password().map(pct_decode);
        // Both setters fail only for URLs that cannot have a host, ruled out above.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        Ok(Target { url, user, password })
    }

    /// Checks the config without reading the password file or connecting.
    pub fn validate(&self) -> Result<(), SourceError> {
        let t = self.target()?;
        if t.password.is_some() && self.password_file.is_some() {
            return Err(SourceError::Config(
                "`url` holds a password and `password_file` is given; take `user:password@` out of the URL".into(),
            ));
        }
        if t.user.is_some() && self.username.is_some() {
            return Err(SourceError::Config(
                "`url` holds a user name and `username` is given; keep one (`username`)".into(),
            ));
        }
        if self.password_file.is_some() && self.username.is_none() && t.user.is_none() {
            return Err(SourceError::Config("`password_file` needs `username`".into()));
        }
        positive_secs("timeout_s", self.timeout_s)?;
        checked_backoff(self.reconnect_initial_s, self.reconnect_max_s).map(|_| ())
    }

    /// Reads the password file; the source connects on its first `poll`. `score_fps` is the
    /// stream's (see the module doc).
    pub fn build(&self, clock: Arc<dyn Clock>, score_fps: Option<f64>) -> Result<Box<dyn Source>, SourceError> {
        self.validate()?;
        let t = self.target()?;
        let password = match &self.password_file {
            Some(f) => Some(read_password(f)?),
            None => t.password.clone(),
        };
        let username = self.username.clone().or(t.user.clone());
        let creds =
            username.map(|username| retina::client::Credentials { username, password: password.unwrap_or_default() });
        let settings = Settings {
            url: t.url,
            creds,
            transport: self.transport,
            timeout: positive_secs("timeout_s", self.timeout_s)?,
            backoff: checked_backoff(self.reconnect_initial_s, self.reconnect_max_s)?,
            period: score_fps.filter(|f| f.is_finite() && *f > 0.0).map(|f| Duration::from_secs_f64(1.0 / f)),
        };
        Ok(Box::new(RtspSource::new(settings, clock)))
    }
}

/// The first line of a password file, resolved like the MQTT sink's `password_file`.
fn read_password(file: &std::path::Path) -> Result<String, SourceError> {
    let path = crate::base::path::resolve_credential(file, false)
        .map_err(|e| SourceError::Config(format!("`password_file`: {e}")))?;
    let text = std::fs::read_to_string(&path).map_err(|e| {
        SourceError::Config(format!(
            "`password_file` {}: cannot read it: {e}; create it (one line, the camera's password) or fix the path",
            path.display()
        ))
    })?;
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// `%41` -> `A` in a URL's user or password (lossy on invalid UTF-8).
fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A URL for messages: `user:pass@` replaced by `***@`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

/// What the session thread needs.
struct Settings {
    url: url::Url,
    creds: Option<retina::client::Credentials>,
    transport: RtspTransport,
    timeout: Duration,
    backoff: Backoff,
    /// `1 / score_fps`, for skipping the decoding of disposable frames.
    period: Option<Duration>,
}

/// From the session thread to `poll`.
enum Msg {
    Frame(RgbImage),
    Bad(String),
    Down(String),
}

/// Reads one RTSP camera (see the module doc).
pub struct RtspSource {
    settings: Option<Settings>,
    clock: Arc<dyn Clock>,
    timeout: Duration,
    rx: Option<Receiver<Msg>>,
    stop: Arc<AtomicBool>,
    skipped: Arc<AtomicU64>,
    ended: bool,
    label: String,
}

impl RtspSource {
    fn new(settings: Settings, clock: Arc<dyn Clock>) -> Self {
        RtspSource {
            timeout: settings.timeout,
            label: settings.url.to_string(),
            settings: Some(settings),
            clock,
            rx: None,
            stop: Arc::new(AtomicBool::new(false)),
            skipped: Arc::new(AtomicU64::new(0)),
            ended: false,
        }
    }

    /// Starts the session thread (first `poll`: `check-config` builds sources without
    /// connecting).
    fn start(&mut self) -> Result<(), String> {
        let Some(settings) = self.settings.take() else { return Ok(()) };
        // Room for a frame in flight: the pipeline's own queue does the buffering.
        let (tx, rx) = bounded(2);
        let (stop, skipped, clock) = (self.stop.clone(), self.skipped.clone(), self.clock.clone());
        std::thread::Builder::new()
            .name("rtsp".into())
            .spawn(move || Worker { s: settings, tx, stop, skipped, clock, slot: None }.run())
            .map_err(|e| format!("cannot start the RTSP thread: {e}"))?;
        self.rx = Some(rx);
        Ok(())
    }
}

impl Drop for RtspSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Source for RtspSource {
    fn take_skipped(&mut self) -> u64 {
        self.skipped.swap(0, Ordering::Relaxed)
    }

    fn poll(&mut self) -> SourceEvent {
        if self.ended {
            return SourceEvent::End;
        }
        if let Err(reason) = self.start() {
            self.ended = true;
            return SourceEvent::Down { reason };
        }
        let Some(rx) = &self.rx else { return SourceEvent::End };
        match rx.recv_timeout(self.timeout) {
            Ok(Msg::Frame(image)) => SourceEvent::Frame { image, tag: None },
            Ok(Msg::Bad(reason)) => SourceEvent::BadFrame { reason },
            Ok(Msg::Down(reason)) => SourceEvent::Down { reason },
            Err(RecvTimeoutError::Timeout) => SourceEvent::Down {
                reason: format!(
                    "{}: no frame for {:.1} s (`timeout_s`); reconnecting",
                    self.label,
                    self.timeout.as_secs_f64()
                ),
            },
            Err(RecvTimeoutError::Disconnected) => {
                self.ended = true;
                SourceEvent::Down { reason: format!("{}: the RTSP thread ended (a bug; see the log)", self.label) }
            }
        }
    }
}

/// The session thread's state.
struct Worker {
    s: Settings,
    tx: Sender<Msg>,
    stop: Arc<AtomicBool>,
    skipped: Arc<AtomicU64>,
    clock: Arc<dyn Clock>,
    /// `(start, last slot)` of the `score_fps` schedule, as the pipeline keeps it.
    slot: Option<(Instant, u64)>,
}

/// How often a wait between attempts looks at `stop`.
const STOP_POLL: Duration = Duration::from_millis(100);

/// The session ended: why, and whether frames came first (then the backoff starts over).
struct Ended {
    reason: String,
    had_frames: bool,
}

impl Worker {
    fn run(mut self) {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = self.tx.send(Msg::Down(format!("{}: cannot start the RTSP runtime: {e}", self.s.url)));
                return;
            }
        };
        let mut last_reason = String::new();
        while !self.stop.load(Ordering::Relaxed) {
            let Some(ended) = rt.block_on(self.session()) else { return };
            if ended.had_frames {
                self.s.backoff.reset();
            }
            let wait = self.s.backoff.next_delay();
            if ended.reason != last_reason {
                log::warn!("{}; retrying in {:.1} s", ended.reason, wait.as_secs_f64());
            } else {
                log::debug!("{}; retrying in {:.1} s", ended.reason, wait.as_secs_f64());
            }
            if self.tx.send(Msg::Down(ended.reason.clone())).is_err() {
                return;
            }
            last_reason = ended.reason;
            let until = Instant::now() + wait;
            while Instant::now() < until {
                if self.stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(STOP_POLL.min(until.saturating_duration_since(Instant::now())));
            }
        }
    }

    /// Whether the next frame would be scored (the pipeline's `score_fps` slots).
    fn due(&self, t: Instant) -> bool {
        let (Some(period), Some((start, last))) = (self.s.period, self.slot) else { return true };
        let slot = (t.saturating_duration_since(start).as_nanos() / period.as_nanos().max(1)) as u64;
        slot > last
    }

    /// Records a decoded frame at `t` as the one of its slot.
    fn took(&mut self, t: Instant) {
        let Some(period) = self.s.period else { return };
        let start = self.slot.map_or(t, |(s, _)| s);
        let slot = (t.saturating_duration_since(start).as_nanos() / period.as_nanos().max(1)) as u64;
        self.slot = Some((start, slot));
    }

    /// One connection: DESCRIBE, SETUP, PLAY, then frames until something fails. `None`:
    /// stop (the source was dropped).
    async fn session(&mut self) -> Option<Ended> {
        let mut had_frames = false;
        let reason = match self.play(&mut had_frames).await {
            Ok(()) => return None,
            Err(r) => r,
        };
        Some(Ended { reason: format!("{}: {reason}", self.s.url), had_frames })
    }

    async fn play(&mut self, had_frames: &mut bool) -> Result<(), String> {
        use futures::StreamExt;
        use retina::client::{PlayOptions, SessionOptions, SetupOptions, Transport};
        use retina::codec::{CodecItem, FrameFormat};

        let t = self.s.timeout;
        let within = |what: &'static str| {
            move |_: tokio::time::error::Elapsed| {
                format!("no answer to {what} within {:.1} s (`timeout_s`)", t.as_secs_f64())
            }
        };
        let opts = SessionOptions::default().creds(self.s.creds.clone()).user_agent("gradwatch".into());
        let mut session = tokio::time::timeout(t, retina::client::Session::describe(self.s.url.clone(), opts))
            .await
            .map_err(within("DESCRIBE"))?
            .map_err(|e| describe_error(&e, self.s.creds.is_some()))?;
        let Some((i, codec)) = session
            .streams()
            .iter()
            .enumerate()
            .find_map(|(i, s)| (s.media() == "video").then(|| (i, s.encoding_name().to_ascii_lowercase())))
        else {
            return Err("the camera offers no video stream".into());
        };
        let codec = match codec.as_str() {
            "h264" => Codec::H264,
            "jpeg" => Codec::Jpeg,
            "h265" => return Err(unsupported("H.265")),
            other => return Err(unsupported(other)),
        };
        let transport = match self.s.transport {
            RtspTransport::Tcp => Transport::Tcp(Default::default()),
            RtspTransport::Udp => Transport::Udp(Default::default()),
        };
        let setup = SetupOptions::default().transport(transport).frame_format(FrameFormat::SIMPLE);
        tokio::time::timeout(t, session.setup(i, setup)).await.map_err(within("SETUP"))?.map_err(|e| brief(&e))?;
        let playing = tokio::time::timeout(t, session.play(PlayOptions::default()))
            .await
            .map_err(within("PLAY"))?
            .map_err(|e| brief(&e))?;
        let mut frames = playing.demuxed().map_err(|e| brief(&e))?;
        let mut decoder = match codec {
            Codec::H264 => Some(super::h264::decoder()?),
            Codec::Jpeg => None,
        };
        let mut size = (0, 0);
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let f = match tokio::time::timeout(t, frames.next()).await {
                Err(_) => return Err(format!("no video for {:.1} s (`timeout_s`); reconnecting", t.as_secs_f64())),
                Ok(None) => return Err("the server ended the session".into()),
                Ok(Some(Err(e))) => return Err(brief(&e)),
                Ok(Some(Ok(CodecItem::VideoFrame(f)))) => f,
                Ok(Some(Ok(_))) => continue,
            };
            let now = self.clock.now();
            let due = self.due(now);
            if !due && f.is_disposable() {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let image = match &mut decoder {
                Some(d) => decode_h264(d, f.data()),
                None => decode_jpeg(f.data()),
            };
            let msg = match image {
                Ok(None) => continue,
                Ok(Some(img)) => {
                    if (img.width, img.height) != size {
                        if size != (0, 0) {
                            log::info!(
                                "{}: resolution changed from {}x{} to {}x{}",
                                self.s.url,
                                size.0,
                                size.1,
                                img.width,
                                img.height
                            );
                        }
                        size = (img.width, img.height);
                    }
                    *had_frames = true;
                    self.took(now);
                    Msg::Frame(img)
                }
                Err(reason) => Msg::Bad(reason),
            };
            // Blocks while the capture thread is busy (the pipeline's queue absorbs bursts);
            // fails only when the source is gone.
            if self.tx.send(msg).is_err() {
                return Ok(());
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Codec {
    H264,
    Jpeg,
}

/// The refusal of a codec this source cannot decode.
fn unsupported(codec: &str) -> String {
    format!(
        "the camera sends {codec}, which this source does not decode (H.264 and MJPEG are); switch \
         the camera's stream to H.264, or decode with ffmpeg into a `kind = \"pipe\"` stream: \
         ffmpeg -rtsp_transport tcp -i rtsp://... -vf scale=640:480 -pix_fmt rgb24 -f rawvideo - \
         (see the README)"
    )
}

/// A retina error's first line: its cause, without the connection and packet context
/// (addresses, ports, times) that follows, so one cause reads the same on every attempt.
fn brief(e: &retina::Error) -> String {
    let text = e.to_string();
    let first = text.split("\n\n").next().unwrap_or("").trim().replace('\n', " ");
    if first.starts_with("RTSP framing error") {
        format!("{first} (the server at this address does not speak RTSP; check the host and port in `url`)")
    } else {
        first
    }
}

/// A DESCRIBE failure, with the fix for a refused login.
fn describe_error(e: &retina::Error, have_creds: bool) -> String {
    let msg = brief(e);
    match (e.status_code(), have_creds) {
        (Some(401), true) => format!(
            "the camera refused the user name or password (401 Unauthorized); check `username` and \
             `password_file` ({msg})"
        ),
        (Some(401), false) => {
            format!("the camera asks for a login (401 Unauthorized); set `username` and `password_file` ({msg})")
        }
        (Some(404), _) => format!("the camera has no stream at this path (404); check `url` ({msg})"),
        _ => msg,
    }
}

/// One H.264 access unit (Annex B, parameter sets before each key frame) to RGB; `None`
/// while the decoder needs more (before the first key frame).
fn decode_h264(d: &mut openh264::decoder::Decoder, au: &[u8]) -> Result<Option<RgbImage>, String> {
    use openh264::formats::YUVSource;
    match d.decode(au) {
        Ok(Some(yuv)) => {
            let (w, h) = yuv.dimensions();
            let mut data = vec![0; w * h * 3];
            yuv.write_rgb8(&mut data);
            Ok(RgbImage::new(w, h, data))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(format!("H.264 frame could not be decoded: {e}")),
    }
}

/// One JPEG frame to RGB.
fn decode_jpeg(jpeg: &[u8]) -> Result<Option<RgbImage>, String> {
    let img = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)
        .map_err(|e| format!("MJPEG frame could not be decoded: {e}"))?
        .to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    Ok(RgbImage::new(w, h, img.into_raw()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> RtspConfig {
        toml::from_str(&format!("url = {url:?}")).unwrap()
    }

    #[test]
    fn urls_without_host_or_with_other_schemes_are_refused() {
        for (url, want) in [
            ("rtsp:///cam", "names no host"),
            ("rtsp://", "names no host"),
            ("http://cam/x", "only rtsp://"),
            ("cam:554", "only rtsp://"),
            ("not a url", "not a URL"),
        ] {
            let e = cfg(url).validate().unwrap_err().to_string();
            assert!(e.contains(want), "{url}: {e}");
        }
        cfg("rtsp://10.0.0.1:554/Streaming/101").validate().unwrap();
    }

    #[test]
    fn credentials_come_out_of_the_url() {
        let t = cfg("rtsp://ad%40min:p%3Ass@cam:8554/x").target().unwrap();
        assert_eq!(t.url.as_str(), "rtsp://cam:8554/x");
        assert_eq!(t.user.as_deref(), Some("ad@min"));
        assert_eq!(t.password.as_deref(), Some("p:ss"));
        assert_eq!(redact("rtsp://a:b@cam/x"), "rtsp://***@cam/x");
    }

    #[test]
    fn a_password_in_the_url_and_a_password_file_conflict() {
        let mut c = cfg("rtsp://u:p@cam/x");
        c.password_file = Some("/run/pw".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("take `user:password@` out of the URL"), "{e}");
        // And the message does not repeat the password.
        assert!(!e.contains(":p@"), "{e}");
        let mut c = cfg("rtsp://cam/x");
        c.password_file = Some("/run/pw".into());
        assert!(c.validate().unwrap_err().to_string().contains("needs `username`"));
    }

    #[test]
    fn an_unknown_transport_is_a_parse_error() {
        let e = toml::from_str::<RtspConfig>("url = \"rtsp://cam/x\"\ntransport = \"quic\"").unwrap_err();
        assert!(e.to_string().contains("unknown variant `quic`"), "{e}");
    }

    #[test]
    fn a_missing_password_file_fails_the_build() {
        let mut c = cfg("rtsp://cam/x");
        c.username = Some("u".into());
        c.password_file = Some("/nonexistent/gradwatch-pw".into());
        let e = c.build(Arc::new(crate::base::clock::RealClock), None).err().unwrap().to_string();
        assert!(e.contains("/nonexistent/gradwatch-pw") && e.contains("cannot read"), "{e}");
    }
}
