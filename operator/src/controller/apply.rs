//! The client side of the pipeline: server-side apply of the children, deletion of children
//! the spec no longer produces, the pod listing status is computed from, and the status write.

use std::collections::BTreeSet;
use std::fmt::Debug;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::NamespaceResourceScope;
use kinfer_crds::labels::{self, selector_string};
use kinfer_crds::{InferenceModel, InferenceModelStatus};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::build::Children;
use super::Error;

/// Field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "kinfer-operator";

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Server-side applies `object` in `namespace`; returns the object as stored.
async fn apply_one<K>(client: &Client, namespace: &str, object: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + k8s_openapi::Resource
        + Serialize
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = object.name_any();
    api.patch(&name, &apply_params(), &Patch::Apply(object))
        .await
        .map_err(|source| Error::Apply {
            kind: <K as k8s_openapi::Resource>::KIND,
            name,
            source,
        })
}

/// Applies every child; returns the Deployment as stored (with its current status).
pub async fn apply_children(
    client: &Client,
    namespace: &str,
    children: &Children,
) -> Result<Deployment, Error> {
    // The claim first: the Deployment's pods mount it.
    if let Some(claim) = &children.cache_claim {
        check_claim_access_modes(client, namespace, claim).await?;
        apply_one(client, namespace, claim).await?;
    }
    let deployment = apply_one(client, namespace, &children.deployment).await?;
    apply_one(client, namespace, &children.service).await?;
    apply_one(client, namespace, &children.disruption_budget).await?;
    Ok(deployment)
}

/// A claim's access modes cannot change once it exists, and the API server's answer to the
/// attempt ("spec is immutable after creation") does not say what to do. The default mode
/// follows the replica count, so scaling a model past one replica can ask for it.
async fn check_claim_access_modes(
    client: &Client,
    namespace: &str,
    claim: &PersistentVolumeClaim,
) -> Result<(), Error> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let name = claim.name_any();
    let existing = api.get_opt(&name).await.map_err(|source| Error::List {
        kind: "PersistentVolumeClaim",
        source,
    })?;
    let modes = |claim: &PersistentVolumeClaim| {
        claim
            .spec
            .as_ref()
            .and_then(|spec| spec.access_modes.clone())
            .unwrap_or_default()
    };
    match existing {
        Some(existing) if modes(&existing) != modes(claim) => Err(Error::CacheAccessModeChanged {
            name,
            existing: modes(&existing).join(","),
            desired: modes(claim).join(","),
        }),
        _ => Ok(()),
    }
}

/// Deletes the objects of kind `K` owned by `model` whose names are not in `keep`.
async fn prune_kind<K>(
    client: &Client,
    model: &InferenceModel,
    keep: &BTreeSet<String>,
) -> Result<Vec<String>, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + k8s_openapi::Resource
        + Clone
        + DeserializeOwned
        + Debug,
{
    let namespace = model.namespace().unwrap_or_default();
    let uid = model.uid().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    let selector = format!(
        "{}={},{}={}",
        labels::MODEL,
        model.name_any(),
        labels::MANAGED_BY,
        labels::MANAGED_BY_OPERATOR
    );
    let existing = api
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::List {
            kind: <K as k8s_openapi::Resource>::KIND,
            source,
        })?;
    let mut deleted = Vec::new();
    for object in existing.items {
        let name = object.name_any();
        let owned = object
            .owner_references()
            .iter()
            .any(|owner| owner.uid == uid && owner.controller == Some(true));
        if !owned || keep.contains(&name) || object.metadata.deletion_timestamp.is_some() {
            continue;
        }
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => deleted.push(format!("{}/{name}", <K as k8s_openapi::Resource>::KIND)),
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(source) => {
                return Err(Error::Delete {
                    kind: <K as k8s_openapi::Resource>::KIND,
                    name,
                    source,
                })
            }
        }
    }
    Ok(deleted)
}

/// Deletes children of `model` that `children` no longer contains (for example the cache
/// claim once spec.cache.size is removed). Returns `Kind/name` of what was deleted.
pub async fn prune_children(
    client: &Client,
    model: &InferenceModel,
    children: &Children,
) -> Result<Vec<String>, Error> {
    let names = |name: Option<String>| name.into_iter().collect::<BTreeSet<_>>();
    let mut deleted = prune_kind::<Deployment>(
        client,
        model,
        &names(children.deployment.metadata.name.clone()),
    )
    .await?;
    deleted.extend(
        prune_kind::<Service>(
            client,
            model,
            &names(children.service.metadata.name.clone()),
        )
        .await?,
    );
    deleted.extend(
        prune_kind::<PodDisruptionBudget>(
            client,
            model,
            &names(children.disruption_budget.metadata.name.clone()),
        )
        .await?,
    );
    deleted.extend(
        prune_kind::<PersistentVolumeClaim>(
            client,
            model,
            &names(
                children
                    .cache_claim
                    .as_ref()
                    .and_then(|claim| claim.metadata.name.clone()),
            ),
        )
        .await?,
    );
    Ok(deleted)
}

/// The engine pods of `model` (all revisions).
pub async fn list_pods(client: &Client, model: &InferenceModel) -> Result<Vec<Pod>, Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &model.namespace().unwrap_or_default());
    api.list(&ListParams::default().labels(&selector_string(&model.name_any())))
        .await
        .map(|list| list.items)
        .map_err(|source| Error::List {
            kind: "Pod",
            source,
        })
}

/// Writes `status` with server-side apply on the status subresource.
pub async fn write_status(
    client: &Client,
    model: &InferenceModel,
    status: &InferenceModelStatus,
) -> Result<(), Error> {
    let api: Api<InferenceModel> =
        Api::namespaced(client.clone(), &model.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": InferenceModel::api_version(&()),
        "kind": InferenceModel::kind(&()),
        "status": status,
    });
    api.patch_status(&model.name_any(), &apply_params(), &Patch::Apply(&patch))
        .await
        .map(|_| ())
        .map_err(|source| Error::Status { source })
}
