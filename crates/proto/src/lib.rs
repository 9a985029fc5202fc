//! The SSPM gRPC API (`package sspm.v1`, generated from `proto/sspm/v1`) and the calls between
//! its services (`package sspm.internal.v1`, from `proto/sspm/internal/v1`).

/// Generated messages, clients and servers of `sspm.v1`.
pub mod v1 {
    #![allow(missing_debug_implementations, unused_qualifications, clippy::all)]
    tonic::include_proto!("sspm.v1");
}

/// The calls between SSPM's services (`package sspm.internal.v1`), generated from
/// `proto/sspm/internal/v1`: served on the same ports as the public API, refused to callers
/// outside SSPM (README, "Who may call what").
pub mod internal {
    /// Generated messages, clients and servers of `sspm.internal.v1`.
    pub mod v1 {
        #![allow(missing_debug_implementations, unused_qualifications, clippy::all)]
        tonic::include_proto!("sspm.internal.v1");
    }
}

/// Encoded `FileDescriptorSet` of every SSPM proto and of the google.rpc error details, for
/// server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sspm_descriptor.bin"));

/// Fully qualified gRPC service names, as reflection and health report them.
pub mod service_names {
    /// The request service.
    pub const PORT_REQUEST: &str = "sspm.v1.PortRequestService";
    /// The authorization service.
    pub const AUTHORIZATION: &str = "sspm.v1.AuthorizationService";
    /// The approval service.
    pub const APPROVAL: &str = "sspm.v1.ApprovalService";
    /// The ticketing service.
    pub const TICKETING: &str = "sspm.v1.TicketingService";
    /// The audit trail, served by every service.
    pub const AUDIT: &str = "sspm.v1.AuditService";
    /// The authorization service's calls for the other services.
    pub const INTERNAL_AUTHORIZATION: &str = "sspm.internal.v1.AuthorizationService";
    /// The approval service's calls for the request service.
    pub const INTERNAL_APPROVAL: &str = "sspm.internal.v1.ApprovalService";
    /// The ticketing service's calls for the request service.
    pub const INTERNAL_TICKETING: &str = "sspm.internal.v1.TicketingService";
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn descriptor_set_holds_every_service() {
        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let services: Vec<String> = fds
            .file
            .iter()
            .flat_map(|f| {
                let pkg = f.package().to_owned();
                f.service.iter().map(move |s| format!("{pkg}.{}", s.name()))
            })
            .collect();
        for name in [
            service_names::PORT_REQUEST,
            service_names::AUTHORIZATION,
            service_names::APPROVAL,
            service_names::TICKETING,
            service_names::AUDIT,
            service_names::INTERNAL_AUTHORIZATION,
            service_names::INTERNAL_APPROVAL,
            service_names::INTERNAL_TICKETING,
        ] {
            assert!(services.iter().any(|s| s == name), "{name} missing from {services:?}");
        }
    }

    #[test]
    fn reflection_can_describe_the_error_details_statuses_carry() {
        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let rpc = fds
            .file
            .iter()
            .find(|f| f.package() == "google.rpc")
            .expect("google/rpc/error_details.proto is served");
        for name in ["ErrorInfo", "BadRequest", "PreconditionFailure", "RetryInfo"] {
            assert!(rpc.message_type.iter().any(|m| m.name() == name), "{name}");
        }
    }

    #[test]
    fn every_enum_starts_with_unspecified() {
        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        for file in fds.file.iter().filter(|f| f.package().starts_with("sspm.")) {
            for e in &file.enum_type {
                let zero = e.value.iter().find(|v| v.number() == 0).expect("zero value");
                assert!(
                    zero.name().ends_with("_UNSPECIFIED"),
                    "{}: zero value is {}",
                    e.name(),
                    zero.name()
                );
            }
        }
    }

    #[test]
    fn every_service_method_message_field_and_enum_value_is_documented() {
        // `grpcurl describe` shows these comments: an undocumented element is a usability bug.
        // Paths follow descriptor.proto: file.message_type = 4, file.enum_type = 5,
        // file.service = 6, message.field = 2, enum.value = 2, service.method = 2.
        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let mut missing = Vec::new();
        for file in fds.file.iter().filter(|f| f.package().starts_with("sspm.")) {
            let info = file.source_code_info.as_ref().expect("source info kept for reflection");
            let documented = |path: &[i32]| {
                info.location
                    .iter()
                    .any(|l| l.path == path && !l.leading_comments().trim().is_empty())
            };
            let mut check = |path: Vec<i32>, what: String| {
                if !documented(&path) {
                    missing.push(format!("{}: {what}", file.name()));
                }
            };
            for (i, m) in file.message_type.iter().enumerate() {
                let i = i as i32;
                check(vec![4, i], format!("message {}", m.name()));
                for (j, f) in m.field.iter().enumerate() {
                    check(vec![4, i, 2, j as i32], format!("field {}.{}", m.name(), f.name()));
                }
            }
            for (i, e) in file.enum_type.iter().enumerate() {
                let i = i as i32;
                check(vec![5, i], format!("enum {}", e.name()));
                for (j, v) in e.value.iter().enumerate() {
                    check(vec![5, i, 2, j as i32], format!("value {}", v.name()));
                }
            }
            for (i, s) in file.service.iter().enumerate() {
                let i = i as i32;
                check(vec![6, i], format!("service {}", s.name()));
                for (j, m) in s.method.iter().enumerate() {
                    check(vec![6, i, 2, j as i32], format!("rpc {}.{}", s.name(), m.name()));
                }
            }
        }
        assert!(missing.is_empty(), "undocumented: {missing:#?}");
    }
}
