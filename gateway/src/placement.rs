//! Where replicas run (node, zone, region, GPU) and where a request may be served.
//!
//! - A request pins a placement with `x-kinfer-region` / `x-kinfer-zone` headers, or a top-level
//!   `jurisdiction` body field (a region); only replicas on nodes labelled
//!   `topology.kubernetes.io/region` / `zone` with those values serve it, and if none is ready
//!   there it is answered 503 at once.
//! - Without such a request, replicas in the gateway's own zone (`--zone`) are preferred while
//!   at least one of them is not saturated.
//! - Responses name the replica, its node, GPU product and zone in `x-kinfer-*` headers.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use http::{HeaderMap, HeaderName};

use crate::index::{Endpoint, ModelEntry};

pub use crate::endpoint::{
    Placement, GPU_PRODUCT_HEADER, GPU_PRODUCT_LABEL, NODE_HEADER, REGION_HEADER, REGION_LABEL,
    SERVED_BY_HEADER, ZONE_HEADER, ZONE_LABEL,
};

/// The placement a request asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlacementRequest {
    pub region: Option<String>,
    pub zone: Option<String>,
}

impl PlacementRequest {
    pub fn is_empty(&self) -> bool {
        self.region.is_none() && self.zone.is_none()
    }

    pub fn admits(&self, placement: &Placement) -> bool {
        let fits = |wanted: &Option<String>, actual: &Option<String>| match wanted {
            None => true,
            Some(wanted) => actual.as_deref() == Some(wanted.as_str()),
        };
        fits(&self.region, &placement.region) && fits(&self.zone, &placement.zone)
    }
}

impl std::fmt::Display for PlacementRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.region, &self.zone) {
            (Some(region), Some(zone)) => write!(f, "region `{region}`, zone `{zone}`"),
            (Some(region), None) => write!(f, "region `{region}`"),
            (None, Some(zone)) => write!(f, "zone `{zone}`"),
            (None, None) => f.write_str("anywhere"),
        }
    }
}

#[derive(Deserialize)]
struct Jurisdiction {
    #[serde(default)]
    jurisdiction: Option<String>,
}

/// Built once: building a searcher costs more than searching a typical request body.
static JURISDICTION: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"jurisdiction\""));

/// The placement the request asks for: headers first, then `jurisdiction` in the body (looked
/// for only when the bytes `"jurisdiction"` appear, so other requests are not parsed again).
pub fn requested(headers: &HeaderMap, body: &[u8]) -> PlacementRequest {
    let header = |name: &HeaderName| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
            .filter(|value| !value.is_empty())
            .map(String::from)
    };
    let mut request = PlacementRequest {
        region: header(&REGION_HEADER),
        zone: header(&ZONE_HEADER),
    };
    if request.region.is_none() && JURISDICTION.find(body).is_some() {
        request.region = serde_json::from_slice::<Jurisdiction>(body)
            .ok()
            .and_then(|fields| fields.jurisdiction)
            .filter(|region| !region.trim().is_empty());
    }
    request
}

/// What [`place`] decided.
pub enum Placed {
    /// Every replica of the entry may serve.
    All,
    /// Only these.
    Subset(Arc<ModelEntry>),
    /// None is ready where the request asked.
    Nowhere,
}

/// Restrict `entry` to the replicas that may serve the request: those admitted by `request`,
/// or else those in `own_zone` that are not saturated (if any).
pub fn place(
    entry: &ModelEntry,
    request: &PlacementRequest,
    own_zone: Option<&str>,
    saturation: (Duration, f64),
) -> Placed {
    let keep: Vec<Arc<Endpoint>> = if !request.is_empty() {
        let admitted: Vec<_> = entry
            .endpoints
            .iter()
            .filter(|endpoint| request.admits(endpoint.placement()))
            .cloned()
            .collect();
        if admitted.is_empty() {
            return Placed::Nowhere;
        }
        admitted
    } else if let Some(zone) = own_zone {
        let now = Instant::now();
        let (max_age, threshold) = saturation;
        entry
            .endpoints
            .iter()
            .filter(|endpoint| {
                endpoint.placement().zone.as_deref() == Some(zone)
                    && !endpoint.is_saturated(now, max_age, threshold)
            })
            .cloned()
            .collect()
    } else {
        return Placed::All;
    };
    if keep.is_empty() || keep.len() == entry.endpoints.len() {
        return Placed::All;
    }
    Placed::Subset(Arc::new(ModelEntry {
        id: entry.id.clone(),
        parent: entry.parent.clone(),
        features: entry.features.clone(),
        strategy: entry.strategy,
        policy: entry.policy.clone(),
        endpoints: keep,
        metrics: entry.metrics.clone(),
        hold: entry.hold,
        created: entry.created,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn request_placement_from_headers_and_body() {
        let none = requested(&HeaderMap::new(), br#"{"model":"m"}"#);
        assert!(none.is_empty());
        let pinned = requested(
            &headers(&[("x-kinfer-zone", "zone-a")]),
            br#"{"model":"m","jurisdiction":"eu"}"#,
        );
        assert_eq!(pinned.zone.as_deref(), Some("zone-a"));
        assert_eq!(pinned.region.as_deref(), Some("eu"));
        let header_wins = requested(
            &headers(&[("x-kinfer-region", "us")]),
            br#"{"model":"m","jurisdiction":"eu"}"#,
        );
        assert_eq!(header_wins.region.as_deref(), Some("us"));
        // A nested field of that name is not a placement.
        let nested = requested(
            &HeaderMap::new(),
            br#"{"model":"m","metadata":{"jurisdiction":"eu"}}"#,
        );
        assert!(nested.is_empty());
    }

    #[test]
    fn admits_and_headers() {
        let placement = Placement {
            node: Some("gpu-node-0".into()),
            zone: Some("zone-a".into()),
            region: Some("local".into()),
            gpu_product: Some("NVIDIA-L4".into()),
        };
        let zone_a = PlacementRequest {
            region: None,
            zone: Some("zone-a".into()),
        };
        assert!(zone_a.admits(&placement));
        assert!(!zone_a.admits(&Placement::default()));
        let elsewhere = PlacementRequest {
            region: Some("eu".into()),
            zone: None,
        };
        assert!(!elsewhere.admits(&placement));
        assert_eq!(elsewhere.to_string(), "region `eu`");
        let names: Vec<_> = placement
            .headers(&HeaderValue::from_static("ml/pod-0"))
            .into_iter()
            .map(|(name, value)| format!("{name}={}", value.to_str().unwrap()))
            .collect();
        assert_eq!(
            names,
            [
                "x-kinfer-served-by=ml/pod-0",
                "x-kinfer-node=gpu-node-0",
                "x-kinfer-gpu-product=NVIDIA-L4",
                "x-kinfer-zone=zone-a"
            ]
        );
    }
}
