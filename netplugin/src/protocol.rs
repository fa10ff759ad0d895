//! Docker's NetworkDriver and IpamDriver messages (docs/protocols.md §2–3), apart from the logic.
//! Unknown fields are ignored, missing ones default, `null` maps are empty.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// `null` or absent → default.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Accepts a string map whose values may be any JSON (Docker sends strings, bools, objects).
fn loose_map<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: Deserializer<'de>,
{
    let raw = Option::<BTreeMap<String, serde_json::Value>>::deserialize(d)?.unwrap_or_default();
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let s = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, s)
        })
        .collect())
}

#[derive(Debug, Default, Deserialize)]
pub struct Empty {}

#[derive(Debug, Serialize, Default)]
pub struct EmptyReply {}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ActivateResponse {
    pub implements: Vec<&'static str>,
}

// ---- NetworkDriver ----

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetCapabilities {
    pub scope: &'static str,
    pub connectivity_scope: &'static str,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(rename_all = "PascalCase")]
pub struct IpamData {
    #[serde(default, deserialize_with = "nullable")]
    pub address_space: String,
    #[serde(default, deserialize_with = "nullable")]
    pub pool: String,
    /// CIDR form (`10.1.0.1/24`).
    #[serde(default, deserialize_with = "nullable")]
    pub gateway: String,
    #[serde(default, deserialize_with = "nullable")]
    pub aux_addresses: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateNetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub options: BTreeMap<String, serde_json::Value>,
    #[serde(rename = "IPv4Data", default, deserialize_with = "nullable")]
    pub ipv4_data: Vec<IpamData>,
    #[serde(rename = "IPv6Data", default, deserialize_with = "nullable")]
    pub ipv6_data: Vec<IpamData>,
}

/// The `-o` options of `docker network create`.
pub const GENERIC_OPTIONS: &str = "com.docker.network.generic";

/// CreateNetwork's `Options` key saying whether the network has IPv4 (Docker 28, `--ipv4`;
/// absent before, and `true` unless `--ipv4=false`).
pub const ENABLE_IPV4: &str = "com.docker.network.enable_ipv4";

/// CreateEndpoint's `Options` key naming the container's interface (Docker 28:
/// `--driver-opt com.docker.network.endpoint.ifname=NAME`, Compose's `interface_name`).
pub const ENDPOINT_IFNAME: &str = "com.docker.network.endpoint.ifname";

/// CreateEndpoint's `Options` key of per-interface sysctls (Docker 25 and later apply them
/// themselves in the container, with `IFNAME` standing for the interface).
pub const ENDPOINT_SYSCTLS: &str = "com.docker.network.endpoint.sysctls";

impl CreateNetworkRequest {
    /// True when Docker says the network has no IPv4 (`--ipv4=false`, Docker 28).
    pub fn ipv4_disabled(&self) -> bool {
        self.options.get(ENABLE_IPV4) == Some(&serde_json::Value::Bool(false))
    }

    /// `com.docker.network.generic` as a string map.
    pub fn generic_options(&self) -> BTreeMap<String, String> {
        match self.options.get(GENERIC_OPTIONS) {
            Some(serde_json::Value::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    let s = match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), s)
                })
                .collect(),
            _ => BTreeMap::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkIdRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointInterface {
    #[serde(default, deserialize_with = "nullable")]
    pub address: String,
    #[serde(rename = "AddressIPv6", default, deserialize_with = "nullable")]
    pub address_ipv6: String,
    #[serde(default, deserialize_with = "nullable")]
    pub mac_address: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateEndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub interface: EndpointInterface,
    #[serde(default, deserialize_with = "nullable")]
    pub options: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Serialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ReplyInterface {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mac_address: String,
}

#[derive(Debug, Serialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct CreateEndpointResponse {
    pub interface: Option<ReplyInterface>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JoinRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub sandbox_key: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InterfaceName {
    pub src_name: String,
    pub dst_prefix: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct JoinResponse {
    pub interface_name: InterfaceName,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    pub disable_gateway_service: bool,
}

/// `ProgramExternalConnectivity` / `RevokeExternalConnectivity`: `Options` are the sandbox's
/// labels (the port map and exposed ports among them).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExternalConnectivityRequest {
    #[serde(rename = "NetworkID", default)]
    pub network_id: String,
    #[serde(rename = "EndpointID", default)]
    pub endpoint_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub options: BTreeMap<String, serde_json::Value>,
}

/// The option key under which Docker sends `-p`/`-P` bindings (CreateEndpoint's `Options`, and
/// the sandbox labels of Join and ProgramExternalConnectivity).
pub const PORT_MAP: &str = "com.docker.network.portmap";

/// One entry of [`PORT_MAP`]: libnetwork's `types.PortBinding` as JSON (`Proto` 6 tcp, 17 udp,
/// 132 sctp; IPs as strings or null).
#[derive(Debug, Default, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct PortBinding {
    #[serde(default)]
    pub proto: u8,
    #[serde(default)]
    pub port: u16,
    #[serde(rename = "HostIP", default, deserialize_with = "nullable")]
    pub host_ip: String,
    #[serde(default)]
    pub host_port: u16,
}

impl PortBinding {
    /// As `docker run -p` reads: `[HOSTIP:]HOSTPORT:PORT/PROTO` (`HOSTPORT` empty when Docker
    /// picks it, as with `-P`).
    pub fn describe(&self) -> String {
        let proto = match self.proto {
            6 => "tcp".to_string(),
            17 => "udp".to_string(),
            132 => "sctp".to_string(),
            n => format!("proto{n}"),
        };
        let host_port = if self.host_port == 0 {
            String::new()
        } else {
            self.host_port.to_string()
        };
        let ip = match self.host_ip.as_str() {
            "" | "0.0.0.0" | "::" => String::new(),
            ip => format!("{ip}:"),
        };
        format!("{ip}{host_port}:{}/{proto}", self.port)
    }
}

/// The port bindings among a request's options (none when absent, `null` or unreadable: the
/// key is Docker's, not the user's).
pub fn port_bindings(options: &BTreeMap<String, serde_json::Value>) -> Vec<PortBinding> {
    options
        .get(PORT_MAP)
        .and_then(|v| serde_json::from_value::<Option<Vec<PortBinding>>>(v.clone()).ok())
        .flatten()
        .unwrap_or_default()
}

/// `EndpointOperInfo`'s answer. Docker 20.10 shows none of it (`docker inspect` reads only
/// its own typed port-map keys from it, which a remote driver cannot produce); it is there for
/// tools that ask the driver, under `berth.*` keys.
#[derive(Debug, Serialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct OperInfoResponse {
    pub value: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct AllocateNetworkResponse {
    pub options: BTreeMap<String, String>,
}

// ---- IpamDriver ----

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamCapabilities {
    #[serde(rename = "RequiresMACAddress")]
    pub requires_mac_address: bool,
    pub requires_request_replay: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AddressSpaces {
    pub local_default_address_space: &'static str,
    pub global_default_address_space: &'static str,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestPoolRequest {
    #[serde(default, deserialize_with = "nullable")]
    pub address_space: String,
    #[serde(default, deserialize_with = "nullable")]
    pub pool: String,
    #[serde(default, deserialize_with = "nullable")]
    pub sub_pool: String,
    #[serde(default, deserialize_with = "loose_map")]
    pub options: BTreeMap<String, String>,
    #[serde(rename = "V6", default, deserialize_with = "nullable")]
    pub v6: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestPoolResponse {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    pub pool: String,
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PoolIdRequest {
    #[serde(rename = "PoolID", default, deserialize_with = "nullable")]
    pub pool_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestAddressRequest {
    #[serde(rename = "PoolID", default, deserialize_with = "nullable")]
    pub pool_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub address: String,
    #[serde(default, deserialize_with = "loose_map")]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestAddressResponse {
    pub address: String,
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReleaseAddressRequest {
    #[serde(rename = "PoolID", default, deserialize_with = "nullable")]
    pub pool_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub address: String,
}
