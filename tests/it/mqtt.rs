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

/// A mosquitto process with a generated config.
struct Broker {
    port: u16,
    conf: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
}

impl Broker {
    /// `persistent`: keep sessions and queued messages across a restart (saved on SIGTERM).
    fn start(dir: &Path, persistent: bool) -> Broker {
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
        std::fs::write(&conf, c).unwrap();
        let mut b = Broker { port, conf, dir: dir.to_path_buf(), child: None };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
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
    fn stop(&mut self) {
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
struct Got {
    topic: String,
    payload: String,
    qos: QoS,
    retain: bool,
}

/// A subscriber driving its own rumqttc connection on a thread.
struct Sub {
    rx: Receiver<Got>,
    client: Client,
}

impl Sub {
    fn connect(port: u16, id: &str, filter: &str, clean: bool) -> Sub {
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
    fn next_where(&self, secs: u64, what: &str, pred: impl Fn(&Got) -> bool) -> Got {
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
