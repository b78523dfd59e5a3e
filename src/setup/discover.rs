//! Finding a domain's POP3 server: RFC 6186 SRV records (`_pop3s._tcp`,
//! then `_pop3._tcp`), then the usual names `pop.DOMAIN` and `mail.DOMAIN`.
//!
//! The ordering is pure ([`order`]); [`candidates`] asks DNS. Everything
//! DNS returns is hostile input: targets are checked like a config `host`.

use std::net::SocketAddr;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};

use crate::config::TlsMode;

/// Tests point the resolver at their own DNS server with this (`IP:PORT`);
/// everyone else gets the system's resolver (/etc/resolv.conf).
pub const TEST_DNS_ENV: &str = "POPSYNC_TEST_DNS";

/// One place to try, and why it is on the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub source: String,
}

/// An SRV answer: (priority, weight, port, target without the final dot).
pub type SrvAnswer = (u16, u16, u16, String);

/// RFC 6186 order: implicit TLS records before STLS ones (§3.4 prefers
/// `_pop3s`), each by priority then higher weight; a `.` target means "no
/// such service here" (RFC 2782). Then the conventional names, implicit TLS
/// on 995 before STLS on 110. Duplicates are dropped.
pub fn order(domain: &str, pop3s: &[SrvAnswer], pop3: &[SrvAnswer]) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    for (service, answers, tls) in [
        ("_pop3s._tcp", pop3s, TlsMode::Implicit),
        ("_pop3._tcp", pop3, TlsMode::Starttls),
    ] {
        let mut sorted: Vec<&SrvAnswer> = answers
            .iter()
            .filter(|(_, _, port, target)| {
                *port != 0 && !target.is_empty() && crate::config::check_host(target).is_ok()
            })
            .collect();
        sorted.sort_by_key(|(priority, weight, _, _)| (*priority, std::cmp::Reverse(*weight)));
        for (_, _, port, target) in sorted {
            out.push(Candidate {
                host: target.clone(),
                port: *port,
                tls,
                source: format!("SRV {service}.{domain}"),
            });
        }
    }
    for name in [format!("pop.{domain}"), format!("mail.{domain}")] {
        for (port, tls) in [(995, TlsMode::Implicit), (110, TlsMode::Starttls)] {
            out.push(Candidate {
                host: name.clone(),
                port,
                tls,
                source: "a usual server name".to_string(),
            });
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|c| {
        seen.insert((
            c.host.to_ascii_lowercase(),
            c.port,
            c.tls == TlsMode::Implicit,
        ))
    });
    out
}

/// The resolver: the test server named by [`TEST_DNS_ENV`], else the system's.
pub fn resolver() -> Result<TokioResolver, String> {
    if let Some(addr) = std::env::var_os(TEST_DNS_ENV) {
        let addr: SocketAddr = addr
            .to_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("{TEST_DNS_ENV} must be IP:PORT"))?;
        let mut udp = ConnectionConfig::udp();
        udp.port = addr.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = addr.port();
        let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
        let config = ResolverConfig::from_name_servers(vec![server]);
        return Resolver::builder_with_config(config, TokioRuntimeProvider::default())
            .build()
            .map_err(|e| format!("cannot set up the DNS resolver: {e}"));
    }
    TokioResolver::builder_tokio()
        .and_then(|b| b.build())
        .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))
}

/// SRV answers for `service.domain.`; none when the lookup fails (no
/// record, no DNS): discovery then goes on with the next step.
pub async fn srv(resolver: &TokioResolver, service: &str, domain: &str) -> Vec<SrvAnswer> {
    let name = format!("{service}.{domain}.");
    match resolver.srv_lookup(name.as_str()).await {
        Ok(lookup) => lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::SRV(srv) => {
                    let target = srv.target.to_ascii();
                    let target = target.strip_suffix('.').unwrap_or(&target).to_string();
                    Some((srv.priority, srv.weight, srv.port, target))
                }
                _ => None,
            })
            .collect(),
        Err(e) => {
            tracing::debug!("SRV {name}: {e}");
            Vec::new()
        }
    }
}

/// Every place worth trying for `domain`, best first.
pub async fn candidates(resolver: &TokioResolver, domain: &str) -> Vec<Candidate> {
    let (pop3s, pop3) = tokio::join!(
        srv(resolver, "_pop3s._tcp", domain),
        srv(resolver, "_pop3._tcp", domain)
    );
    order(domain, &pop3s, &pop3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(p: u16, w: u16, port: u16, t: &str) -> SrvAnswer {
        (p, w, port, t.to_string())
    }

    #[test]
    fn srv_records_first_pop3s_before_pop3_by_priority_and_weight() {
        let c = order(
            "example.org",
            &[
                srv(20, 0, 995, "backup.example.org"),
                srv(10, 5, 995, "a.example.org"),
                srv(10, 50, 995, "b.example.org"),
            ],
            &[srv(0, 0, 110, "plain.example.org")],
        );
        let got: Vec<(&str, u16, TlsMode)> =
            c.iter().map(|c| (c.host.as_str(), c.port, c.tls)).collect();
        assert_eq!(
            &got[..4],
            &[
                ("b.example.org", 995, TlsMode::Implicit),
                ("a.example.org", 995, TlsMode::Implicit),
                ("backup.example.org", 995, TlsMode::Implicit),
                ("plain.example.org", 110, TlsMode::Starttls),
            ]
        );
        assert_eq!(c[0].source, "SRV _pop3s._tcp.example.org");
        assert_eq!(
            got[4..],
            [
                ("pop.example.org", 995, TlsMode::Implicit),
                ("pop.example.org", 110, TlsMode::Starttls),
                ("mail.example.org", 995, TlsMode::Implicit),
                ("mail.example.org", 110, TlsMode::Starttls),
            ]
        );
    }

    #[test]
    fn no_service_dot_targets_and_hostile_names_are_dropped() {
        let c = order(
            "example.org",
            &[
                srv(0, 0, 0, ""),
                srv(0, 0, 995, "evil\nname"),
                srv(0, 0, 995, "pop.example.org"),
            ],
            &[],
        );
        assert_eq!(c[0].host, "pop.example.org");
        assert_eq!(c[0].source, "SRV _pop3s._tcp.example.org");
        // The same place again from the usual names is not tried twice.
        assert_eq!(
            c.iter()
                .filter(|c| c.host == "pop.example.org" && c.port == 995)
                .count(),
            1
        );
        assert_eq!(c.len(), 4);
    }
}
