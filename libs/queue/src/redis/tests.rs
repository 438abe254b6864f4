use super::*;

#[test]
fn retry_delays_grow_with_jitter_and_cap() {
    let policy = RetryPolicy::new(Duration::from_secs(2));
    assert_eq!(policy.delay(0, 0.0), Duration::from_secs(2));
    assert_eq!(policy.delay(3, 0.0), Duration::from_secs(16));
    assert_eq!(policy.delay(3, 0.5), Duration::from_millis(17_600));
    assert_eq!(policy.delay(30, 0.0), Duration::from_secs(300));
    assert!(policy.delay(30, 0.999) < Duration::from_secs(360));
}
