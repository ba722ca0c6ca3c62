//! The [`Ledger`] shared by all shards: allocation counts for quotas and the set of live
//! relayed addresses, in concurrent maps so shards never wait on one lock.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::{DashMap, DashSet};
use turnpike_relay_core::turn::{Ledger, QuotaError, Quotas};

/// Quotas and live relays for the whole server.
#[derive(Debug, Default)]
pub struct SharedLedger {
    quotas: Quotas,
    total: AtomicUsize,
    users: DashMap<Box<str>, usize>,
    ips: DashMap<IpAddr, usize>,
    relays: DashSet<SocketAddr>,
}

impl SharedLedger {
    /// A ledger enforcing `quotas` (zero = unlimited).
    pub fn new(quotas: Quotas) -> Arc<Self> {
        Arc::new(SharedLedger {
            quotas,
            ..Default::default()
        })
    }

    /// Live allocations on the whole server.
    pub fn allocations(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

/// One shard's handle on the [`SharedLedger`].
#[derive(Debug, Clone)]
pub struct LedgerHandle(pub Arc<SharedLedger>);

fn over(limit: usize, count: usize) -> bool {
    limit != 0 && count >= limit
}

/// Decrements a per-key count, removing the key at zero.
fn decrement<K: std::hash::Hash + Eq + Clone>(map: &DashMap<K, usize>, key: &K) {
    map.remove_if_mut(key, |_, n| {
        *n = n.saturating_sub(1);
        *n == 0
    });
}

/// Removes a key whose count is zero (an entry created by a request that was then refused).
fn remove_if_zero<K: std::hash::Hash + Eq + Clone>(map: &DashMap<K, usize>, key: &K) {
    map.remove_if(key, |_, n| *n == 0);
}

impl Ledger for LedgerHandle {
    fn acquire(&self, username: &str, client: IpAddr) -> Result<(), QuotaError> {
        let l = &self.0;
        // Reserve the global slot first; give it back on any refusal below.
        let prev = l.total.fetch_add(1, Ordering::AcqRel);
        if over(l.quotas.total, prev) {
            l.total.fetch_sub(1, Ordering::AcqRel);
            return Err(QuotaError::Total);
        }
        {
            let mut u = l.users.entry(username.into()).or_insert(0);
            if over(l.quotas.per_user, *u) {
                drop(u);
                // Only this request's own trace goes: an entry it created at zero.
                remove_if_zero(&l.users, &Box::<str>::from(username));
                l.total.fetch_sub(1, Ordering::AcqRel);
                return Err(QuotaError::User);
            }
            *u += 1;
        }
        {
            let mut i = l.ips.entry(client).or_insert(0);
            if over(l.quotas.per_ip, *i) {
                drop(i);
                remove_if_zero(&l.ips, &client);
                // Undo this request's user count.
                decrement(&l.users, &Box::<str>::from(username));
                l.total.fetch_sub(1, Ordering::AcqRel);
                return Err(QuotaError::Ip);
            }
            *i += 1;
        }
        Ok(())
    }

    fn release(&self, username: &str, client: IpAddr) {
        let l = &self.0;
        decrement(&l.users, &Box::<str>::from(username));
        decrement(&l.ips, &client);
        l.total.fetch_sub(1, Ordering::AcqRel);
    }

    fn relay_opened(&self, addr: SocketAddr) {
        self.0.relays.insert(addr);
    }

    fn relay_closed(&self, addr: SocketAddr) {
        self.0.relays.remove(&addr);
    }

    fn is_live_relay(&self, addr: SocketAddr) -> bool {
        self.0.relays.contains(&addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_are_enforced_and_released() {
        let ledger = SharedLedger::new(Quotas {
            total: 10,
            per_user: 2,
            per_ip: 2,
        });
        let h = LedgerHandle(ledger.clone());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        h.acquire("u", a).unwrap();
        h.acquire("u", b).unwrap();
        assert_eq!(h.acquire("u", b), Err(QuotaError::User));
        h.acquire("v", a).unwrap();
        assert_eq!(h.acquire("w", a), Err(QuotaError::Ip));
        // Refusals change no count: the same requests are refused again.
        assert_eq!(h.acquire("w", a), Err(QuotaError::Ip));
        assert_eq!(h.acquire("u", b), Err(QuotaError::User));
        assert_eq!(h.acquire("u", a), Err(QuotaError::User));
        assert_eq!(*ledger.users.get("u").unwrap(), 2);
        assert_eq!(*ledger.ips.get(&a).unwrap(), 2);
        assert!(ledger.users.get("w").is_none());
        assert_eq!(ledger.allocations(), 3, "refusals leave no count behind");
        h.release("u", a);
        h.acquire("w", a).unwrap();
        for (u, ip) in [("u", b), ("v", a), ("w", a)] {
            h.release(u, ip);
        }
        assert_eq!(ledger.allocations(), 0);
        assert!(ledger.users.is_empty() && ledger.ips.is_empty());

        let ledger = SharedLedger::new(Quotas {
            total: 2,
            per_user: 0,
            per_ip: 0,
        });
        let h = LedgerHandle(ledger.clone());
        h.acquire("u", a).unwrap();
        h.acquire("u", a).unwrap();
        assert_eq!(h.acquire("v", b), Err(QuotaError::Total));
        assert_eq!(ledger.allocations(), 2);
        assert!(ledger.users.get("v").is_none());
    }

    #[test]
    fn live_relays() {
        let h = LedgerHandle(SharedLedger::new(Quotas::default()));
        let r: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        assert!(!h.is_live_relay(r));
        h.relay_opened(r);
        assert!(h.is_live_relay(r));
        h.relay_closed(r);
        assert!(!h.is_live_relay(r));
    }
}
