//! Who may see and do what: permissions, actions, visibility and partner scope (R6, R7).

use sspm_proto::v1::Action;

pub use crate::entities::grant::Permission as Perm;
use crate::entities::{business_unit, grant, principal};

impl Perm {
    /// Global permissions are granted with an empty business unit; the others on one.
    pub fn is_global(self) -> bool {
        match self {
            Perm::AccountRepresentative
            | Perm::NetworkOperationsDailyLimits
            | Perm::NetworkOperationsApprove
            | Perm::EventsReadAll => true,
            Perm::MonitoringGatewayView | Perm::PortManagementView | Perm::PortManagementCreate => false,
        }
    }
}

/// What an action needs: global permissions, or permissions on the business unit.
pub fn required(action: Action) -> (bool, &'static [Perm]) {
    match action {
        Action::ViewPorts => (false, &[Perm::MonitoringGatewayView, Perm::PortManagementView]),
        Action::RequestPortChange => (false, &[Perm::MonitoringGatewayView, Perm::PortManagementCreate]),
        Action::ManageDailyLimits => (true, &[Perm::NetworkOperationsDailyLimits]),
        Action::DecideApprovals => (true, &[Perm::NetworkOperationsApprove]),
        Action::ReadAllEvents => (true, &[Perm::EventsReadAll]),
        Action::Administer | Action::Unspecified => (true, &[Perm::AccountRepresentative]),
    }
}

/// A principal with its grants: answers what it may see and do.
#[derive(Debug)]
pub struct Subject {
    /// The principal.
    pub principal: principal::Model,
    /// Its grants.
    pub grants: Vec<grant::Model>,
}

impl Subject {
    /// Whether it holds `p` globally.
    pub fn has_global(&self, p: Perm) -> bool {
        self.grants
            .iter()
            .any(|g| g.business_unit_id.is_empty() && g.permission == p)
    }

    /// Staff (account representatives, Network Operations) see every business unit.
    pub fn is_staff(&self) -> bool {
        self.has_global(Perm::AccountRepresentative)
            || self.has_global(Perm::NetworkOperationsDailyLimits)
            || self.has_global(Perm::NetworkOperationsApprove)
    }

    /// The business units whose own and customer business units it may see: its home and
    /// every business unit it holds a grant on. `None` for staff (everything).
    pub fn scope(&self) -> Option<Vec<String>> {
        if self.is_staff() {
            return None;
        }
        let mut ids: Vec<String> = self
            .grants
            .iter()
            .filter(|g| !g.business_unit_id.is_empty())
            .map(|g| g.business_unit_id.clone())
            .chain(self.principal.home_business_unit_id.clone())
            .collect();
        ids.sort();
        ids.dedup();
        Some(ids)
    }

    /// Whether it may see `bu`: staff, or `bu` or its partner is in its scope.
    pub fn may_see(&self, bu: &business_unit::Model) -> bool {
        match self.scope() {
            None => true,
            Some(ids) => ids
                .iter()
                .any(|id| *id == bu.business_unit_id || Some(id) == bu.partner_id.as_ref()),
        }
    }

    /// Whether it holds `p` on `bu`: granted on `bu` itself or on its partner (a partner's
    /// grants cover its customers).
    pub fn has_on(&self, p: Perm, bu: &business_unit::Model) -> bool {
        self.grants.iter().any(|g| {
            g.permission == p
                && (g.business_unit_id == bu.business_unit_id || Some(&g.business_unit_id) == bu.partner_id.as_ref())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bu(id: &str, partner: Option<&str>) -> business_unit::Model {
        business_unit::Model {
            business_unit_id: id.into(),
            display_name: id.into(),
            cluster: "C14".into(),
            partner_id: partner.map(Into::into),
            monitoring_gateway_enabled: true,
            personal_connection_enabled: true,
            create_time: 0,
            update_time: 0,
        }
    }

    fn subject(home: Option<&str>, grants: &[(&str, Perm)]) -> Subject {
        Subject {
            principal: principal::Model {
                principal_id: "p".into(),
                display_name: "p".into(),
                home_business_unit_id: home.map(Into::into),
                kind: principal::Kind::User,
                create_time: 0,
            },
            grants: grants
                .iter()
                .map(|(b, p)| grant::Model {
                    principal_id: "p".into(),
                    business_unit_id: (*b).into(),
                    permission: *p,
                    granted_by: "rep".into(),
                    grant_time: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn partner_grants_cover_customers_but_not_other_partners() {
        let percy = subject(Some("classics"), &[("classics", Perm::PortManagementCreate)]);
        let league = bu("league", Some("classics"));
        assert!(percy.may_see(&league));
        assert!(percy.has_on(Perm::PortManagementCreate, &league));
        assert!(!percy.has_on(Perm::PortManagementView, &league));
        let other = bu("nautilus-crew", Some("nautilus"));
        assert!(!percy.may_see(&other));
        assert!(!percy.has_on(Perm::PortManagementCreate, &other));
    }

    #[test]
    fn customer_users_see_only_their_own_business_unit() {
        let user = subject(Some("league"), &[("league", Perm::PortManagementView)]);
        assert!(user.may_see(&bu("league", Some("classics"))));
        assert!(!user.may_see(&bu("musketeers", Some("classics"))));
        assert!(!user.may_see(&bu("classics", None)));
    }

    #[test]
    fn staff_see_everything_and_global_permissions_are_global() {
        let rep = subject(None, &[("", Perm::AccountRepresentative)]);
        assert!(rep.may_see(&bu("anything", None)));
        assert!(rep.has_global(Perm::AccountRepresentative));
        assert!(!rep.has_global(Perm::NetworkOperationsApprove));
        assert!(Perm::NetworkOperationsApprove.is_global());
        assert!(!Perm::PortManagementView.is_global());
    }
}
