//! The running relay as admin operations see it ([`LiveRelay`]).

use super::Relay;
use crate::admin::{BoxFuture, Change, LiveDevice, LiveRelay};
use crate::audit::Event;
use crate::protocol::Name;

impl LiveRelay for Relay {
    fn host_key(&self) -> &str {
        Relay::host_key(self)
    }

    fn online(&self, system: Option<&Name>) -> Vec<LiveDevice> {
        let registry = self.registry();
        registry
            .online(system)
            .into_iter()
            .map(|(id, entry)| LiveDevice {
                ports: entry
                    .ports
                    .iter()
                    .filter_map(|p| u16::try_from(*p).ok())
                    .collect(),
                streams: registry.stream_count(&id) as u64,
                disabled: registry.is_disabled(&id.system, &id.name),
                since: entry.since,
                peer: entry.peer,
                device: id,
            })
            .collect()
    }

    fn record_durable(&self, events: Vec<Event>) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(self.audit().record_durable(events))
    }

    fn record(&self, event: Event) {
        self.audit().record(event);
    }

    fn flush_audit(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(self.audit().flush())
    }

    fn changed(&self, _change: Change) {
        self.store_changed();
    }
}
