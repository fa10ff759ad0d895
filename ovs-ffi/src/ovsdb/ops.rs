//! RFC 7047 transaction operations and datum encoding (section 5.1 and 5.2).

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// A row or partial row: column name -> datum.
pub type Row = Map<String, Value>;

/// `["uuid", "..."]`
pub fn uuid(u: &str) -> Value {
    json!(["uuid", u])
}

/// `["named-uuid", "..."]`: refers to a row inserted earlier in the same transaction.
pub fn named_uuid(n: &str) -> Value {
    json!(["named-uuid", n])
}

/// `["set", [...]]`
pub fn set<I: IntoIterator<Item = Value>>(items: I) -> Value {
    json!(["set", items.into_iter().collect::<Vec<_>>()])
}

/// `["map", [[k, v], ...]]` for string maps (external_ids, other_config, options).
pub fn str_map(m: &BTreeMap<String, String>) -> Value {
    json!([
        "map",
        m.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()
    ])
}

/// A condition `[column, function, value]`.
pub fn cond(column: &str, function: &str, value: Value) -> Value {
    json!([column, function, value])
}

pub fn insert(table: &str, row: Row, uuid_name: Option<&str>) -> Value {
    let mut op = json!({"op": "insert", "table": table, "row": row});
    if let Some(n) = uuid_name {
        op["uuid-name"] = json!(n);
    }
    op
}

pub fn update(table: &str, where_: Vec<Value>, row: Row) -> Value {
    json!({"op": "update", "table": table, "where": where_, "row": row})
}

/// `mutations` are `[column, mutator, value]`, mutator one of `+= -= *= /= %= insert delete`.
pub fn mutate(table: &str, where_: Vec<Value>, mutations: Vec<Value>) -> Value {
    json!({"op": "mutate", "table": table, "where": where_, "mutations": mutations})
}

pub fn delete(table: &str, where_: Vec<Value>) -> Value {
    json!({"op": "delete", "table": table, "where": where_})
}

pub fn select(table: &str, where_: Vec<Value>, columns: Option<&[&str]>) -> Value {
    let mut op = json!({"op": "select", "table": table, "where": where_});
    if let Some(c) = columns {
        op["columns"] = json!(c);
    }
    op
}

/// `wait`: abort the transaction unless the selected `columns` of the rows matching `where_`
/// are (`until == "=="`) or are not (`"!="`) exactly `rows`, after at most `timeout_ms`.
pub fn wait(
    table: &str,
    where_: Vec<Value>,
    columns: &[&str],
    until: &str,
    rows: Vec<Value>,
    timeout_ms: Option<u64>,
) -> Value {
    let mut op = json!({"op": "wait", "table": table, "where": where_, "columns": columns,
                        "until": until, "rows": rows});
    if let Some(t) = timeout_ms {
        op["timeout"] = json!(t);
    }
    op
}

pub fn comment(text: &str) -> Value {
    json!({"op": "comment", "comment": text})
}

/// The elements of a set datum (a single element may be written as the bare atom).
pub fn set_items(v: &Value) -> Vec<&Value> {
    match v.as_array() {
        Some(a) if a.len() == 2 && a[0] == "set" => a[1]
            .as_array()
            .map(|x| x.iter().collect())
            .unwrap_or_default(),
        Some(a) if a.len() == 2 && (a[0] == "uuid" || a[0] == "named-uuid") => vec![v],
        Some(_) => Vec::new(),
        None if v.is_null() => Vec::new(),
        None => vec![v],
    }
}

/// The UUID string of a `["uuid", ...]` atom.
pub fn as_uuid(v: &Value) -> Option<&str> {
    match v.as_array() {
        Some(a) if a.len() == 2 && a[0] == "uuid" => a[1].as_str(),
        _ => None,
    }
}

/// A string->string map datum; entries of other types are skipped.
pub fn as_str_map(v: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(a) = v.as_array() {
        if a.len() == 2 && a[0] == "map" {
            for pair in a[1].as_array().into_iter().flatten() {
                if let Some([k, v]) = pair.as_array().map(|p| p.as_slice()) {
                    if let (Some(k), Some(v)) = (k.as_str(), v.as_str()) {
                        out.insert(k.to_string(), v.to_string());
                    }
                }
            }
        }
    }
    out
}

/// Integers of an integer set (or a bare integer).
pub fn as_int_set(v: &Value) -> Vec<i64> {
    set_items(v)
        .into_iter()
        .filter_map(|x| x.as_i64())
        .collect()
}

/// Strings of a string set (or a bare string).
pub fn as_str_set(v: &Value) -> Vec<String> {
    set_items(v)
        .into_iter()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect()
}

/// UUIDs of a reference set (or a bare reference).
pub fn as_uuid_set(v: &Value) -> Vec<String> {
    set_items(v)
        .into_iter()
        .filter_map(|x| as_uuid(x).map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datum_decoding_tolerates_odd_shapes() {
        assert_eq!(as_int_set(&json!(5)), vec![5]);
        assert_eq!(as_int_set(&json!(["set", [1, 2]])), vec![1, 2]);
        assert!(as_int_set(&json!(["set", []])).is_empty());
        assert!(as_int_set(&json!(["set"])).is_empty());
        assert!(as_int_set(&json!({"x": 1})).is_empty());
        assert_eq!(as_uuid_set(&json!(["uuid", "a"])), vec!["a"]);
        assert_eq!(
            as_str_map(&json!(["map", [["a", "b"], [1, 2], "x"]])).len(),
            1
        );
        assert!(as_str_map(&json!(["map"])).is_empty());
    }
}
