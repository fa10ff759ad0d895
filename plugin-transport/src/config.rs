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
/// Unknown keys in the file are errors when `T` denies unknown fields, which it should.
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
        assert!(err.to_string().contains("stat-dir"), "{err}");
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
