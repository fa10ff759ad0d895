//! Optional TOML config files whose keys are the daemon's flag names: a flag given on the
//! command line wins over the file, the file over the built-in default.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// Merges the command-line settings `cli` (unset flags are `None`) over the config file.
/// `explicit` is `--config`: it must exist. Without it, `default_path` is read if present.
/// A key of the file that `cli` does not serialize (every field, `None` as null) is an error:
/// checked here rather than by `deny_unknown_fields`, which serde cannot combine with the
/// `flatten` that shares the common serve flags between the daemons.
pub fn merge_with_file<T>(
    cli: &T,
    explicit: Option<&Path>,
    default_path: &Path,
) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned,
{
    let path = explicit.unwrap_or(default_path);
    let text = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if explicit.is_none() && e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let parse_err = |message: String| ConfigError::Parse {
        path: path.to_path_buf(),
        message,
    };
    let mut merged = match &text {
        Some(text) => {
            let file: toml::Table = toml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
            let declared = declared_keys(cli).map_err(|e| parse_err(e.to_string()))?;
            if let Some(key) = file.keys().find(|k| !declared.contains(k)) {
                return Err(parse_err(unknown_key(key, &declared)));
            }
            serde_json::to_value(file).map_err(|e| parse_err(e.to_string()))?
        }
        None => serde_json::Value::Object(Default::default()),
    };
    let cli = serde_json::to_value(cli).map_err(|e| parse_err(e.to_string()))?;
    if let (Some(merged), serde_json::Value::Object(cli)) = (merged.as_object_mut(), cli) {
        for (key, value) in cli {
            if !value.is_null() {
                merged.insert(key, value);
            }
        }
    }
    serde_json::from_value(merged).map_err(|e| parse_err(e.to_string()))
}

/// The keys `value` serializes to, in declaration order (flattened fields included).
fn declared_keys<T: Serialize>(value: &T) -> serde_json::Result<Vec<String>> {
    struct Keys;
    impl<'de> serde::de::Visitor<'de> for Keys {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut keys = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<serde::de::IgnoredAny>()?;
                keys.push(key);
            }
            Ok(keys)
        }
    }
    // From the text: it keeps the declaration order, which a serde_json::Map would sort.
    let text = serde_json::to_string(value)?;
    serde::Deserializer::deserialize_map(&mut serde_json::Deserializer::from_str(&text), Keys)
}

/// serde's own wording for an unknown field, so the message reads as it did with
/// `deny_unknown_fields`.
fn unknown_key(key: &str, expected: &[String]) -> String {
    let quoted: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
    match quoted.as_slice() {
        [] => format!("unknown field `{key}`, there are no fields"),
        [one] => format!("unknown field `{key}`, expected {one}"),
        [a, b] => format!("unknown field `{key}`, expected {a} or {b}"),
        all => format!("unknown field `{key}`, expected one of {}", all.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    struct Settings {
        state_dir: Option<String>,
        max_size: Option<String>,
    }

    #[test]
    fn flags_win_over_file_and_unknown_keys_fail() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "state-dir = \"/from/file\"\nmax-size = \"1T\"\n").unwrap();
        let cli = Settings {
            state_dir: Some("/from/flag".into()),
            max_size: None,
        };
        let merged = merge_with_file(&cli, Some(&file), Path::new("/nonexistent")).unwrap();
        assert_eq!(
            merged,
            Settings {
                state_dir: Some("/from/flag".into()),
                max_size: Some("1T".into())
            }
        );

        std::fs::write(&file, "stat-dir = \"/typo\"\n").unwrap();
        let err = merge_with_file(&cli, Some(&file), Path::new("/nonexistent")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "config file {}: unknown field `stat-dir`, expected `state-dir` or `max-size`",
                file.display()
            )
        );
    }

    /// The daemons share their common flags through `flatten`, where serde cannot deny unknown
    /// fields: the check covers both parts, and names them in declaration order.
    #[test]
    fn unknown_keys_fail_with_flattened_settings() {
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        #[serde(rename_all = "kebab-case")]
        struct Daemon {
            #[serde(flatten)]
            common: Settings,
            zebra: Option<u8>,
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "zebra = 3\nmax-size = \"1T\"\n").unwrap();
        let cli = Daemon {
            common: Settings {
                state_dir: None,
                max_size: None,
            },
            zebra: None,
        };
        let merged = merge_with_file(&cli, Some(&file), Path::new("/x")).unwrap();
        assert_eq!(merged.zebra, Some(3));
        assert_eq!(merged.common.max_size.as_deref(), Some("1T"));
        std::fs::write(&file, "zebra = 3\nmax-sise = \"1T\"\n").unwrap();
        let err = merge_with_file(&cli, Some(&file), Path::new("/x")).unwrap_err();
        assert!(
            err.to_string().ends_with(
                "unknown field `max-sise`, expected one of `state-dir`, `max-size`, `zebra`"
            ),
            "{err}"
        );
    }

    #[test]
    fn missing_default_file_is_fine_missing_explicit_is_not() {
        let cli = Settings {
            state_dir: None,
            max_size: None,
        };
        let merged = merge_with_file(&cli, None, Path::new("/nonexistent/x.toml")).unwrap();
        assert_eq!(merged, cli);
        assert!(merge_with_file(
            &cli,
            Some(Path::new("/nonexistent/x.toml")),
            Path::new("/x")
        )
        .is_err());
    }
}
