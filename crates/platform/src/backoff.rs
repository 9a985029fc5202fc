//! Retry delays: exponential backoff with jitter, shared by every retry loop (internal
//! calls, the reconciler, the identity provider's keys).

/// The delay before retry number `attempt` (1 for the first): exponential from
/// `initial_ms`, capped at `max_ms`, with equal jitter: half of it fixed, the other half
/// scaled by `jitter` (uniform in 0..1), so that work that failed together (an outage) does
/// not all come back at the same moment.
pub fn backoff_ms(initial_ms: u64, max_ms: u64, attempt: u32, jitter: f64) -> u64 {
    let exp = attempt.clamp(1, 16) - 1;
    let ceiling = initial_ms.saturating_mul(1 << exp).min(max_ms);
    let fixed = ceiling / 2;
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let random = ((ceiling - fixed) as f64 * jitter.clamp(0.0, 1.0)).round() as u64;
    fixed + random
}
