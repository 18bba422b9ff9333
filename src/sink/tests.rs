//! Unit tests of `sink`.

use super::*;

#[test]
fn config_parses_each_kind() {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Top {
        sink: Vec<SinkConfig>,
    }
    let t: Top = toml::from_str(
        r#"
        [[sink]]
        kind = "stdout"
        [[sink]]
        kind = "file"
        path = "/tmp/x.jsonl"
        [[sink]]
        kind = "mqtt"
        host = "localhost"
        client_id = "box1"
        "#,
    )
    .unwrap();
    assert_eq!(t.sink.len(), 3);
    match &t.sink[1] {
        SinkConfig::File(f) => assert!(f.fsync),
        other => panic!("{other:?}"),
    }
    match &t.sink[2] {
        SinkConfig::Mqtt(m) => {
            assert_eq!(m.port, 1883);
            assert_eq!(m.qos, 1);
            assert_eq!(m.topic_prefix, "gradwatch");
            assert_eq!(m.buffer, 10_000);
        }
        other => panic!("{other:?}"),
    }
    for bad in [
        "[[sink]]\nkind = \"stdout\"\nfoo = 1",
        "[[sink]]\nkind = \"file\"\npath = \"x\"\nfsnc = true",
        "[[sink]]\nkind = \"mqtt\"\nhost = \"h\"\nclient_id = \"c\"\nprot = 1",
        "[[sink]]\nkind = \"kafka\"",
    ] {
        assert!(toml::from_str::<Top>(bad).is_err(), "{bad}");
    }
}

#[test]
fn duplicate_names_made_unique() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = |p: &str| SinkConfig::File(FileSinkConfig { name: None, path: dir.path().join(p), fsync: false });
    let sinks = build_all(&[cfg("a"), cfg("b"), cfg("c")]).unwrap();
    let names: Vec<_> = sinks.iter().map(|s| s.name().to_string()).collect();
    assert_eq!(names, ["file", "file-2", "file-3"]);
}
