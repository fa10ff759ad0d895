//! Docker's VolumeDriver wire types (docs/protocols.md §4). No logic here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `Plugin.Activate` answer.
#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct ActivateResponse {
    pub implements: Vec<&'static str>,
}

/// Docker sends `{}` or nothing for List, Capabilities and Activate; anything is accepted.
#[derive(Deserialize, Debug, Default)]
pub struct Empty {}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct CreateRequest {
    pub name: String,
    /// `-o key=value`; null when none were given.
    #[serde(default)]
    pub opts: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct NameRequest {
    pub name: String,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct MountRequest {
    pub name: String,
    /// Random per mount-point activation (not the container id); required since Docker 1.12.
    #[serde(rename = "ID")]
    pub id: String,
}

/// `{"Err":""}` is what Docker's own plugins answer on success.
#[derive(Serialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ErrOnly {
    pub err: String,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct MountpointResponse {
    pub mountpoint: String,
    pub err: String,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct GetResponse {
    pub volume: VolumeEntry,
    pub err: String,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct VolumeEntry {
    pub name: String,
    pub mountpoint: String,
    /// RFC 3339; an empty string would make Docker report "no such volume".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct ListResponse {
    pub volumes: Vec<VolumeEntry>,
    pub err: String,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct CapabilitiesResponse {
    pub capabilities: Capabilities,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct Capabilities {
    pub scope: &'static str,
}
