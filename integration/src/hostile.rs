//! Malformed requests for the hostile-input tests: from a valid request of each method, every
//! way of getting it wrong that must be refused. Each generated request is invalid by
//! construction (cut JSON, wrong types, hostile ids and names, bad option values, oversized
//! or deeply nested bodies), so a daemon must answer each with an error and change nothing.

use serde_json::{json, Value};

/// A method with a valid body, and what of it may be broken.
pub struct Method {
    pub name: &'static str,
    pub valid: Value,
    /// Top-level fields that must be strings naming something (ids, names): hostile values
    /// and wrong types there are refused.
    pub id_fields: &'static [&'static str],
    /// (JSON pointer, bad value) pairs: option values each refused on its own.
    pub bad_values: Vec<(&'static str, Value)>,
}

/// Ids and names that must never be accepted.
fn hostile_ids() -> Vec<Value> {
    vec![
        json!(""),
        json!("../../etc"),
        json!("a/b"),
        json!("nul\u{0}byte"),
        json!("é".repeat(40)),
        json!("x".repeat(300)),
        json!(" spaced "),
        json!(12345),
        json!(true),
        json!([]),
        json!({}),
    ]
}

/// Every malformed request for `m`, as (method, body bytes).
pub fn malformed(m: &Method) -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let text = m.valid.to_string();
    // Cut JSON: every prefix but the empty one and the whole (a prefix of an object is never
    // valid JSON).
    for cut in 1..text.len() {
        let prefix = &text.as_bytes()[..cut];
        out.push((m.name, prefix.to_vec()));
        // The same prefix with a byte no JSON continues with.
        for junk in [b"\x00".as_slice(), b",".as_slice(), b"\xff".as_slice()] {
            out.push((m.name, [prefix, junk].concat()));
        }
    }
    // Not an object at all, garbage, deep nesting.
    for body in [
        "[]".to_string(),
        "\"a string\"".to_string(),
        "42".to_string(),
        "{\"Name\":}".to_string(),
        "\u{0}\u{1}\u{2}".to_string(),
        "[".repeat(100_000),
        format!("{text}{text}"),
    ] {
        out.push((m.name, body.into_bytes()));
    }
    // Oversized: over the 1 MiB body limit.
    let mut big = m.valid.clone();
    if let Some(obj) = big.as_object_mut() {
        obj.insert("Pad".into(), json!("p".repeat(1 << 21)));
    }
    out.push((m.name, big.to_string().into_bytes()));
    // Hostile ids, and wrong types, in each id field.
    for field in m.id_fields {
        for bad in hostile_ids() {
            let mut body = m.valid.clone();
            body[*field] = bad;
            out.push((m.name, body.to_string().into_bytes()));
        }
        let mut body = m.valid.clone();
        if let Some(obj) = body.as_object_mut() {
            obj.remove(*field);
        }
        out.push((m.name, body.to_string().into_bytes()));
    }
    for (pointer, bad) in &m.bad_values {
        let mut body = m.valid.clone();
        if let Some(slot) = body.pointer_mut(pointer) {
            *slot = bad.clone();
            out.push((m.name, body.to_string().into_bytes()));
        }
    }
    out
}

/// volplugin's methods that take a body.
pub fn volume_methods() -> Vec<Method> {
    let opts = |k: &'static str, v: Value| (k, v);
    vec![
        Method {
            name: "VolumeDriver.Create",
            valid: json!({"Name": "hostile-new", "Opts": {"size": "400M", "fs": "xfs"}}),
            id_fields: &["Name"],
            bad_values: vec![
                opts("/Opts", json!("size=1G")),
                opts("/Opts", json!([1, 2])),
                opts("/Opts/size", json!("-1G")),
                opts("/Opts/size", json!("1Q")),
                opts("/Opts/size", json!("99999999999999999999T")),
                opts("/Opts/size", json!("18446744073709551615")),
                opts("/Opts/size", json!(400)),
                opts("/Opts/size", json!("1K")),
                opts("/Opts/fs", json!("btrfs")),
                opts("/Opts/fs", json!("")),
            ],
        },
        Method {
            name: "VolumeDriver.Create",
            valid: json!({"Name": "hostile-limited", "Opts": {"size": "400M", "fs": "ext4",
                "read_bps": "10M", "write_bps": "20M", "read_iops": "100", "write_iops": "200"}}),
            id_fields: &["Name"],
            bad_values: vec![
                opts("/Opts/read_bps", json!("-5")),
                opts("/Opts/read_bps", json!("abc")),
                opts("/Opts/write_bps", json!("1e99")),
                opts("/Opts/read_iops", json!("1.5")),
                opts("/Opts/write_iops", json!("99999999999999999999")),
                opts("/Opts/from", json!("../other")),
                opts("/Opts/from", json!("no-such-volume")),
            ],
        },
        Method {
            name: "VolumeDriver.Mount",
            valid: json!({"Name": "hostile-held", "ID": "c1"}),
            id_fields: &["Name"],
            bad_values: vec![opts("/ID", json!("")), opts("/ID", json!(7))],
        },
        Method {
            name: "VolumeDriver.Unmount",
            valid: json!({"Name": "hostile-held", "ID": "c1"}),
            id_fields: &["Name"],
            bad_values: vec![opts("/ID", json!(["x"]))],
        },
        Method {
            name: "VolumeDriver.Remove",
            valid: json!({"Name": "hostile-held"}),
            id_fields: &["Name"],
            bad_values: vec![],
        },
        Method {
            name: "VolumeDriver.Get",
            valid: json!({"Name": "hostile-held"}),
            id_fields: &["Name"],
            bad_values: vec![],
        },
        Method {
            name: "VolumeDriver.Path",
            valid: json!({"Name": "hostile-held"}),
            id_fields: &["Name"],
            bad_values: vec![],
        },
    ]
}

const NET: &str = "4e45544e45544e45544e45544e45544e45544e45544e45544e45544e45544e45";
const EP: &str = "45504550455045504550455045504550455045504550455045504550455045ab";

/// netplugin's network and IPAM methods that take a body (`pool`: an existing pool id).
pub fn network_methods(pool: &str) -> Vec<Method> {
    let v = |k: &'static str, v: Value| (k, v);
    vec![
        Method {
            name: "IpamDriver.RequestPool",
            valid: json!({"AddressSpace": "berth-local", "Pool": "10.231.99.0/24", "SubPool": "", "Options": {}, "V6": false}),
            id_fields: &[],
            bad_values: vec![
                v("/AddressSpace", json!("../x")),
                v("/AddressSpace", json!("é")),
                v("/AddressSpace", json!("a\u{0}")),
                v("/Pool", json!("10.231.99.0/33")),
                v("/Pool", json!("300.1.1.0/24")),
                v("/Pool", json!("10.231.99.1/24")),
                v("/Pool", json!("10.231.99.0/31")),
                v("/Pool", json!(24)),
                v("/SubPool", json!("10.9.9.0/25")),
                v("/V6", json!(true)),
                v("/V6", json!("yes")),
            ],
        },
        Method {
            name: "IpamDriver.RequestAddress",
            valid: json!({"PoolID": pool, "Address": "", "Options": {}}),
            id_fields: &["PoolID"],
            bad_values: vec![
                v("/Address", json!("10.231.98.999")),
                v("/Address", json!("10.9.9.9")),
                v("/Address", json!("::1")),
                v("/Address", json!(5)),
                v(
                    "/Options",
                    json!({"com.docker.network.endpoint.macaddress": "zz:zz"}),
                ),
                v(
                    "/Options",
                    json!({"com.docker.network.endpoint.macaddress": "01:00:5e:00:00:01"}),
                ),
            ],
        },
        Method {
            name: "IpamDriver.ReleasePool",
            valid: json!({"PoolID": "p-doesnotexist"}),
            id_fields: &["PoolID"],
            bad_values: vec![],
        },
        Method {
            name: "NetworkDriver.CreateNetwork",
            valid: json!({"NetworkID": NET, "Options": {"com.docker.network.generic": {"vlan": "3001"}},
                "IPv4Data": [{"AddressSpace": "berth-local", "Pool": "10.231.98.0/24", "Gateway": "10.231.98.1/24"}], "IPv6Data": []}),
            id_fields: &["NetworkID"],
            bad_values: vec![
                v("/Options/com.docker.network.generic/vlan", json!("0")),
                v("/Options/com.docker.network.generic/vlan", json!("4095")),
                v("/Options/com.docker.network.generic/vlan", json!("x")),
                v("/Options/com.docker.network.generic/mtu", json!("67")),
                v("/Options/com.docker.network.generic/bogus", json!("1")),
                v("/IPv4Data/0/Pool", json!("10.231.98.0/40")),
                v("/IPv4Data/0/Gateway", json!("10.231.97.1/24")),
                v("/IPv4Data", json!("none")),
            ],
        },
        Method {
            name: "NetworkDriver.CreateEndpoint",
            valid: json!({"NetworkID": NET, "EndpointID": EP,
                "Interface": {"Address": "10.231.98.5/24", "MacAddress": ""}, "Options": {}}),
            id_fields: &["NetworkID", "EndpointID"],
            bad_values: vec![
                v("/Interface/Address", json!("10.231.98.5/99")),
                v("/Interface/MacAddress", json!("not-a-mac")),
                v("/Interface", json!("eth0")),
            ],
        },
        Method {
            name: "NetworkDriver.Join",
            valid: json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/var/run/docker/netns/x", "Options": {}}),
            id_fields: &["NetworkID", "EndpointID"],
            bad_values: vec![],
        },
    ]
}
