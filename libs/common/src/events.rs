//! The event bus: resources publish what happened to them; the gateway (and `wait`)
//! subscribe. In-process here; a Redis implementation joins it in distributed mode.

use aetherium_types::Event;
use tokio::sync::broadcast;

/// Publish/subscribe of [`Event`]s. Delivery is best effort: a subscriber that lags
/// behind loses the oldest events and must re-read state from the store (or, for
/// event streams, from the event log: embedded mode's bus is the core's
/// `feed::PersistentEventBus`, which numbers and stores every event before
/// broadcasting it). This in-process bus stores nothing; events keep `seq: None`.
pub trait EventBus: Send + Sync + 'static {
    fn publish(&self, event: Event);
    fn subscribe(&self) -> broadcast::Receiver<Event>;
}

/// A bus inside one process (embedded mode), on a tokio broadcast channel.
pub struct InProcessEventBus {
    sender: broadcast::Sender<Event>,
}

impl InProcessEventBus {
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        InProcessEventBus { sender }
    }
}

impl Default for InProcessEventBus {
    fn default() -> Self {
        Self::new(1024)
    }
}

impl EventBus for InProcessEventBus {
    fn publish(&self, event: Event) {
        tracing::debug!(event = event.event_type.as_str(), resource = %event.resource_id, "event");
        // No subscribers is not an error: nobody is listening right now.
        let _ = self.sender.send(event);
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aetherium_types::EventType;

    #[tokio::test]
    async fn subscribers_get_events_published_after_they_subscribed() {
        let bus = InProcessEventBus::new(8);
        bus.publish(Event::new(
            EventType::VmCreated,
            "before",
            serde_json::json!({}),
        ));
        let mut rx = bus.subscribe();
        bus.publish(Event::new(
            EventType::VmStarted,
            "vm-1",
            serde_json::json!({"a": 1}),
        ));
        let got = rx.recv().await.expect("event");
        assert_eq!(got.event_type, EventType::VmStarted);
        assert_eq!(got.resource_id, "vm-1");
        assert!(rx.try_recv().is_err());
    }
}
