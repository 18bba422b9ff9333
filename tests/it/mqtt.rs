//! MQTT sink against a real mosquitto broker that each test starts on 127.0.0.1 and a free
//! port. Needs `/usr/sbin/mosquitto` (Debian package `mosquitto`; `make deps` installs it).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver};
use gradwatch::alert::{Alert, Event};
use gradwatch::sink::{MqttSink, MqttSinkConfig, Sink};
use rumqttc::{Client, MqttOptions, Packet, QoS};

fn mosquitto_bin() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    if let Ok(out) = Command::new("sh").args(["-c", "command -v mosquitto"]).output() {
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !s.is_empty() {
            return PathBuf::from(s);
        }
    }
    panic!(
        "mosquitto not found: the MQTT tests need a real broker. Install it with \
         `apt-get install -y mosquitto` (or `make deps`)."
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A mosquitto process with a generated config (also used by `delivery`).
pub(crate) struct Broker {
    pub(crate) port: u16,
    conf: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
}

impl Broker {
    /// `persistent`: keep sessions and queued messages across a restart (saved on SIGTERM).
    pub(crate) fn start(dir: &Path, persistent: bool) -> Broker {
        Broker::start_with(dir, persistent, "")
    }

    /// [`Broker::start`] with `extra` lines of mosquitto config.
    pub(crate) fn start_with(dir: &Path, persistent: bool, extra: &str) -> Broker {
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        let mut c = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest file {}\n",
            dir.join("mosquitto.log").display()
        );
        if persistent {
            c += &format!("persistence true\npersistence_location {}/\npersistence_file broker.db\n", dir.display());
        } else {
            c += "persistence false\n";
        }
        // Running as root, mosquitto would switch to user `mosquitto`, which cannot write
        // the temporary directory.
        c += "user root\n";
        c += extra;
        std::fs::write(&conf, c).unwrap();
        let mut b = Broker { port, conf, dir: dir.to_path_buf(), child: None };
        b.spawn();
        b
    }

    pub(crate) fn spawn(&mut self) {
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run mosquitto");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > end {
                let log = std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default();
                panic!("mosquitto did not start listening on {}: {log}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (a clean broker stop, which saves persistence) and wait for exit.
    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let end = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > end {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A received publish.
#[derive(Debug, Clone)]
pub(crate) struct Got {
    pub(crate) topic: String,
    pub(crate) payload: String,
    /// The payload's bytes (binary payloads: snapshots).
    pub(crate) bytes: Vec<u8>,
    qos: QoS,
    pub(crate) retain: bool,
}

/// A subscriber driving its own rumqttc connection on a thread.
pub(crate) struct Sub {
    pub(crate) rx: Receiver<Got>,
    client: Client,
}

impl Sub {
    pub(crate) fn connect(port: u16, id: &str, filter: &str, clean: bool) -> Sub {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_clean_session(clean);
        let (client, mut conn) = Client::new(o, 64);
        let (tx, rx) = unbounded();
        let (sub_tx, sub_rx) = unbounded();
        let c2 = client.clone();
        let filter = filter.to_string();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(rumqttc::Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = c2.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(rumqttc::Event::Incoming(Packet::SubAck(_))) => {
                        let _ = sub_tx.send(());
                    }
                    Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(Got {
                            topic: p.topic.clone(),
                            payload: String::from_utf8_lossy(&p.payload).into_owned(),
                            bytes: p.payload.to_vec(),
                            qos: p.qos,
                            retain: p.retain,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        sub_rx.recv_timeout(Duration::from_secs(10)).expect("subscriber got no SUBACK");
        Sub { rx, client }
    }

    /// Next publish matching `pred`, or panic after `secs`.
    pub(crate) fn next_where(&self, secs: u64, what: &str, pred: impl Fn(&Got) -> bool) -> Got {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(g) if pred(&g) => return g,
                Ok(_) => {}
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
    }
}

fn ev(i: u64) -> Event {
    Event::AlertUpdate {
        alert: Alert {
            id: format!("cam0-{i}-1704067200000"),
            stream: "cam0".into(),
            time: "2024-01-01T00:00:01.000Z".into(),
            first_seq: i,
            last_seq: i,
            first_time: "2024-01-01T00:00:00.000Z".into(),
            last_time: "2024-01-01T00:00:01.000Z".into(),
            duration_ms: 1000,
            frames: 1,
            frames_over: 1,
            peak_score: 2.5,
            mean_score: 2.5,
            threshold: 1.0,
            top_class: 1,
            top_class_name: None,
            confidence: 0.9,
            model: "m".into(),
            model_sha256: "00".repeat(32),
            tag: None,
            snapshot: None,
            heatmap: None,
            detail: Default::default(),
        },
    }
}

fn event_index(payload: &str) -> u64 {
    let e: Event = serde_json::from_str(payload).unwrap();
    e.alert().unwrap().first_seq
}

#[test]
fn events_arrive_qos1_and_status_is_retained_online() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), false);
    let sub = Sub::connect(broker.port, "t-sub", "gradwatch/box1/#", true);

    let cfg = MqttSinkConfig::new("127.0.0.1", broker.port, "box1");
    let mut sink = MqttSink::start("mqtt", &cfg).unwrap();
    let evs: Vec<Event> = (0..5).map(ev).collect();
    for e in &evs {
        sink.send(e).unwrap();
    }
    sink.flush(Instant::now() + Duration::from_secs(20)).unwrap();
    let st = sink.stats();
    assert_eq!((st.acked, st.pending, st.dropped), (5, 0, 0));

    let status = sub.next_where(10, "status", |g| g.topic == "gradwatch/box1/status");
    assert_eq!(status.payload, "online");
    for e in &evs {
        let g = sub.next_where(10, "event", |g| g.topic.contains("/events/"));
        assert_eq!(g.topic, "gradwatch/box1/events/cam0");
        assert_eq!(g.qos, QoS::AtLeastOnce);
        let back: Event = serde_json::from_str(&g.payload).unwrap();
        assert_eq!(&back, e);
    }

    // A late subscriber gets the status as a retained message.
    let late = Sub::connect(broker.port, "t-late", "gradwatch/box1/status", true);
    let g = late.next_where(10, "retained status", |_| true);
    assert!(g.retain);
    assert_eq!(g.payload, "online");

    // A clean shutdown leaves "offline" behind.
    drop(sink);
    let g = sub.next_where(10, "offline", |g| g.topic == "gradwatch/box1/status");
    assert_eq!(g.payload, "offline");
}

/// A TCP proxy whose connections the test can cut, to kill the sink's connection uncleanly.
struct Proxy {
    port: u16,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let c2 = conns.clone();
        std::thread::spawn(move || {
            for down in l.incoming() {
                let Ok(down) = down else { continue };
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let mut list = c2.lock().unwrap();
                list.push(down.try_clone().unwrap());
                list.push(up.try_clone().unwrap());
                drop(list);
                for (mut a, mut b) in [(down.try_clone().unwrap(), up.try_clone().unwrap()), (up, down)] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        loop {
                            match a.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if b.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = b.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, conns }
    }

    /// Cuts every connection (no MQTT DISCONNECT is sent: an unclean death).
    fn kill_all(&self) {
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

#[test]
fn last_will_offline_after_unclean_death() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), false);
    let proxy = Proxy::start(broker.port);
    let sub = Sub::connect(broker.port, "t-will", "gradwatch/box2/status", true);

    let cfg = MqttSinkConfig::new("127.0.0.1", proxy.port, "box2");
    let mut sink = MqttSink::start("mqtt", &cfg).unwrap();
    let g = sub.next_where(10, "online", |_| true);
    assert_eq!(g.payload, "online");

    proxy.kill_all();
    let g = sub.next_where(10, "last will", |_| true);
    assert_eq!(g.payload, "offline", "the broker must publish the last will");
    // The sink reconnects (through the proxy, still accepting) and says "online" again.
    let g = sub.next_where(20, "online after reconnect", |_| true);
    assert_eq!(g.payload, "online");
    sink.send(&ev(1)).unwrap();
    sink.flush(Instant::now() + Duration::from_secs(20)).unwrap();
    assert!(sink.stats().connects >= 2);
}

#[test]
fn broker_restart_loses_no_event() {
    const N: u64 = 60;
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), true);
    // Persistent subscriber session, so the *subscriber* misses nothing while the broker
    // restarts (what is under test is the sink's buffering and re-sending).
    let sub = Sub::connect(broker.port, "t-restart", "gradwatch/box3/events/#", false);

    let cfg = MqttSinkConfig::new("127.0.0.1", broker.port, "box3");
    let mut sink = MqttSink::start("mqtt", &cfg).unwrap();

    let mut arrivals: Vec<u64> = Vec::new();
    let mut collect = |sub: &Sub, until: &dyn Fn(&[u64]) -> bool, secs: u64| {
        let end = Instant::now() + Duration::from_secs(secs);
        while !until(&arrivals) {
            let left = end.saturating_duration_since(Instant::now());
            match sub.rx.recv_timeout(left) {
                Ok(g) => arrivals.push(event_index(&g.payload)),
                Err(_) => break,
            }
        }
    };

    for i in 0..20 {
        sink.send(&ev(i)).unwrap();
    }
    collect(&sub, &|a| a.len() >= 20, 20);

    // A burst immediately followed by the stop: some of it is in flight (written, not yet
    // acknowledged) when the broker goes away.
    for i in 20..30 {
        sink.send(&ev(i)).unwrap();
    }
    broker.stop();
    // Stream on while the broker is down: buffered.
    for i in 30..40 {
        sink.send(&ev(i)).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    let st = sink.stats();
    assert!(!st.connected, "{st:?}");
    assert!(st.pending >= 10, "{st:?}");

    broker.spawn();
    for i in 40..N {
        sink.send(&ev(i)).unwrap();
    }
    sink.flush(Instant::now() + Duration::from_secs(30)).expect("events not acknowledged after the broker came back");
    collect(&sub, &|a| (0..N).all(|i| a.contains(&i)), 30);

    let mut first_seen = Vec::new();
    for &i in &arrivals {
        if !first_seen.contains(&i) {
            first_seen.push(i);
        }
    }
    assert_eq!(
        first_seen,
        (0..N).collect::<Vec<_>>(),
        "every event at least once, in order of first arrival (arrivals: {arrivals:?})"
    );
    let st = sink.stats();
    assert_eq!(st.dropped, 0);
    assert!(st.connects >= 2, "{st:?}");
}

#[test]
fn mqtt_from_toml_config_through_fanout() {
    use gradwatch::sink::{build_all, Fanout, SinkConfig};
    #[derive(serde::Deserialize)]
    struct Top {
        sink: Vec<SinkConfig>,
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), false);
    let sub = Sub::connect(broker.port, "t-fan", "gradwatch/box4/#", true);
    let top: Top = toml::from_str(&format!(
        "[[sink]]\nkind = \"mqtt\"\nhost = \"127.0.0.1\"\nport = {}\nclient_id = \"box4\"\n",
        broker.port
    ))
    .unwrap();
    let fan = Fanout::new(build_all(&top.sink).unwrap(), 64).unwrap();
    for i in 0..3 {
        fan.send(&ev(i));
    }
    let report = fan.shutdown(Instant::now() + Duration::from_secs(20));
    assert!(report.clean(), "{report:?}");
    let mut got = Vec::new();
    while got.len() < 3 {
        let g = sub.next_where(10, "event", |g| g.topic.contains("/events/"));
        got.push(event_index(&g.payload));
    }
    assert_eq!(got, [0, 1, 2]);
    let g = sub.next_where(10, "offline", |g| g.payload == "offline");
    assert_eq!(g.topic, "gradwatch/box4/status");
}

/// The retained messages under `filter`, as a late subscriber gets them (topic -> message),
/// until every topic of `want` came with the retain flag (live publishes are skipped).
fn retained(port: u16, id: &str, filter: &str, want: &[&str]) -> std::collections::BTreeMap<String, Got> {
    let sub = Sub::connect(port, id, filter, true);
    let mut got = std::collections::BTreeMap::new();
    let end = Instant::now() + Duration::from_secs(10);
    while !want.iter().all(|t| got.contains_key(*t)) {
        let left = end.saturating_duration_since(Instant::now());
        match sub.rx.recv_timeout(left) {
            Ok(g) if g.retain => {
                got.insert(g.topic.clone(), g);
            }
            Ok(_) => {}
            Err(_) => panic!("retained messages missing: want {want:?}, got {:?}", got.keys().collect::<Vec<_>>()),
        }
    }
    got
}

/// The first message on each of `topics` from `sub`, in whatever order they come.
fn first_of(sub: &Sub, secs: u64, topics: &[&str]) -> std::collections::BTreeMap<String, Got> {
    let mut got = std::collections::BTreeMap::new();
    let end = Instant::now() + Duration::from_secs(secs);
    while !topics.iter().all(|t| got.contains_key(*t)) {
        match sub.rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(g) => {
                if topics.contains(&g.topic.as_str()) && !got.contains_key(&g.topic) {
                    got.insert(g.topic.clone(), g);
                }
            }
            Err(_) => panic!("no message on some of {topics:?}; got {:?}", got.keys().collect::<Vec<_>>()),
        }
    }
    got
}

fn json(g: &Got) -> serde_json::Value {
    serde_json::from_str(&g.payload).unwrap_or_else(|e| panic!("{}: not JSON ({e}): {}", g.topic, g.payload))
}

/// `dashboard` + `discovery`: retained state, attributes, snapshot, availability and Home
/// Assistant discovery; score updates rate-limited; everything published again after an
/// unclean reconnect (the last will in between); "offline" on a clean stop.
#[test]
fn dashboard_topics_and_home_assistant_discovery() {
    use gradwatch::metrics::Metrics;
    use serde_json::json as j;
    use std::time::SystemTime;

    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), false);
    let proxy = Proxy::start(broker.port);
    let live = Sub::connect(broker.port, "t-dash-live", "#", true);

    let metrics = Metrics::new();
    let cam = metrics.stream("cam0");
    cam.status.event_json(&j!({"event": "stream_up", "stream": "cam0", "time": "2024-01-01T00:00:00.000Z"}));
    cam.status.frame(SystemTime::now(), 0.5, 2.0);

    let mut cfg = MqttSinkConfig::new("127.0.0.1", proxy.port, "box5");
    cfg.discovery = true;
    cfg.state_interval_ms = 1000;
    cfg.keep_alive_s = 5;
    let sink = MqttSink::start_with("mqtt", &cfg, Some(metrics.clone())).unwrap();

    let base = "gradwatch/box5";
    let (avail, state, attrs, snap) = (
        format!("{base}/availability"),
        format!("{base}/cam0/state"),
        format!("{base}/cam0/attributes"),
        format!("{base}/cam0/snapshot"),
    );
    let disc = [
        "homeassistant/binary_sensor/gradwatch_box5/cam0_trust/config",
        "homeassistant/sensor/gradwatch_box5/cam0_score/config",
        "homeassistant/image/gradwatch_box5/cam0_snapshot/config",
    ];
    let mut want: Vec<&str> = vec![&avail, &state, &attrs];
    want.extend(disc);
    // Every topic seen live first: a subscriber that connects between the state and the
    // attributes publications gets the attributes live, not retained (seen once on a loaded
    // machine).
    let _ = first_of(&live, 10, &want);
    let r = retained(broker.port, "t-dash-1", "#", &want);
    assert_eq!(r[&avail].payload, "online");
    assert_eq!(r[&avail].qos, QoS::AtLeastOnce);
    assert!(!r.contains_key(&format!("{base}/status")), "availability replaces status");
    assert_eq!(r[&state].payload, "ok");
    let a = json(&r[&attrs]);
    assert_eq!((a["state"].as_str(), a["score"].as_f64(), a["threshold"].as_f64()), (Some("ok"), Some(0.5), Some(2.0)));
    assert!(a["alert_id"].is_null(), "{a}");
    let b = json(&r[disc[0]]);
    assert_eq!(b["device_class"], "problem");
    assert_eq!(b["state_topic"], state.as_str());
    assert_eq!(b["availability_topic"], avail.as_str());
    assert_eq!(b["unique_id"], "gradwatch_box5_cam0_trust");
    assert_eq!(b["device"]["identifiers"][0], "gradwatch_box5");
    let s = json(&r[disc[1]]);
    assert_eq!(
        (s["state_topic"].as_str(), s["value_template"].as_str()),
        (Some(attrs.as_str()), Some("{{ value_json.score }}"))
    );
    let i = json(&r[disc[2]]);
    assert_eq!((i["image_topic"].as_str(), i["content_type"].as_str()), (Some(snap.as_str()), Some("image/jpeg")));
    // One device for the three entities, three distinct ids.
    let ids: std::collections::HashSet<_> = [&b, &s, &i].iter().map(|x| x["unique_id"].to_string()).collect();
    assert_eq!(ids.len(), 3);

    // Scores: at most one attributes update per second per stream.
    while live.rx.try_recv().is_ok() {}
    let t0 = Instant::now();
    let mut k = 0;
    while t0.elapsed() < Duration::from_millis(2500) {
        cam.status.frame(SystemTime::now(), 0.6 + k as f32 * 0.001, 2.0);
        k += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let updates = live.rx.try_iter().filter(|g| g.topic == attrs).count();
    assert!((1..=4).contains(&updates), "{updates} attributes updates for {k} frames in 2.5 s");

    // An alert with a snapshot: degraded at once, the alert id, the JPEG bytes (the file
    // appears after the event, as the snapshot thread writes it).
    let jpeg: Vec<u8> =
        [&[0xFF, 0xD8, 0xFF, 0xE0][..], &(0..=255u8).cycle().take(5000).collect::<Vec<_>>(), &[0xFF, 0xD9]].concat();
    let file = dir.path().join("cam0-7-1704067200000-start.jpg");
    cam.status.event_json(&j!({"event": "alert_start", "id": "cam0-7-1704067200000", "stream": "cam0",
        "peak_score": 3.0, "threshold": 2.0, "snapshot": file.display().to_string()}));
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&file, &jpeg).unwrap();
    let g = live.next_where(10, "degraded", |g| g.topic == state);
    assert_eq!(g.payload, "degraded");
    let g =
        live.next_where(10, "attributes with the alert id", |g| g.topic == attrs && json(g)["alert_id"].is_string());
    assert_eq!(json(&g)["alert_id"], "cam0-7-1704067200000");
    let g = live.next_where(15, "snapshot", |g| g.topic == snap);
    assert_eq!(g.bytes, jpeg);
    let r = retained(broker.port, "t-dash-2", &format!("{base}/cam0/#"), &[&state, &snap]);
    assert_eq!(r[&snap].bytes, jpeg);
    assert_eq!(r[&state].payload, "degraded");

    // An unclean death of the connection: the broker publishes the will; after the reconnect
    // the sink publishes every retained value again.
    while live.rx.try_recv().is_ok() {}
    proxy.kill_all();
    let g = live.next_where(15, "last will", |g| g.topic == avail);
    assert_eq!(g.payload, "offline");
    let g = live.next_where(20, "online again", |g| g.topic == avail);
    assert_eq!(g.payload, "online");
    let again = first_of(&live, 10, &[&state, &attrs, &snap, disc[0], disc[1], disc[2]]);
    assert_eq!(again[&snap].bytes, jpeg);
    assert_eq!(again[&state].payload, "degraded");

    // Stream down: state "down", the reason in the attributes.
    cam.status.event_json(
        &j!({"event": "alert_end", "id": "cam0-7-1704067200000", "stream": "cam0", "reason": "stream_down"}),
    );
    cam.status.event_json(&j!({"event": "stream_down", "stream": "cam0", "reason": "unplugged"}));
    let g = live.next_where(10, "down", |g| g.topic == state && g.payload == "down");
    assert_eq!(g.payload, "down");
    let g = live.next_where(10, "down attributes", |g| g.topic == attrs && json(g)["state"] == "down");
    assert_eq!(json(&g)["down_reason"], "unplugged");
    assert!(json(&g)["alert_id"].is_null());
    assert_eq!(json(&g)["last_alert_id"], "cam0-7-1704067200000");

    drop(sink);
    let g = live.next_where(10, "offline", |g| g.topic == avail);
    assert_eq!(g.payload, "offline");
}

/// Without the daemon's metrics the dashboard follows the events sent to the sink; events
/// still go to the events topic, spooled as before.
#[test]
fn dashboard_from_events_alone() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), false);
    let sub = Sub::connect(broker.port, "t-dash-ev", "gradwatch/box6/#", true);
    let mut cfg = MqttSinkConfig::new("127.0.0.1", broker.port, "box6");
    cfg.dashboard = true;
    let mut sink = MqttSink::start("mqtt", &cfg).unwrap();
    let g = sub.next_where(10, "availability", |g| g.topic == "gradwatch/box6/availability");
    assert_eq!(g.payload, "online");
    sink.send(&ev(3)).unwrap();
    let (state, event) = ("gradwatch/box6/cam0/state", "gradwatch/box6/events/cam0");
    let attrs = "gradwatch/box6/cam0/attributes";
    let got = first_of(&sub, 10, &[state, event, attrs]);
    assert_eq!(got[state].payload, "degraded");
    assert_eq!(event_index(&got[event].payload), 3);
    let a = json(&got[attrs]);
    assert_eq!((a["alert_id"].as_str(), a["score"].is_null()), (Some("cam0-3-1704067200000"), true), "{a}");
    sink.flush(Instant::now() + Duration::from_secs(20)).unwrap();
    // No discovery without `discovery = true`.
    let r = retained(broker.port, "t-dash-ev2", "#", &[attrs, state]);
    assert!(r.keys().all(|t| !t.starts_with("homeassistant/")), "{:?}", r.keys());
}

/// Publishes `msgs` retained (QoS 1) from a client of its own; returns once all are acknowledged.
fn publish_retained(port: u16, msgs: &[(&str, &str)]) {
    let mut o = MqttOptions::new("t-seed", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = Client::new(o, 64);
    for (topic, payload) in msgs {
        client.publish(*topic, QoS::AtLeastOnce, true, payload.as_bytes().to_vec()).unwrap();
    }
    let (mut acks, end) = (0, Instant::now() + Duration::from_secs(10));
    while acks < msgs.len() {
        assert!(Instant::now() < end, "the broker acknowledged {acks} of {} seeded messages", msgs.len());
        if let Ok(Ok(rumqttc::Event::Incoming(Packet::PubAck(_)))) = conn.recv_timeout(Duration::from_millis(100)) {
            acks += 1;
        }
    }
    let _ = client.try_disconnect();
}

/// Every retained message under `filter` that a late subscriber gets within `wait`.
fn retained_within(port: u16, id: &str, filter: &str, wait: Duration) -> std::collections::BTreeMap<String, Got> {
    let sub = Sub::connect(port, id, filter, true);
    let end = Instant::now() + wait;
    let mut got = std::collections::BTreeMap::new();
    while let Ok(g) = sub.rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
        if g.retain {
            got.insert(g.topic.clone(), g);
        }
    }
    got
}

/// A stream removed from the config while the daemon was stopped leaves no ghost behind: its
/// retained state, attributes, snapshot and Home Assistant entities are deleted when the sink
/// starts; the configured streams' topics, other client ids' and other programs' stay.
#[test]
fn retained_topics_of_removed_streams_are_cleared() {
    use gradwatch::metrics::Metrics;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), false);
    let ghost = [
        "gradwatch/box7/ghost/state",
        "gradwatch/box7/ghost/attributes",
        "gradwatch/box7/ghost/snapshot",
        "homeassistant/binary_sensor/gradwatch_box7/ghost_trust/config",
        "homeassistant/sensor/gradwatch_box7/ghost_score/config",
        "homeassistant/image/gradwatch_box7/ghost_snapshot/config",
    ];
    let keep = [
        // A configured stream before its first frame: its last value stays until the new one.
        ("gradwatch/box7/cam0/state", "degraded"),
        ("gradwatch/box8/ghost/state", "ok"),
        ("homeassistant/sensor/other_node/ghost_score/config", "{}"),
        ("gradwatch/box7/ghost/other_leaf", "x"),
    ];
    let mut seed: Vec<(&str, &str)> = ghost.iter().map(|t| (*t, "old")).collect();
    seed.extend(keep);
    publish_retained(broker.port, &seed);
    assert_eq!(retained_within(broker.port, "t-sweep-0", "#", Duration::from_millis(500)).len(), seed.len());

    let metrics = Metrics::new();
    metrics.stream("cam0");
    let mut cfg = MqttSinkConfig::new("127.0.0.1", broker.port, "box7");
    cfg.discovery = true;
    let sink = MqttSink::start_with("mqtt", &cfg, Some(metrics)).unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    for k in 1.. {
        let r = retained_within(broker.port, &format!("t-sweep-{k}"), "#", Duration::from_millis(500));
        if ghost.iter().all(|t| !r.contains_key(*t)) {
            for (t, p) in keep {
                assert_eq!(r.get(t).map(|g| g.payload.as_str()), Some(p), "{t} must stay");
            }
            assert!(r.contains_key("homeassistant/sensor/gradwatch_box7/cam0_score/config"));
            break;
        }
        assert!(Instant::now() < end, "ghost topics still retained: {:?}", r.keys().collect::<Vec<_>>());
    }
    drop(sink);
}

/// The real daemon with `discovery = true`, killed with SIGKILL: the broker publishes the
/// retained "offline" last will on the availability topic, and the state topics stay.
#[test]
fn killed_daemon_leaves_offline_availability() {
    use crate::common::daemon::{assets, head, write, Daemon};
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), false);
    let sub = Sub::connect(broker.port, "t-kill", "gradwatch/box7/#", true);
    let cfg = format!(
        "{}\n[[stream]]\nname = \"cam\"\nkind = \"replay\"\npath = \"{}\"\nfps = 20\nrepeat = true\n\n\
         [[sink]]\nkind = \"mqtt\"\nhost = \"127.0.0.1\"\nport = {}\nclient_id = \"box7\"\nkeep_alive_s = 5\n\
         discovery = true\nspool_max_bytes = 0\n",
        head(""),
        assets().frames.display(),
        broker.port
    );
    let path = write(dir.path(), "kill.toml", &cfg);
    let mut d = Daemon::start(&["run", "--config", path.to_str().unwrap()]);
    let g = sub.next_where(60, "availability online", |g| g.topic == "gradwatch/box7/availability");
    assert_eq!(g.payload, "online");
    let g = sub.next_where(30, "state", |g| g.topic == "gradwatch/box7/cam/state");
    assert_eq!(g.payload, "ok");
    let g = sub.next_where(30, "attributes with a score", |g| {
        g.topic == "gradwatch/box7/cam/attributes" && json(g)["score"].is_number()
    });
    assert!(json(&g)["threshold"].is_number(), "{}", g.payload);
    assert!(d.running());
    d.signal("KILL");
    d.wait(Duration::from_secs(10));
    let g = sub.next_where(20, "last will", |g| g.topic == "gradwatch/box7/availability");
    assert_eq!(g.payload, "offline");
    let r = retained(
        broker.port,
        "t-kill-late",
        "#",
        &[
            "gradwatch/box7/availability",
            "gradwatch/box7/cam/state",
            "homeassistant/binary_sensor/gradwatch_box7/cam_trust/config",
        ],
    );
    assert_eq!(r["gradwatch/box7/availability"].payload, "offline");
    assert_eq!(r["gradwatch/box7/cam/state"].payload, "ok");
}

/// A publish the broker refuses (mosquitto drops the connection over a packet larger than its
/// `max_packet_size`, as it does over a control character in a topic) goes to the dead-letter
/// file after `DEAD_LETTER_TRIES` connections died with it alone in flight, is counted once
/// (reason `dead_letter`) and logged, and the events behind it flow. (It was re-sent at the
/// head of the queue for ever and nothing behind it was delivered, even after a restart.)
#[test]
fn a_poison_event_is_dead_lettered_and_the_rest_flows() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_with(dir.path(), false, "max_packet_size 4000\n");
    let sub = Sub::connect(broker.port, "t-sub", "gradwatch/box1/events/#", true);
    let spool = dir.path().join("spool");
    let mut cfg = MqttSinkConfig::new("127.0.0.1", broker.port, "box1");
    cfg.spool_dir = Some(spool.clone());
    let mut sink = MqttSink::start("mqtt", &cfg).unwrap();
    let mut poison = ev(1);
    if let Event::AlertUpdate { alert } = &mut poison {
        alert.tag = Some("x".repeat(10_000));
    }
    sink.send(&ev(0)).unwrap();
    sink.send(&poison).unwrap();
    for i in 2..6 {
        sink.send(&ev(i)).unwrap();
    }
    let mut got = std::collections::BTreeSet::new();
    while got.len() < 5 {
        let g = sub.next_where(60, "the events behind the poison", |g| g.topic.contains("/events/"));
        got.insert(event_index(&g.payload));
    }
    assert_eq!(got.into_iter().collect::<Vec<_>>(), [0, 2, 3, 4, 5]);
    sink.flush(Instant::now() + Duration::from_secs(20)).unwrap();
    let st = sink.stats();
    assert_eq!((st.pending, st.dropped), (0, 1), "{st:?}");
    assert_eq!(sink.drops(), [("dead_letter", 1)]);
    let dead = std::fs::read_to_string(spool.join("mqtt").join("dead-letter.jsonl")).unwrap();
    assert_eq!(dead.lines().count(), 1, "{dead}");
    assert_eq!(event_index(dead.lines().next().unwrap()), 1);
    // Not in the spool any more: a restart does not send it again.
    drop(sink);
    let (_sp, pending) = gradwatch::sink::mqtt::spool::Spool::open(&spool.join("mqtt"), 16 << 20).unwrap();
    assert!(pending.is_empty(), "{pending:?}");
}
