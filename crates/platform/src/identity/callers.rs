//! Who may call what: every RPC SSPM serves, with the callers its design gives it (README,
//! "Who may call what"). The admission layer refuses any other caller before the handler
//! runs, with PERMISSION_DENIED and the reason `CALLER_NOT_ALLOWED`.
//!
//! Users pass this table for public and staff RPCs; what a user may do there is then the
//! handler's check (permissions, staff roles). A service passes only for the RPCs listed
//! with it: the internal ones it calls, and the few reads it makes of another service. No
//! service is listed on an RPC that changes staff-owned data (daily limits, approvals,
//! business units, principals, permissions) or reads across tenants (cases, the audit
//! trail, approval task lists, permissions).

use tonic::Status;

use super::Principal;
use crate::config::ServiceKind::{self, Approval, Request, Ticketing};

/// The callers of one RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Callers {
    /// Whether users may call it (their permissions are then checked by the handler).
    pub users: bool,
    /// The SSPM services that may call it.
    pub services: &'static [ServiceKind],
}

/// Called by users only.
const USERS: Callers = Callers {
    users: true,
    services: &[],
};

const fn internal(services: &'static [ServiceKind]) -> Callers {
    Callers { users: false, services }
}

const fn users_and(services: &'static [ServiceKind]) -> Callers {
    Callers { users: true, services }
}

/// Every RPC SSPM serves behind authentication, by its path, with its callers.
pub const TABLE: &[(&str, Callers)] = &[
    // The request service: the partner administrator's API.
    ("/sspm.v1.PortRequestService/GetPortLimits", USERS),
    ("/sspm.v1.PortRequestService/CreatePortChangeRequest", USERS),
    ("/sspm.v1.PortRequestService/GetPortChangeRequest", USERS),
    ("/sspm.v1.PortRequestService/ListPortChangeRequests", USERS),
    ("/sspm.v1.PortRequestService/ProvideInformation", USERS),
    ("/sspm.v1.PortRequestService/CancelPortChangeRequest", USERS),
    ("/sspm.v1.PortRequestService/WatchPortChangeRequest", USERS),
    // The event feed: partners' tools, and the platform's services (Events › Read all).
    ("/sspm.v1.PortRequestService/ListEvents", USERS),
    ("/sspm.v1.PortRequestService/WatchEvents", USERS),
    // The request service: the account representative's onboarding (staff).
    ("/sspm.v1.PortRequestService/SetProvisionedLimits", USERS),
    ("/sspm.v1.PortRequestService/ImportProvisionedLimits", USERS),
    // The levels above the business unit (R12, R13): partners' administrators read their
    // pool; account representatives set pools, Network Operations cluster capacity.
    ("/sspm.v1.PortRequestService/GetPartnerPool", USERS),
    ("/sspm.v1.PortRequestService/SetPartnerPool", USERS),
    ("/sspm.v1.PortRequestService/ClearPartnerPool", USERS),
    ("/sspm.v1.PortRequestService/GetClusterCapacity", USERS),
    ("/sspm.v1.PortRequestService/ListClusterCapacities", USERS),
    ("/sspm.v1.PortRequestService/SetClusterCapacity", USERS),
    ("/sspm.v1.PortRequestService/ClearClusterCapacity", USERS),
    // Authorization: the checks the three other services make for their callers.
    (
        "/sspm.v1.AuthorizationService/Check",
        users_and(&[Request, Approval, Ticketing]),
    ),
    (
        "/sspm.v1.AuthorizationService/ListVisibleBusinessUnits",
        users_and(&[Request]),
    ),
    (
        "/sspm.v1.AuthorizationService/GetBusinessUnit",
        users_and(&[Request, Approval]),
    ),
    // Authorization: the account representative's administration (staff).
    ("/sspm.v1.AuthorizationService/CreateBusinessUnit", USERS),
    ("/sspm.v1.AuthorizationService/UpdateBusinessUnit", USERS),
    ("/sspm.v1.AuthorizationService/CreatePrincipal", USERS),
    ("/sspm.v1.AuthorizationService/UpdatePrincipal", USERS),
    ("/sspm.v1.AuthorizationService/GetPrincipal", USERS),
    ("/sspm.v1.AuthorizationService/GrantPermission", USERS),
    ("/sspm.v1.AuthorizationService/RevokePermission", USERS),
    ("/sspm.v1.AuthorizationService/ListPermissions", USERS),
    // Approval: Network Operations (staff); the request service reads the task of a
    // decision it applies, and the day's usage for a dry run.
    ("/sspm.v1.ApprovalService/ListApprovalTasks", USERS),
    ("/sspm.v1.ApprovalService/GetApprovalTask", users_and(&[Request])),
    ("/sspm.v1.ApprovalService/DecideApprovalTask", USERS),
    ("/sspm.v1.ApprovalService/SetDailyLimit", USERS),
    ("/sspm.v1.ApprovalService/ClearDailyLimit", USERS),
    ("/sspm.v1.ApprovalService/ListDailyLimits", USERS),
    ("/sspm.v1.ApprovalService/GetDailyUsage", users_and(&[Request])),
    // Ticketing: users read the cases the request service opens.
    ("/sspm.v1.TicketingService/GetCase", USERS),
    ("/sspm.v1.TicketingService/ListCases", USERS),
    // Every service's audit trail (staff).
    ("/sspm.v1.AuditService/ListAuditEvents", USERS),
    // The calls between SSPM's services (package sspm.internal.v1): never users.
    // Authorization: the change stream that keeps the others' Check caches fresh.
    (
        "/sspm.internal.v1.AuthorizationService/WatchAuthorizationChanges",
        internal(&[Request, Approval, Ticketing]),
    ),
    // Approval: the request service's reconciler (reservations, reviews, decisions).
    (
        "/sspm.internal.v1.ApprovalService/EvaluateIncrease",
        internal(&[Request]),
    ),
    (
        "/sspm.internal.v1.ApprovalService/ReleaseReservation",
        internal(&[Request]),
    ),
    (
        "/sspm.internal.v1.ApprovalService/SubmitForReview",
        internal(&[Request]),
    ),
    ("/sspm.internal.v1.ApprovalService/WithdrawReview", internal(&[Request])),
    ("/sspm.internal.v1.ApprovalService/WatchDecisions", internal(&[Request])),
    // Ticketing: the request service's reconciler writes the cases.
    ("/sspm.internal.v1.TicketingService/OpenCase", internal(&[Request])),
    (
        "/sspm.internal.v1.TicketingService/AddCaseComment",
        internal(&[Request]),
    ),
    (
        "/sspm.internal.v1.TicketingService/UpdateCaseStatus",
        internal(&[Request]),
    ),
    ("/sspm.internal.v1.TicketingService/CloseCase", internal(&[Request])),
];

/// The callers of the RPC at `path`; `None` for a path SSPM does not serve.
pub fn callers(path: &str) -> Option<Callers> {
    TABLE.iter().find(|(p, _)| *p == path).map(|(_, c)| *c)
}

/// Whether `principal` may call the RPC at `path`. A path SSPM does not serve is left to
/// the router (UNIMPLEMENTED) for users and refused to services.
pub fn allowed(path: &str, principal: &Principal) -> bool {
    allowed_for(path, principal.service())
}

/// Whether a user (`None`) or the SSPM service `service` may call the RPC at `path`.
pub fn allowed_for(path: &str, service: Option<ServiceKind>) -> bool {
    match (callers(path), service) {
        (Some(c), Some(service)) => c.services.contains(&service),
        (Some(c), None) => c.users,
        (None, Some(_)) => false,
        (None, None) => true,
    }
}

/// PERMISSION_DENIED unless `principal` may call the RPC at `path`.
pub fn admit(path: &str, principal: &Principal) -> Result<(), Status> {
    if allowed(path, principal) {
        return Ok(());
    }
    let rpc = path.rsplit('/').next().unwrap_or(path);
    let who = match callers(path) {
        Some(c) => describe(c),
        None => "users only".to_owned(),
    };
    Err(crate::error::caller_not_allowed(
        rpc,
        principal.id.as_str(),
        format!("{rpc} may be called by {who}; {} may not", principal.id),
    ))
}

fn describe(c: Callers) -> String {
    let services: Vec<String> = c.services.iter().map(|s| format!("the {} service", s.name())).collect();
    match (c.users, services.is_empty()) {
        (true, true) => "users only".to_owned(),
        (true, false) => format!("users and {}", services.join(", ")),
        (false, _) => services.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message as _;

    use super::*;

    /// Every method of every service in the protos, by path.
    fn served() -> BTreeSet<String> {
        let fds = prost_types::FileDescriptorSet::decode(sspm_proto::FILE_DESCRIPTOR_SET).unwrap_or_default();
        let mut paths = BTreeSet::new();
        for file in fds.file {
            for service in &file.service {
                for method in &service.method {
                    paths.insert(format!("/{}.{}/{}", file.package(), service.name(), method.name()));
                }
            }
        }
        paths
    }

    #[test]
    fn the_table_names_every_served_rpc_once_and_nothing_else() {
        let served = served();
        assert!(served.len() > 30, "{served:?}");
        let listed: Vec<&str> = TABLE.iter().map(|(p, _)| *p).collect();
        let unique: BTreeSet<String> = listed.iter().map(|p| (*p).to_owned()).collect();
        assert_eq!(unique.len(), listed.len(), "a path listed twice");
        assert_eq!(unique, served, "the table and the protos differ");
    }

    #[test]
    fn users_call_every_public_rpc_and_no_internal_one() {
        for (path, callers) in TABLE {
            let internal = path.starts_with("/sspm.internal.v1.");
            assert!(internal || path.starts_with("/sspm.v1."), "{path}: neither package");
            assert_eq!(callers.users, !internal, "{path}");
            if internal {
                assert!(!callers.services.is_empty(), "{path}: nobody may call it");
            }
        }
    }

    #[test]
    fn the_internal_rpcs_admit_only_the_services_that_call_them() {
        use ServiceKind::Authorization;
        let only_request = [
            "/sspm.internal.v1.TicketingService/OpenCase",
            "/sspm.internal.v1.ApprovalService/EvaluateIncrease",
            "/sspm.internal.v1.ApprovalService/WatchDecisions",
        ];
        for path in only_request {
            assert!(allowed_for(path, Some(Request)), "{path}");
            for other in [Authorization, Approval, Ticketing] {
                assert!(!allowed_for(path, Some(other)), "{path} {other:?}");
            }
            assert!(!allowed_for(path, None), "{path} by a user");
        }
        let watch = "/sspm.internal.v1.AuthorizationService/WatchAuthorizationChanges";
        assert!(!allowed_for(watch, None) && !allowed_for(watch, Some(Authorization)));
        assert!(
            [Request, Approval, Ticketing]
                .iter()
                .all(|k| allowed_for(watch, Some(*k)))
        );
        // Not one service token on staff-owned writes or cross-tenant reads.
        for path in [
            "/sspm.v1.ApprovalService/SetDailyLimit",
            "/sspm.v1.ApprovalService/DecideApprovalTask",
            "/sspm.v1.ApprovalService/ListApprovalTasks",
            "/sspm.v1.AuthorizationService/GrantPermission",
            "/sspm.v1.AuthorizationService/ListPermissions",
            "/sspm.v1.TicketingService/ListCases",
            "/sspm.v1.AuditService/ListAuditEvents",
        ] {
            assert!(ServiceKind::ALL.iter().all(|k| !allowed_for(path, Some(*k))), "{path}");
            assert!(allowed_for(path, None), "{path}");
        }
        // A path SSPM does not serve: users reach the router (UNIMPLEMENTED), services don't.
        assert!(allowed_for("/sspm.v1.Nope/Nothing", None));
        assert!(!allowed_for("/sspm.v1.Nope/Nothing", Some(Request)));
    }
}
