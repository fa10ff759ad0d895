//! What both admin CLIs and both daemons' startup share: calls to the admin socket, readable
//! tables, the private state directory, and the check that a packaged example config parses.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::client::{error_message, request, ClientError};

/// How long an admin command waits for the daemon.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);

/// One admin request; a non-200 answer becomes an error carrying the daemon's message.
pub async fn admin_call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Bytes, ClientError> {
    let (status, reply) = request(socket, method, path, body, ADMIN_TIMEOUT).await?;
    if status != StatusCode::OK {
        return Err(ClientError::Refused(error_message(&reply)));
    }
    Ok(reply)
}

/// An admin answer decoded as `T`; with `json` (the `--json` flag) it is printed as JSON
/// instead and `None` comes back, so the caller prints its own form only for `Some`.
pub fn decode_answer<T: serde::de::DeserializeOwned + serde::Serialize>(
    body: &[u8],
    json: bool,
) -> serde_json::Result<Option<T>> {
    let value: T = serde_json::from_slice(body)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(None);
    }
    Ok(Some(value))
}

/// Left-aligned columns separated by two spaces, header first.
pub fn format_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", text.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", format_table(header, rows));
}

/// Creates the state directory, root-only: it holds the daemon's whole state.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// The settings of a packaged example config, whose lines read `# key = value  # comment`,
/// as a config file would hold them once uncommented (for tests that keep docs and code in
/// step).
pub fn uncomment_example(example: &str) -> String {
    example
        .lines()
        .filter_map(|l| l.strip_prefix("# ").filter(|rest| rest.contains(" = ")))
        .map(|l| format!("{}\n", l.split("  #").next().unwrap_or(l).trim_end()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_decode_or_print_as_json() {
        let body = br#"{"a":1}"#;
        let v: Option<serde_json::Value> = decode_answer(body, false).unwrap();
        assert_eq!(v, Some(serde_json::json!({"a": 1})));
        assert_eq!(
            decode_answer::<serde_json::Value>(body, true).unwrap(),
            None
        );
        assert!(decode_answer::<Vec<u8>>(body, false).is_err());
    }

    #[test]
    fn table_and_example() {
        let rows = vec![
            vec!["db".to_string(), "10G".to_string()],
            vec!["backup-1".to_string(), "-".to_string()],
        ];
        assert_eq!(
            format_table(&["NAME", "SIZE"], &rows),
            "NAME      SIZE\ndb        10G\nbackup-1  -\n"
        );
        let example = "# Title\n# state-dir = \"/x\"\n# metrics = \"off\"        # or an address\n";
        assert_eq!(
            uncomment_example(example),
            "state-dir = \"/x\"\nmetrics = \"off\"\n"
        );
    }
}
