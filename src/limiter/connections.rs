//! Open connections per client address and in all (OJS security §10.4). actix-web has no such
//! limit: `on_connect` counts each new connection and leaves a [`ConnectionGuard`] in the
//! connection's data (it uncounts the connection when actix drops that data, at close), plus
//! an [`OverLimit`] mark when the connection is one too many. The limits middleware answers
//! every request on a marked connection with 429 and closes it.

use std::any::Any;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use actix_web::dev::Extensions;

use super::rates::ip_bucket;
use super::LimiterHandle;
use crate::config::limits::ConnectionLimits;

/// Open connections, per address and in all.
#[derive(Default)]
pub struct Connections {
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    total: AtomicU64,
}

/// A connection over a limit: which one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverLimit {
    PerIp,
    Global,
}

impl OverLimit {
    /// The metric label and audit detail.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PerIp => "per_ip",
            Self::Global => "global",
        }
    }
}

/// Counts one open connection until dropped.
pub struct ConnectionGuard {
    ip: IpAddr,
    connections: Arc<Connections>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.connections.close(self.ip);
    }
}

impl Connections {
    /// Counts a new connection from `ip`; says whether it is over a limit (it is counted
    /// either way, until its guard drops).
    pub fn open(
        self: &Arc<Self>,
        ip: IpAddr,
        limits: &ConnectionLimits,
    ) -> (ConnectionGuard, Option<OverLimit>) {
        let ip = ip_bucket(ip);
        let from_ip = {
            let mut map = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            let n = map.entry(ip).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        let over = if from_ip > limits.per_ip {
            Some(OverLimit::PerIp)
        } else if total > u64::from(limits.max) {
            Some(OverLimit::Global)
        } else {
            None
        };
        let guard = ConnectionGuard {
            ip,
            connections: self.clone(),
        };
        (guard, over)
    }

    fn close(&self, ip: IpAddr) {
        self.total.fetch_sub(1, Ordering::Relaxed);
        let mut map = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }

    /// Connections open now.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Addresses with an open connection now.
    #[must_use]
    pub fn addresses(&self) -> usize {
        self.per_ip
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// The peer address of an accepted connection, for the transports the server uses.
#[must_use]
pub fn peer_ip(io: &dyn Any) -> Option<IpAddr> {
    use actix_tls::accept::rustls_0_23::TlsStream;
    use actix_web::rt::net::TcpStream;
    io.downcast_ref::<TcpStream>()
        .or_else(|| {
            io.downcast_ref::<TlsStream<TcpStream>>()
                .map(|s| s.get_ref().0)
        })
        .and_then(|tcp| tcp.peer_addr().ok())
        .map(|a| a.ip())
}

/// The `on_connect` callback: counts the connection and marks it when over a limit.
pub fn on_connect(limiter: &LimiterHandle, io: &dyn Any, data: &mut Extensions) {
    let Some(ip) = peer_ip(io) else {
        return;
    };
    let (guard, over) = limiter
        .connections()
        .open(ip, &limiter.config().connections);
    data.insert(guard);
    if let Some(over) = over {
        metrics::counter!(crate::metrics::CONNECTIONS_REJECTED, "limit" => over.as_str())
            .increment(1);
        data.insert(over);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_one_over_is_marked_and_closing_one_frees_a_place() {
        let c = Arc::new(Connections::default());
        let limits = ConnectionLimits { per_ip: 2, max: 3 };
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let (g1, o1) = c.open(a, &limits);
        let (_g2, o2) = c.open(a, &limits);
        let (g3, o3) = c.open(a, &limits);
        assert_eq!((o1, o2, o3), (None, None, Some(OverLimit::PerIp)));
        drop(g3);
        drop(g1);
        let (_g4, o4) = c.open(a, &limits);
        assert_eq!(o4, None);
        let (_g5, o5) = c.open(b, &limits);
        assert_eq!(o5, None);
        let (g6, o6) = c.open(b, &limits);
        assert_eq!(o6, Some(OverLimit::Global));
        assert_eq!(c.total(), 4);
        drop(g6);
        assert_eq!(c.total(), 3);
        assert_eq!(c.addresses(), 2);
    }
}
