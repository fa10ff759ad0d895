//! Records keep their stored bytes; bad fields name record and field.

use super::*;
use crate::mac::Mac;
use std::net::Ipv4Addr;

fn kv(key: &str, value: &[u8]) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.to_vec(),
        create_revision: 1,
        mod_revision: 1,
        version: 1,
        lease: 0,
    }
}

fn round_trip<T: Serialize + DeserializeOwned>(json: &str) -> T {
    let kv = kv("k", json.as_bytes());
    let record: T = decode(&kv).unwrap();
    assert_eq!(String::from_utf8(encode(&record)).unwrap(), json);
    record
}

/// Typed fields store the same text as the strings they replaced: no data migration.
#[test]
fn records_keep_their_stored_bytes() {
    let e: EndpointRecord = round_trip(
        r#"{"id":"e1","network_id":"n1","host_id":"h1","address":"10.20.0.5/24","mac":"02:b7:0a:14:00:05","host_if":"vbe1","container_if":"tbe1","vlan":100,"mtu":1500,"created_at":1700000000,"lease":7587,"limits":{"egress_kbps":1000}}"#,
    );
    assert_eq!(e.address.ip, Ipv4Addr::new(10, 20, 0, 5));
    assert_eq!(e.mac, Mac::from_ip(e.address.ip));
    round_trip::<EndpointRecord>(
        r#"{"id":"e2","network_id":"n1","host_id":"h1","address":"10.20.0.6/24","mac":"02:42:0a:14:00:06","host_if":"vbe2","container_if":"tbe2","vlan":100,"mtu":9000,"created_at":1}"#,
    );
    let n: NetworkRecord = round_trip(
        r#"{"id":"n1","vlan":100,"vlan_auto":false,"mtu":1500,"subnet":"10.20.0.0/24","gateway":"10.20.0.1","pool_id":"p1","host_id":"h1","created_at":1700000000}"#,
    );
    assert_eq!(n.subnet, Some("10.20.0.0/24".parse().unwrap()));
    round_trip::<NetworkRecord>(
        r#"{"id":"n2","vlan":7,"vlan_auto":true,"mtu":1500,"subnet":null,"gateway":null,"pool_id":null,"host_id":"h1","created_at":2,"limits":{"egress_kbps":20000,"ingress_kbps":5000,"burst_kbits":800}}"#,
    );
}

/// A bad value names the record (its key) and what the field should hold.
#[test]
fn bad_fields_name_record_and_field() {
    let kv = kv(
        "endpoints/e1",
        br#"{"id":"e1","network_id":"n1","host_id":"h1","address":"10.20.0.5/24","mac":"zz","host_if":"vbe1","container_if":"tbe1","vlan":100,"mtu":1500,"created_at":1}"#,
    );
    let e = decode::<EndpointRecord>(&kv).unwrap_err().to_string();
    assert!(
        e.contains("endpoints/e1") && e.contains("MAC address"),
        "{e}"
    );
}

#[test]
fn bad_pool_subnet_names_record_and_field() {
    let pool: PoolRecord = round_trip(
        r#"{"id":"p1","address_space":"berth-local","subnet":"10.20.0.1/24","sub_pool":null,"auto":false,"network_id":null,"host_id":"h1","created_at":1,"blocks":true}"#,
    );
    let e = pool.network().unwrap_err().to_string();
    assert!(e.contains("pools/p1") && e.contains("bad subnet"), "{e}");
}
