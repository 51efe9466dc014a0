//! The `http` section of the engine config: limits and timeouts of the HTTP
//! proxy (`http.rs`), validated into an [`HttpConfig`].

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, PortTimeoutSpec};
use crate::http::HttpConfig;

/// HTTP proxying settings as they arrive (camelCase JSON).
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HttpSpec {
    /// Serve connections detected (or declared) as HTTP as HTTP, request by
    /// request; `false` forwards them as TCP like any other connection.
    pub enabled: bool,
    /// Largest request head (request line and headers), bytes; a larger one
    /// gets 431. Also the largest response head accepted from upstream.
    pub max_header_bytes: usize,
    /// An HTTP/1 client must send a whole request head within this of its
    /// first byte, ms (slowloris); time idle between requests is not counted.
    pub header_timeout_ms: u64,
    /// Time to wait for response headers from upstream before answering
    /// 504; 0 = wait forever (the default, as Linkerd).
    pub response_timeout_ms: u64,
    /// Per-port response timeouts; the first matching entry wins over
    /// `responseTimeoutMs` (0 in an entry = no timeout for those ports).
    pub port_response_timeouts: Vec<PortTimeoutSpec>,
    /// Idle HTTP/1 upstream connections kept per endpoint and worker thread.
    pub pool_max_idle: usize,
    /// Idle upstream connections are closed after this, ms.
    pub pool_idle_timeout_ms: u64,
}

impl Default for HttpSpec {
    fn default() -> Self {
        let d = HttpConfig::default();
        HttpSpec {
            enabled: d.enabled,
            max_header_bytes: d.max_header_bytes,
            header_timeout_ms: d.header_timeout.as_millis() as u64,
            response_timeout_ms: 0,
            port_response_timeouts: Vec::new(),
            pool_max_idle: d.pool_max_idle,
            pool_idle_timeout_ms: d.pool_idle_timeout.as_millis() as u64,
        }
    }
}

/// hyper's smallest read buffer; heads must fit in it.
const MIN_HEADER_BYTES: usize = 8 * 1024;
const MAX_HEADER_BYTES: usize = 1 << 20;

impl HttpSpec {
    pub fn validate(&self) -> Result<HttpConfig, ConfigError> {
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&self.max_header_bytes) {
            return Err(ConfigError::Value {
                field: "http.maxHeaderBytes",
                value: self.max_header_bytes.to_string(),
                expected: "between 8192 and 1048576 bytes",
            });
        }
        if self.header_timeout_ms == 0 {
            return Err(ConfigError::Value { field: "http.headerTimeoutMs", value: "0".into(), expected: "at least 1 ms" });
        }
        if self.pool_idle_timeout_ms == 0 {
            return Err(ConfigError::Value { field: "http.poolIdleTimeoutMs", value: "0".into(), expected: "at least 1 ms" });
        }
        let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
        let mut port_response_timeouts = Vec::with_capacity(self.port_response_timeouts.len());
        for (i, t) in self.port_response_timeouts.iter().enumerate() {
            let range = crate::addr::PortRange::new(t.ports.0, t.ports.1).map_err(|_| ConfigError::Value {
                field: "http.portResponseTimeouts",
                value: format!("entry {i}: [{}, {}]", t.ports.0, t.ports.1),
                expected: "a port range 1 <= low <= high <= 65535",
            })?;
            port_response_timeouts.push((t.direction, range, ms(t.timeout_ms)));
        }
        Ok(HttpConfig {
            enabled: self.enabled,
            max_header_bytes: self.max_header_bytes,
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            max_response_header_bytes: self.max_header_bytes,
            response_timeout: ms(self.response_timeout_ms),
            port_response_timeouts,
            pool_max_idle: self.pool_max_idle,
            pool_idle_timeout: Duration::from_millis(self.pool_idle_timeout_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bad_values() {
        let c = HttpSpec::default().validate().unwrap();
        assert!(c.enabled && c.response_timeout.is_none());
        let e = HttpSpec { max_header_bytes: 100, ..HttpSpec::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("http.maxHeaderBytes = 100"), "{e}");
        assert_eq!(c.header_timeout, Duration::from_secs(30));
        let e = HttpSpec { header_timeout_ms: 0, ..HttpSpec::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("http.headerTimeoutMs = 0"), "{e}");
        let spec: HttpSpec =
            serde_json::from_str(r#"{"responseTimeoutMs":5000,"portResponseTimeouts":[{"ports":[8080,8080],"timeoutMs":0}]}"#).unwrap();
        let c = spec.validate().unwrap();
        assert_eq!(c.response_timeout_for(crate::vocab::Direction::Inbound, 80), Some(Duration::from_secs(5)));
        assert_eq!(c.response_timeout_for(crate::vocab::Direction::Inbound, 8080), None);
        let bad: HttpSpec = serde_json::from_str(r#"{"portResponseTimeouts":[{"ports":[0,1],"timeoutMs":1}]}"#).unwrap();
        assert!(bad.validate().is_err());
    }
}
