//! Picking a server: smooth weighted round robin (nginx's), least request over two random choices
//! (Envoy's default), or consistent hashing on a key (a ring with points per weight, so a key keeps
//! its server while that server is up, and only its keys move when it goes).
//!
//! Selection is hand-written rather than taken from a crate: it has to skip servers that are down
//! or already tried for this request, which the crates we looked at (pingora's selection needs its
//! own health and backend types) do not let us express over our server state.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use http::request::Parts;
use rand::Rng;

use super::server::Server;
use crate::config::{Balance, HashKey};

/// Points on the ring per unit of weight.
const POINTS_PER_WEIGHT: u32 = 160;

/// Chooses servers for one upstream.
#[derive(Debug)]
pub struct Balancer {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    RoundRobin(Mutex<Vec<i64>>),
    LeastRequest,
    Hash {
        key: HashKey,
        /// (point, server), sorted by point.
        ring: Vec<(u64, usize)>,
        /// For requests without the key.
        fallback: Mutex<Vec<i64>>,
    },
}

impl Balancer {
    /// A balancer over `servers`.
    pub fn new(balance: &Balance, servers: &[Arc<Server>]) -> Balancer {
        let kind = match balance {
            Balance::RoundRobin => Kind::RoundRobin(Mutex::new(vec![0; servers.len()])),
            Balance::LeastRequest => Kind::LeastRequest,
            Balance::Hash(key) => {
                let mut ring = Vec::new();
                for (i, s) in servers.iter().enumerate() {
                    for point in 0..s.weight * POINTS_PER_WEIGHT {
                        ring.push((hash(format!("{}#{point}", s.label).as_bytes()), i));
                    }
                }
                ring.sort_unstable();
                Kind::Hash {
                    key: key.clone(),
                    ring,
                    fallback: Mutex::new(vec![0; servers.len()]),
                }
            }
        };
        Balancer { kind }
    }

    /// The server for this attempt of a request: available and not in `tried`; `None` when no
    /// server is left.
    pub fn pick(
        &self,
        servers: &[Arc<Server>],
        req: &Parts,
        client: Option<IpAddr>,
        tried: &[usize],
    ) -> Option<usize> {
        let usable = |i: usize| servers[i].available() && !tried.contains(&i);
        match &self.kind {
            Kind::RoundRobin(current) => round_robin(current, servers, usable),
            Kind::LeastRequest => least_request(servers, usable),
            Kind::Hash {
                key,
                ring,
                fallback,
            } => match key_of(key, req, client) {
                Some(k) => walk_ring(ring, hash(&k), usable),
                None => round_robin(fallback, servers, usable),
            },
        }
    }
}

/// nginx's smooth weighted round robin: every usable server gains its weight, the one with the
/// most is picked and loses the total.
fn round_robin(
    current: &Mutex<Vec<i64>>,
    servers: &[Arc<Server>],
    usable: impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut current = current.lock().unwrap_or_else(PoisonError::into_inner);
    let mut total = 0i64;
    let mut best: Option<usize> = None;
    for i in (0..servers.len()).filter(|&i| usable(i)) {
        let weight = i64::from(servers[i].weight);
        current[i] += weight;
        total += weight;
        if best.is_none_or(|b| current[i] > current[b]) {
            best = Some(i);
        }
    }
    let b = best?;
    current[b] -= total;
    Some(b)
}

/// Two usable servers at random; the one with fewer requests in flight for its weight.
fn least_request(servers: &[Arc<Server>], usable: impl Fn(usize) -> bool) -> Option<usize> {
    let candidates: Vec<usize> = (0..servers.len()).filter(|&i| usable(i)).collect();
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        n => {
            let mut rng = rand::rng();
            let a = candidates[rng.random_range(0..n)];
            let mut b = candidates[rng.random_range(0..n - 1)];
            if b == a {
                b = candidates[n - 1];
            }
            // Compare in_flight / weight without division.
            let load = |i: usize, other: usize| {
                servers[i].in_flight() as u64 * u64::from(servers[other].weight)
            };
            Some(if load(b, a) < load(a, b) { b } else { a })
        }
    }
}

fn walk_ring(ring: &[(u64, usize)], point: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
    let start = ring.partition_point(|(p, _)| *p < point);
    ring[start..]
        .iter()
        .chain(&ring[..start])
        .map(|(_, s)| *s)
        .find(|&s| usable(s))
}

fn key_of(key: &HashKey, req: &Parts, client: Option<IpAddr>) -> Option<Vec<u8>> {
    match key {
        HashKey::ClientIp => client.map(|ip| ip.to_string().into_bytes()),
        HashKey::Header(name) => req.headers.get(name).map(|v| v.as_bytes().to_vec()),
        HashKey::Cookie(name) => req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then(|| v.as_bytes().to_vec())
            }),
    }
}

/// FNV-1a with a final mix: stable across processes, releases and machines (instances behind
/// one load balancer must agree), and well spread over the ring.
fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finalizer.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Endpoint, UpstreamServer};

    fn servers(weights: &[u32]) -> Vec<Arc<Server>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                Arc::new(Server::new(
                    &UpstreamServer {
                        endpoint: Endpoint::Unix(format!("/s{i}").into()),
                        weight: *w,
                        label: format!("http://10.0.0.{i}:80"),
                    },
                    100,
                    crate::metrics::Metrics::new().upstream_server("t", "s"),
                ))
            })
            .collect()
    }

    fn parts(header: Option<(&str, &str)>) -> Parts {
        let mut b = http::Request::builder().uri("/");
        if let Some((k, v)) = header {
            b = b.header(k, v);
        }
        b.body(()).expect("request").into_parts().0
    }

    #[test]
    fn round_robin_follows_the_weights_smoothly_and_skips_what_was_tried() {
        let s = servers(&[5, 1, 1]);
        let b = Balancer::new(&Balance::RoundRobin, &s);
        let req = parts(None);
        let picks: Vec<usize> = (0..7)
            .map(|_| b.pick(&s, &req, None, &[]).expect("a server"))
            .collect();
        assert_eq!(picks.iter().filter(|&&p| p == 0).count(), 5);
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0], "nginx's smooth order");
        assert_eq!(b.pick(&s, &req, None, &[0, 1, 2]), None);
        assert_eq!(b.pick(&s, &req, None, &[0, 2]), Some(1));
    }

    #[test]
    fn least_request_prefers_the_less_loaded_of_two() {
        let s = servers(&[1, 1]);
        let b = Balancer::new(&Balance::LeastRequest, &s);
        let req = parts(None);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        let _held: Vec<_> = (0..5)
            .map(|_| {
                rt.block_on(s[0].acquire(std::time::Duration::ZERO))
                    .expect("slot")
            })
            .collect();
        for _ in 0..20 {
            assert_eq!(b.pick(&s, &req, None, &[]), Some(1));
        }
    }

    #[test]
    fn a_hash_key_sticks_to_its_server_and_moves_only_when_that_server_is_out() {
        let s = servers(&[1, 1, 1, 1]);
        let b = Balancer::new(&Balance::Hash(HashKey::Header("x-user".into())), &s);
        let mut homes = Vec::new();
        for user in 0..200 {
            let req = parts(Some(("x-user", &format!("user{user}"))));
            let home = b.pick(&s, &req, None, &[]).expect("home");
            for _ in 0..3 {
                assert_eq!(b.pick(&s, &req, None, &[]), Some(home));
            }
            homes.push(home);
        }
        for server in 0..4 {
            let share = homes.iter().filter(|&&h| h == server).count();
            assert!(
                (20..=90).contains(&share),
                "server {server} has {share} of 200 keys"
            );
        }
        // With server 0 out, its keys move and nobody else's do.
        for (user, home) in homes.iter().enumerate() {
            let req = parts(Some(("x-user", &format!("user{user}"))));
            let now = b.pick(&s, &req, None, &[0]).expect("a server");
            if *home != 0 {
                assert_eq!(now, *home);
            } else {
                assert_ne!(now, 0);
            }
        }
    }
}
