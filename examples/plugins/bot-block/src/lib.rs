//! bot-block: a plugin written the way a user would write one, with `gatehouse-sdk`.
//!
//! Refuses clients whose `User-Agent` names a known bot, and bans for `ban_for` any client that
//! asks for a trap path (`/wp-login.php` on a site that has no WordPress): the ban is a key in
//! the server's shared store, so it holds on every event loop.

use std::time::Duration;

use gatehouse_sdk::{Action, Filter, Hook, LocalResponse, Request, kv, metrics, units};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    deny_user_agents: Vec<String>,
    #[serde(default)]
    trap_paths: Vec<String>,
    ban_for: Option<units::Seconds>,
}

pub struct BotBlock {
    agents: Vec<String>,
    traps: Vec<String>,
    ban_for: Duration,
}

impl Filter for BotBlock {
    type Config = Config;
    const HOOKS: &'static [Hook] = &[Hook::OnRequest];

    fn new(config: Config) -> Result<Self, String> {
        Ok(BotBlock {
            agents: config
                .deny_user_agents
                .iter()
                .map(|a| a.to_lowercase())
                .collect(),
            traps: config.trap_paths,
            ban_for: config.ban_for.map_or(Duration::from_secs(600), |s| s.0),
        })
    }

    fn on_request(&self, req: &mut Request) -> Action {
        let client = req.client_ip().unwrap_or_default();
        let ban = format!("ban:{client}");
        if kv::get(&ban).is_some() {
            return refuse("banned");
        }
        if self.traps.iter().any(|t| req.path() == t) {
            kv::set(&ban, b"1", Some(self.ban_for));
            return refuse("trap");
        }
        let agent = req.header("user-agent").unwrap_or_default().to_lowercase();
        if self.agents.iter().any(|bad| agent.contains(bad)) {
            return refuse("bot");
        }
        Action::Continue
    }
}

fn refuse(why: &str) -> Action {
    metrics::add(why, 1);
    LocalResponse::new(403).text("403 Forbidden\n").into()
}

gatehouse_sdk::export_filter!(BotBlock);

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_sdk::testing::{self, TestRequest};

    fn status(f: &BotBlock, req: TestRequest) -> u16 {
        let mut req = req;
        match testing::on_request(f, &mut req) {
            Action::Respond(r) => r.status,
            _ => 200,
        }
    }

    #[test]
    fn bots_are_refused_and_trap_visitors_banned() {
        let f: BotBlock = testing::init(
            r#"{"deny_user_agents": ["BadBot"], "trap_paths": ["/wp-login.php"], "ban_for": "1m"}"#,
        )
        .expect("config");
        let from = |ip: &str, path: &str| TestRequest::get(path).with_client_ip(ip);
        assert_eq!(
            status(
                &f,
                from("192.0.2.1", "/").with_header("user-agent", "badbot/2")
            ),
            403
        );
        assert_eq!(status(&f, from("192.0.2.1", "/")), 200);
        assert_eq!(status(&f, from("192.0.2.2", "/wp-login.php")), 403);
        assert_eq!(status(&f, from("192.0.2.2", "/")), 403, "banned");
        testing::advance(Duration::from_secs(61));
        assert_eq!(status(&f, from("192.0.2.2", "/")), 200, "the ban ran out");
    }
}
