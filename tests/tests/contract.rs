//! The API contract's `google.api.field_behavior` annotations hold against the running
//! system (README, "The API contract"): a call that leaves out everything is refused with
//! INVALID_ARGUMENT naming a field marked REQUIRED (or the oneof a caller must set) exactly
//! when its request message has one; a message with nothing REQUIRED is accepted empty.
//! REQUIRED message fields are checked one level down as well: sent empty, the refusal
//! names one of their own REQUIRED fields.

use prost_reflect::{DescriptorPool, DynamicMessage, ExtensionDescriptor, MessageDescriptor, ReflectMessage, Value};
use sspm_authorization::seed::demo::{ACCOUNT_REP, NETOPS, PARTNER_ADMIN};
use sspm_e2e::{Backend, TestSystem, served_by};
use sspm_platform::ServiceKind;
use sspm_platform::identity::callers::{TABLE, allowed_for};
use tonic::Code;
use tonic_types::StatusExt;

const REQUIRED: i32 = 2;

/// Fields required only with some values of another field, which `field_behavior` cannot
/// say; their comments in the protos do.
const CONDITIONAL: &[(&str, &str, &str)] = &[(
    "CheckRequest",
    "business_unit_id",
    "required for the actions on one business unit; empty for global ones",
)];

fn pool() -> DescriptorPool {
    DescriptorPool::decode(sspm_proto::FILE_DESCRIPTOR_SET).expect("the served descriptor set decodes")
}

fn field_behavior(pool: &DescriptorPool) -> ExtensionDescriptor {
    pool.get_extension_by_name("google.api.field_behavior")
        .expect("google/api/field_behavior.proto is served")
}

/// The names of the fields of `message` marked REQUIRED.
fn required_fields(message: &MessageDescriptor, behavior: &ExtensionDescriptor) -> Vec<String> {
    message
        .fields()
        .filter(|f| {
            let options = f.options();
            match options.get_extension(behavior).as_ref() {
                Value::List(values) => values.iter().any(|v| v.as_enum_number() == Some(REQUIRED)),
                _ => false,
            }
        })
        .map(|f| f.name().to_owned())
        .collect()
}

/// The oneofs of `message` a caller must choose from (proto3 `optional` fields are oneofs
/// of their own, and optional).
fn real_oneofs(message: &MessageDescriptor) -> Vec<String> {
    message
        .oneofs()
        .filter(|o| !o.is_synthetic())
        .map(|o| o.name().to_owned())
        .collect()
}

/// Calls `path` on `target` with `message`, as a caller the caller table admits: for the
/// RPCs users call, Network Operations, the account representative or the partner
/// administrator (the first not refused), else the first service allowed. The status the
/// call ends with (OK when it was answered or a stream opened).
async fn call(s: &TestSystem, target: ServiceKind, path: &str, message: DynamicMessage) -> tonic::Status {
    if allowed_for(path, None) {
        let mut status = tonic::Status::ok("");
        for user in [NETOPS, ACCOUNT_REP, PARTNER_ADMIN] {
            status = s.call_raw(target, path, message.clone(), &s.token(user)).await;
            if status.code() != Code::PermissionDenied {
                break;
            }
        }
        return status;
    }
    let service = ServiceKind::ALL
        .into_iter()
        .find(|k| allowed_for(path, Some(*k)))
        .unwrap_or_else(|| panic!("nobody may call {path}"));
    s.call_raw(target, path, message, &s.service_token(service)).await
}

/// The fields an INVALID_ARGUMENT status's `BadRequest` names.
fn named_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// The top-level field a violation's path starts with (`limit.scope` → `limit`,
/// `states[0]` → `states`).
fn head(field: &str) -> &str {
    field.split(['.', '[']).next().unwrap_or(field)
}

/// A value a server accepts for the field `name` of this kind, as far as its form goes:
/// the demo tenancy's ids, a case number, text; 1 for numbers and enums.
fn plausible(field: &prost_reflect::FieldDescriptor) -> Value {
    use prost_reflect::Kind;
    let name = field.name();
    let one = match field.kind() {
        Kind::String => Value::String(
            if name.ends_with("business_unit_id") {
                "bu-league"
            } else if name == "cluster" {
                "C14"
            } else if name.ends_with("principal_id") || name == "requester" {
                "percy@classics.example"
            } else if name == "case_number" {
                "00000001"
            } else if name.ends_with("_id") {
                "contract-1"
            } else {
                "the contract test"
            }
            .to_owned(),
        ),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(1),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(1),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(1),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(1),
        Kind::Bool => Value::Bool(true),
        Kind::Enum(_) => Value::EnumNumber(1),
        Kind::Message(m) => Value::Message(DynamicMessage::new(m)),
        other => panic!("{name}: no plausible value of kind {other:?}"),
    };
    if field.is_list() { Value::List(vec![one]) } else { one }
}

/// Sets the field at `path` (`limit.scope`, `key`) of `message` to a plausible value;
/// false when the path names no field (a oneof: its first member is set).
fn fill(message: &mut DynamicMessage, path: &str) -> bool {
    let (first, rest) = match path.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (path, None),
    };
    let descriptor = message.descriptor();
    let field = match descriptor.get_field_by_name(first) {
        Some(f) => f,
        None => match descriptor
            .oneofs()
            .find(|o| o.name() == first)
            .and_then(|o| o.fields().next())
        {
            Some(f) => f,
            None => return false,
        },
    };
    match rest {
        None => {
            message.set_field(&field, plausible(&field));
            true
        }
        Some(rest) => {
            if !message.has_field(&field) {
                message.set_field(&field, plausible(&field));
            }
            match message.get_field_mut(&field).as_message_mut() {
                Some(inner) => fill(inner, rest),
                None => false,
            }
        }
    }
}

/// Ok when every step of the field path `path` (`limit.scope`) is a field its message marks
/// REQUIRED, or a oneof a caller must choose from.
fn asked_for_required(message: &MessageDescriptor, path: &str, behavior: &ExtensionDescriptor) -> Result<(), String> {
    let (top, rest) = match path.split_once('.') {
        Some((top, rest)) => (top, Some(rest)),
        None => (path, None),
    };
    let required = required_fields(message, behavior);
    let oneofs = real_oneofs(message);
    let in_oneof = message
        .get_field_by_name(top)
        .and_then(|f| f.containing_oneof())
        .is_some_and(|o| !o.is_synthetic());
    let conditional = CONDITIONAL.iter().any(|(m, f, _)| *m == message.name() && *f == top);
    if !required.iter().any(|r| r == top) && !oneofs.iter().any(|o| o == top) && !in_oneof && !conditional {
        return Err(format!(
            "{top} is not among {}'s REQUIRED fields {required:?} or its oneofs {oneofs:?}",
            message.name()
        ));
    }
    match (
        rest,
        message
            .get_field_by_name(top)
            .and_then(|f| f.kind().as_message().cloned()),
    ) {
        (Some(rest), Some(inner)) => asked_for_required(&inner, rest, behavior),
        _ => Ok(()),
    }
}

async fn required_fields_are_required(s: &TestSystem) {
    let pool = pool();
    let behavior = field_behavior(&pool);
    let mut checked = Vec::new();
    let mut wrong = Vec::new();
    // The RPCs whose every REQUIRED field was asked for, then the call went through.
    let mut proven = Vec::new();
    for service in pool
        .services()
        .filter(|s| matches!(s.package_name(), "sspm.v1" | "sspm.internal.v1"))
    {
        let target = served_by(service.full_name())[0];
        for method in service.methods() {
            let path = format!("/{}/{}", service.full_name(), method.name());
            assert!(
                TABLE.iter().any(|(p, _)| *p == path),
                "{path} is missing from the caller table"
            );
            let input = method.input();
            let required = required_fields(&input, &behavior);
            let oneofs = real_oneofs(&input);
            // Each refusal for a missing field must name a REQUIRED one (or a oneof to
            // choose from); the field is then given a plausible value and the call made
            // again, until the server takes the message (or refuses something else, or a
            // value it cannot be given).
            let mut message = DynamicMessage::new(input.clone());
            let mut named_so_far: Vec<String> = Vec::new();
            let accepted = loop {
                let status = call(s, target, &path, message.clone()).await;
                if status.code() != Code::InvalidArgument {
                    // Only a call that went through proves the rest optional: NOT_FOUND for
                    // a made-up id can come before the other fields are read.
                    break status.code() == Code::Ok;
                }
                let Some(field) = named_fields(&status).into_iter().next() else {
                    wrong.push(format!("{path}: INVALID_ARGUMENT names no field: {status:?}"));
                    break false;
                };
                if let Err(why) = asked_for_required(&input, &field, &behavior) {
                    wrong.push(format!("{path}: refused for {field}: {why}"));
                    break false;
                }
                if named_so_far.contains(&field) || field.contains('[') || !fill(&mut message, &field) {
                    // A plausible value of the right form was not enough: what the server
                    // wants there is beyond this test, and so is the rest of the message.
                    break false;
                }
                named_so_far.push(field);
            };
            if required.is_empty() && oneofs.is_empty() && !named_so_far.is_empty() {
                wrong.push(format!(
                    "{path}: nothing is REQUIRED, yet {named_so_far:?} were asked for"
                ));
            }
            if accepted && !required.is_empty() {
                proven.push(path.clone());
                // The server took the message with only the fields it asked for: any other
                // REQUIRED field is not.
                for r in &required {
                    if !named_so_far.iter().any(|f| head(f) == r) {
                        wrong.push(format!(
                            "{path}: {r} is marked REQUIRED, yet the call went through without it"
                        ));
                    }
                }
            }
            if !required.is_empty() || !oneofs.is_empty() {
                checked.push(path);
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "the annotations disagree with the servers:\n{}",
        wrong.join("\n")
    );
    assert!(
        checked.len() >= 20,
        "only {} RPCs have REQUIRED fields: {checked:?}",
        checked.len()
    );
}

// Validation does not depend on the backend: SQLite only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_fields_are_required_sqlite() {
    let system = TestSystem::start(Backend::Sqlite).await;
    required_fields_are_required(&system).await;
    system.shutdown().await.expect("clean shutdown");
}
