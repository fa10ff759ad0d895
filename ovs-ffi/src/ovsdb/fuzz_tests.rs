//! Fuzz target: what ovsdb-server sends, from bytes on the socket (framing, in arbitrary
//! read sizes) to the monitor cache (update2 diffs). Any input must end in values or errors,
//! never a panic. Seeds: `fuzz/corpus/ovsdb-jsonrpc/`.

use super::frame::JsonFramer;
use super::*;

fn columns() -> Columns {
    let schema = json!({"tables": {
        "Port": {"columns": {
            "name": {"type": "string"},
            "tag": {"type": {"key": {"type": "integer"}, "min": 0, "max": 1}},
            "external_ids": {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}},
        }},
        "Interface": {"columns": {
            "name": {"type": "string"},
            "ofport": {"type": {"key": "integer", "min": 0, "max": 1}},
            "external_ids": {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}},
        }},
        "Bridge": {"columns": {
            "name": {"type": "string"},
            "ports": {"type": {"key": {"type": "uuid", "refTable": "Port"}, "min": 0, "max": "unlimited"}},
            "datapath_type": {"type": "string"},
        }},
        "Open_vSwitch": {"columns": {
            "cur_cfg": {"type": "integer"},
            "next_cfg": {"type": "integer"},
        }},
    }});
    let monitor = ["Port", "Interface", "Bridge", "Open_vSwitch"]
        .iter()
        .map(|t| (t.to_string(), None))
        .collect::<Vec<_>>();
    Columns::from_schema(&schema, &monitor).unwrap()
}

#[test]
fn fuzz_ovsdb_frames_and_updates() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let cols = columns();
    let mut cache = Cache::default();
    let mut split = 0usize;
    plugin_transport::fuzz::run(&corpus, "ovsdb-jsonrpc", |_, input| {
        // The same bytes in reads of varying sizes must frame the same way.
        split = split.wrapping_mul(31).wrapping_add(7);
        let chunk = 1 + split % 64;
        let mut framer = JsonFramer::new(1 << 20);
        let mut messages = Vec::new();
        for piece in input.chunks(chunk) {
            match framer.push(piece) {
                Ok(values) => messages.extend(values),
                Err(_) => return,
            }
        }
        let whole = JsonFramer::new(1 << 20).push(input);
        if let Ok(all) = whole {
            assert_eq!(all, messages, "framing depends on read sizes");
        }
        for msg in messages {
            let updates = msg
                .get("params")
                .and_then(Value::as_array)
                .and_then(|p| p.get(1));
            if let Some(updates) = updates {
                let _ = cache.apply2(updates, &cols);
            }
        }
    });
}
